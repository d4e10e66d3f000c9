"""The distributions on the sphere: exact samplers, normalised densities, closed-form KL, log I_ν."""

import math

import mpmath
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import kl_divergence

from vdl_diffusion.distributions import (
    PowerSpherical,
    VonMisesFisher,
    VonMisesFisherMixture,
    concentration_for_cosine,
    log_bessel_iv,
    mean_resultant_length,
    mixture_kl_upper_bound,
    vmf_log_normalizer,
)

DIMS = (2, 3, 8, 64, 512, 768, 1024)
KAPPAS = (1e-3, 0.1, 1.0, 10.0, 100.0, 1e3, 1e4)
N_DRAWS = 20_000


def _mp_log_iv(nu: float, x: float) -> float:
    with mpmath.workdps(50):
        return float(mpmath.log(mpmath.besseli(mpmath.mpf(nu), mpmath.mpf(x))))


def _unit(*shape) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1)


def _assert_close_to_mpmath(value: torch.Tensor, reference: list[float], tolerance: float = 1e-10):
    """Relative error on log values, absolute where the value is near 0."""
    reference = torch.tensor(reference, dtype=torch.float64)
    error = (value - reference).abs() / reference.abs().clamp(min=1)
    assert error.max() < tolerance, f"worst error {error.max():.2e} at {error.argmax().item()}"


# --- log I_ν, the vMF normaliser and A_D against 50-digit mpmath ------------------------------


@pytest.mark.parametrize("dim", DIMS)
def test_log_bessel_iv_matches_mpmath(dim):
    nu = dim / 2 - 1
    kappa = torch.tensor(KAPPAS, dtype=torch.float64)
    _assert_close_to_mpmath(log_bessel_iv(nu, kappa), [_mp_log_iv(nu, k) for k in KAPPAS])


def test_log_bessel_iv_is_accurate_across_its_branch_boundaries():
    # Orders around the switch to the uniform expansion, arguments around the end of the series.
    nu = torch.tensor([0.0, 0.5, 7.0, 14.5, 15.0, 15.5])[:, None].expand(-1, 6).double()
    x = torch.tensor([49.0, 50.0, 51.0, 1e5, 2.5, 1e-8]).expand(6, -1).double()
    reference = [_mp_log_iv(n, v) for n, v in zip(nu.flatten().tolist(), x.flatten().tolist())]
    _assert_close_to_mpmath(log_bessel_iv(nu, x).flatten(), reference)


def test_log_bessel_iv_gradient_is_the_bessel_ratio():
    # d/dx log I_ν(x) = I_{ν+1}(x) / I_ν(x) + ν / x.
    for nu in (0.0, 3.0, 255.0, 383.0):
        x = torch.tensor([1e-3, 1.0, 49.0, 60.0, 1e3], dtype=torch.float64, requires_grad=True)
        (grad,) = torch.autograd.grad(log_bessel_iv(nu, x).sum(), x)
        with mpmath.workdps(50):
            reference = [float(mpmath.besseli(nu + 1, v) / mpmath.besseli(nu, v) + nu / v) for v in x.tolist()]
        torch.testing.assert_close(grad, torch.tensor(reference, dtype=torch.float64), rtol=1e-10, atol=0)


def test_log_bessel_iv_selects_its_branches_without_a_host_sync_and_with_finite_gradients():
    """Every branch is evaluated and ``torch.where`` picks one per element: Dynamo traces it as one graph
    (a boolean mask, ``.any()`` or ``.item()`` would break it), and the discarded branches, fed safe
    stand-ins, put no nan into the gradient, for a tensor order and for a Python one (``D/2 - 1``)."""
    nu = torch.tensor([0.0, 7.0, 14.5, 15.0, 383.0], dtype=torch.float64)[:, None]
    x = torch.tensor([0.0, 1e-8, 2.5, 50.0, 51.0, 1e3, 1e5], dtype=torch.float64, requires_grad=True)

    def both_orders(x):
        return log_bessel_iv(nu, x).sum() + vmf_log_normalizer(768, x).sum() + mean_resultant_length(8, x).sum()

    torch._dynamo.reset()
    compiled = torch.compile(lambda x: vmf_log_normalizer(768, x) + mean_resultant_length(8, x), fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), vmf_log_normalizer(768, x) + mean_resultant_length(8, x), rtol=1e-12, atol=0)
    torch._dynamo.reset()
    (grad,) = torch.autograd.grad(both_orders(x), x)
    assert torch.isfinite(grad[1:]).all()  # at x = 0 the term ν log(x/2) of a positive order is -inf


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_bessel_iv_is_finite_on_the_whole_grid_and_keeps_dtype(dtype):
    nu = torch.tensor([d / 2 - 1 for d in DIMS], dtype=dtype)[:, None]
    x = torch.tensor(KAPPAS, dtype=dtype)
    for value in (log_bessel_iv(nu, x), *(f(d, x) for d in DIMS for f in (vmf_log_normalizer, mean_resultant_length))):
        assert value.dtype == dtype
        assert torch.isfinite(value).all()


@pytest.mark.parametrize("dim", DIMS)
def test_vmf_log_normalizer_matches_mpmath(dim):
    nu = dim / 2 - 1
    kappa = torch.tensor(KAPPAS, dtype=torch.float64)
    reference = [nu * math.log(k) - dim / 2 * math.log(2 * math.pi) - _mp_log_iv(nu, k) for k in KAPPAS]
    _assert_close_to_mpmath(vmf_log_normalizer(dim, kappa), reference)


@pytest.mark.parametrize("dim", DIMS)
def test_vmf_log_normalizer_at_zero_concentration_is_the_uniform_one(dim):
    log_area = math.log(2) + dim / 2 * math.log(math.pi) - math.lgamma(dim / 2)  # |S^{D-1}|
    torch.testing.assert_close(vmf_log_normalizer(dim, torch.zeros((), dtype=torch.float64)).item(), -log_area)


def test_vmf_log_normalizer_on_the_two_sphere_has_its_closed_form():
    kappa = torch.tensor([1e-3, 1.0, 10.0, 100.0, 1e4], dtype=torch.float64)
    log_sinh = kappa + torch.log1p(-torch.exp(-2 * kappa)) - math.log(2)
    torch.testing.assert_close(vmf_log_normalizer(3, kappa), torch.log(kappa / (4 * math.pi)) - log_sinh)


@pytest.mark.parametrize("dim, kappa", [(3, 10.0), (64, 50.0), (512, 100.0), (512, 1e4), (768, 100.0), (1024, 1e-3)])
def test_mean_resultant_length_matches_mpmath(dim, kappa):
    with mpmath.workdps(50):
        reference = float(mpmath.besseli(dim / 2, kappa) / mpmath.besseli(dim / 2 - 1, kappa))
    value = mean_resultant_length(dim, torch.tensor(kappa, dtype=torch.float64)).item()
    assert value == pytest.approx(reference, rel=1e-10)


def test_concentration_for_cosine_inverts_the_mean_resultant_length():
    for dim, cosine in [(3, 0.5), (64, 0.97), (768, 0.97), (768, 0.19)]:
        kappa = concentration_for_cosine(dim, cosine)
        assert mean_resultant_length(dim, torch.tensor(kappa, dtype=torch.float64)).item() == pytest.approx(cosine, abs=1e-9)
    assert 900 < concentration_for_cosine(64, 0.97) < 1100 and 12000 < concentration_for_cosine(768, 0.97) < 13000
    with pytest.raises(ValueError, match="cosine"):
        concentration_for_cosine(64, 1.0)


def test_clip_prior_cosine_is_about_0_19():
    # METHOD.md: CLIP's prior vMF(y, 100) on S^511 puts its samples at cosine ~0.19 from y.
    assert round(mean_resultant_length(512, torch.tensor(100.0)).item(), 2) == 0.19
    assert mean_resultant_length(512, torch.zeros(())).item() == 0.0


# --- PowerSpherical ------------------------------------------------------------------------------


@pytest.mark.parametrize("dim, kappa", [(8, 10.0), (64, 50.0), (512, 100.0)])
def test_power_spherical_rsample_mean_matches_mean(dim, kappa):
    torch.manual_seed(0)
    q = PowerSpherical(_unit(dim).float(), torch.tensor(kappa))
    t = q.rsample((N_DRAWS,))
    assert t.shape == (N_DRAWS, dim)
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(N_DRAWS), rtol=0, atol=1e-5)
    standard_error = t.std(dim=0) / math.sqrt(N_DRAWS)
    assert ((t.mean(dim=0) - q.mean).abs() < 5 * standard_error + 1e-6).all()


def test_power_spherical_pathwise_gradients_are_those_of_the_mean():
    """E[μᵀt] = κ/(D-1+κ): per-sample gradients through rsample average to its derivatives."""
    torch.manual_seed(0)
    dim, kappa_value = 8, 5.0
    mu, a = _unit(dim), _unit(dim)
    loc = mu.repeat(N_DRAWS, 1).requires_grad_()
    kappa = torch.full((N_DRAWS,), kappa_value, dtype=torch.float64, requires_grad=True)
    t = PowerSpherical(loc, kappa).rsample()
    grad_kappa, grad_loc = torch.autograd.grad((t * mu).sum() + (t * a).sum(), [kappa, loc])

    expected = (dim - 1) / (dim - 1 + kappa_value) ** 2 * (1 + a @ mu)
    assert abs(grad_kappa.mean() - expected) < 5 * grad_kappa.std() / math.sqrt(N_DRAWS)
    # On the sphere, the gradient in loc is the tangential part: m (I - μμᵀ)(μ + a) = m (a - (aᵀμ) μ).
    tangential = grad_loc - (grad_loc @ mu)[:, None] * mu
    expected = kappa_value / (dim - 1 + kappa_value) * (a - (a @ mu) * mu)
    assert ((tangential.mean(0) - expected).abs() < 5 * tangential.std(0) / math.sqrt(N_DRAWS) + 1e-9).all()


@pytest.mark.parametrize("family", [PowerSpherical, VonMisesFisher])
@pytest.mark.parametrize("dim, kappa", [(2, 3.0), (3, 10.0), (8, 0.5), (64, 200.0), (512, 100.0)])
def test_density_integrates_to_one(family, dim, kappa):
    # With loc = e1: ∫ p dS = ∫_0^π p(cos θ) |S^{D-2}| sin^{D-2} θ dθ.
    theta = torch.linspace(0, math.pi, 4001, dtype=torch.float64)
    t = torch.zeros(len(theta), dim, dtype=torch.float64)
    t[:, 0], t[:, 1] = torch.cos(theta), torch.sin(theta)
    p = family(F.one_hot(torch.tensor(0), dim).double(), torch.tensor(kappa, dtype=torch.float64))
    log_area = math.log(2) + (dim - 1) / 2 * math.log(math.pi) - math.lgamma((dim - 1) / 2)
    log_integrand = p.log_prob(t) + log_area + torch.xlogy(torch.tensor(dim - 2.0), torch.sin(theta))
    assert torch.trapezoid(torch.exp(log_integrand), theta).item() == pytest.approx(1, abs=1e-6)


def test_power_spherical_density_on_the_two_sphere_has_its_closed_form():
    # N(κ, 3) = 2^{κ+2} π / (κ+1), so q(μ) = 2^κ / N = (κ+1) / (4π).
    kappa = torch.tensor([0.5, 10.0, 1e3], dtype=torch.float64)
    loc = _unit(3, 3)
    torch.testing.assert_close(PowerSpherical(loc, kappa).log_prob(loc), torch.log((kappa + 1) / (4 * math.pi)))


@pytest.mark.parametrize("family", [PowerSpherical, VonMisesFisher])
@pytest.mark.parametrize("dim, kappa", [(3, 10.0), (64, 50.0), (512, 300.0)])
def test_entropy_is_the_expected_negative_log_density(family, dim, kappa):
    torch.manual_seed(0)
    p = family(_unit(dim), torch.tensor(kappa, dtype=torch.float64))
    neg_log_prob = -p.log_prob(p.sample((N_DRAWS,)))
    assert abs(neg_log_prob.mean() - p.entropy()) < 5 * neg_log_prob.std() / math.sqrt(N_DRAWS)


def test_batch_shapes_broadcast_a_scalar_concentration():
    loc = _unit(2, 3, 16).float()
    q, p = PowerSpherical(loc, torch.full((2, 3), 20.0)), VonMisesFisher(loc, 100.0)
    assert q.batch_shape == p.batch_shape == (2, 3) and q.event_shape == p.event_shape == (16,)
    t = q.rsample((5,))
    assert t.shape == (5, 2, 3, 16) and p.sample((5,)).shape == (5, 2, 3, 16)
    assert q.log_prob(t).shape == p.log_prob(t).shape == (5, 2, 3)
    assert q.entropy().shape == p.entropy().shape == kl_divergence(q, p).shape == (2, 3)
    assert q.mean.shape == p.mean.shape == (2, 3, 16)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_low_precision_parameters_keep_their_dtype_and_an_accurate_kl(dtype):
    torch.manual_seed(0)
    mu = _unit(4, 512)
    m = F.normalize(mu + 0.5 * _unit(4, 512), dim=-1)
    kappa_q = torch.full((4,), 300.0, dtype=torch.float64)
    reference = kl_divergence(PowerSpherical(mu, kappa_q), VonMisesFisher(m, 100.0))
    loc = mu.to(dtype).requires_grad_()
    q, p = PowerSpherical(loc, kappa_q.to(dtype)), VonMisesFisher(m.to(dtype), 100.0)
    assert q.rsample((3,)).dtype == p.sample().dtype == dtype
    kl = kl_divergence(q, p)
    assert kl.dtype == dtype
    torch.testing.assert_close(kl.double(), reference, rtol=1e-2, atol=0)
    kl.sum().backward()
    assert torch.isfinite(loc.grad).all()


# --- VonMisesFisher ------------------------------------------------------------------------------


@pytest.mark.parametrize("dim, kappa", [(3, 10.0), (512, 100.0), (768, 1e4), (64, 0.0)])
def test_vmf_sample_cosine_matches_mean_resultant_length(dim, kappa):
    torch.manual_seed(0)
    p = VonMisesFisher(_unit(dim).float(), kappa)
    t = p.sample((N_DRAWS,))
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(N_DRAWS), rtol=0, atol=1e-5)
    cosine = t @ p.loc
    expected = mean_resultant_length(dim, torch.tensor(kappa, dtype=torch.float64)).item()
    assert abs(cosine.mean().item() - expected) < 5 * cosine.std().item() / math.sqrt(N_DRAWS) + 1e-6


# --- KL(PowerSpherical || VonMisesFisher) --------------------------------------------------------


@pytest.mark.parametrize(
    "dim, kappa_q, kappa_p, spread",
    [(3, 100.0, 2.0, 0.5), (64, 200.0, 100.0, 0.5), (512, 300.0, 100.0, 1.0), (768, 1e3, 100.0, 0.2)],
)
def test_kl_matches_monte_carlo(dim, kappa_q, kappa_p, spread):
    torch.manual_seed(0)
    mu = _unit(dim)
    m = F.normalize(mu + spread * _unit(dim), dim=-1)
    q = PowerSpherical(mu, torch.tensor(kappa_q, dtype=torch.float64))
    p = VonMisesFisher(m, torch.tensor(kappa_p, dtype=torch.float64))
    log_ratio = q.log_prob(t := q.sample((N_DRAWS,))) - p.log_prob(t)
    kl = kl_divergence(q, p)
    assert abs(log_ratio.mean() - kl) < min(5 * log_ratio.std() / math.sqrt(N_DRAWS), 0.03 * kl)


def test_kl_gradients_reach_both_distributions():
    loc_q, loc_p = _unit(2, 5).requires_grad_(), _unit(2, 5).requires_grad_()
    kappa_q = torch.tensor([3.0, 40.0], dtype=torch.float64, requires_grad=True)
    kappa_p = torch.tensor([1.0, 30.0], dtype=torch.float64, requires_grad=True)
    kl_divergence(PowerSpherical(loc_q, kappa_q), VonMisesFisher(loc_p, kappa_p)).sum().backward()
    for leaf in (loc_q, loc_p, kappa_q, kappa_p):
        assert torch.isfinite(leaf.grad).all() and (leaf.grad != 0).any()


@pytest.mark.parametrize("dim", [5, 64])
def test_kl_gradients_are_exact(dim):
    def kl(a, b, kappa_q, kappa_p):
        q = PowerSpherical(F.normalize(a, dim=-1), kappa_q, validate_args=False)
        return kl_divergence(q, VonMisesFisher(F.normalize(b, dim=-1), kappa_p, validate_args=False))

    inputs = (_unit(dim), _unit(dim), torch.tensor(10.0).double(), torch.tensor(2.0 * dim).double())
    assert torch.autograd.gradcheck(kl, tuple(x.requires_grad_() for x in inputs))


# --- Bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", [PowerSpherical, VonMisesFisher])
def test_bad_parameters_raise_value_error(family):
    unit = _unit(4, 8)
    with pytest.raises(ValueError, match="loc"):
        family(2 * unit, torch.ones(4))
    with pytest.raises(ValueError, match="concentration"):
        family(unit, -torch.ones(4))
    with pytest.raises(ValueError, match="squeeze"):
        family(unit, torch.ones(4, 1))
    with pytest.raises(ValueError, match="D >= 2"):
        family(torch.ones(4, 1), torch.ones(4))
    with pytest.raises(ValueError):
        family(unit, torch.ones(4)).log_prob(_unit(4, 7))


def test_power_spherical_needs_a_positive_concentration():
    with pytest.raises(ValueError, match="concentration"):
        PowerSpherical(_unit(8), torch.tensor(0.0))
    VonMisesFisher(_unit(8), torch.tensor(0.0))  # κ = 0 is the uniform distribution


def test_bad_bessel_and_kl_arguments_raise_value_error():
    with pytest.raises(ValueError, match="nu"):
        log_bessel_iv(-1.0, torch.tensor(1.0))
    with pytest.raises(ValueError, match="x"):
        log_bessel_iv(1.0, torch.tensor(-1.0))
    with pytest.raises(ValueError, match="dim"):
        vmf_log_normalizer(1, torch.tensor(1.0))
    with pytest.raises(ValueError, match="same sphere"):
        kl_divergence(PowerSpherical(_unit(8), 1.0), VonMisesFisher(_unit(9), 1.0))


# --- VonMisesFisherMixture -----------------------------------------------------------------------


def _mixture(dim, kappa, logits=(0.0, 1.0, -0.5), seed=0) -> VonMisesFisherMixture:
    torch.manual_seed(seed)
    loc = _unit(len(logits), dim)
    return VonMisesFisherMixture(torch.tensor(logits, dtype=torch.float64), VonMisesFisher(loc, torch.full((len(logits),), kappa, dtype=torch.float64)))


def _two_sphere(n_theta: int = 600) -> tuple[torch.Tensor, torch.Tensor]:
    """Midpoint quadrature on S²: points (M, 3) and their areas (M,), summing to 4π."""
    theta = (torch.arange(n_theta, dtype=torch.float64) + 0.5) * math.pi / n_theta
    phi = (torch.arange(2 * n_theta, dtype=torch.float64) + 0.5) * math.pi / n_theta
    theta, phi = torch.meshgrid(theta, phi, indexing="ij")
    points = torch.stack([torch.sin(theta) * torch.cos(phi), torch.sin(theta) * torch.sin(phi), torch.cos(theta)], -1)
    return points.reshape(-1, 3), (torch.sin(theta) * (math.pi / n_theta) ** 2).reshape(-1)


def _integrate(integrand, points, areas, chunk=200_000) -> float:
    """``∫ integrand(t) dt`` over the quadrature, in chunks of points."""
    return sum((integrand(points[i : i + chunk]) * areas[i : i + chunk]).sum().item() for i in range(0, len(points), chunk))


def kl_by_quadrature(q, p, points, areas) -> float:
    """``KL(q || p) = ∫ q log(q / p)`` on S², brute force."""
    return _integrate(lambda t: torch.exp(q.log_prob(t)) * (q.log_prob(t) - p.log_prob(t)), points, areas)


@pytest.mark.parametrize("dim, kappa", [(3, 20.0), (8, 50.0), (64, 1000.0)])
def test_mixture_samples_match_its_mean_exact_and_straight_through(dim, kappa):
    p = _mixture(dim, kappa)
    for t in (p.sample((N_DRAWS,)), p.rsample((N_DRAWS,))):
        assert t.shape == (N_DRAWS, dim)
        torch.testing.assert_close(t.norm(dim=-1), torch.ones(N_DRAWS, dtype=torch.float64), rtol=0, atol=1e-9)
        standard_error = t.std(dim=0) / math.sqrt(N_DRAWS)
        assert ((t.mean(dim=0) - p.mean).abs() < 5 * standard_error).all()
    # Σ_j π_j A_D(κ) t_j: the mean the samples were checked against is the mixture's.
    expected = (torch.softmax(p.mixture_distribution.logits, -1)[:, None] * p.loc).sum(0) * mean_resultant_length(dim, torch.tensor(kappa))
    torch.testing.assert_close(p.mean, expected)
    torch.testing.assert_close(p.mean_direction, F.normalize(expected, dim=-1))


def test_mixture_density_integrates_to_one():
    points, areas = _two_sphere()
    assert _integrate(lambda t: torch.exp(_mixture(3, 20.0).log_prob(t)), points, areas) == pytest.approx(1, abs=1e-4)
    # D = 8: importance sampling from the uniform distribution, E_u[p(t)] · |S^7| = 1.
    torch.manual_seed(1)
    t = F.normalize(torch.randn(200_000, 8, dtype=torch.float64), dim=-1)
    weights = torch.exp(_mixture(8, 4.0).log_prob(t) - vmf_log_normalizer(8, torch.tensor(0.0, dtype=torch.float64)))
    assert abs(weights.mean().item() - 1) < 5 * weights.std().item() / math.sqrt(len(t))


def test_mixture_kl_upper_bound_bounds_the_kl_and_is_tight_for_separate_components():
    points, areas = _two_sphere(400)
    logits = torch.tensor([2.0, -1.0, 0.0], dtype=torch.float64)
    for kappa, tight in [(5.0, False), (100.0, True)]:
        p = VonMisesFisherMixture(torch.zeros(3, dtype=torch.float64), VonMisesFisher(torch.eye(3, dtype=torch.float64), torch.full((3,), kappa, dtype=torch.float64)))
        q = p.reweighted(logits)
        bound, kl = mixture_kl_upper_bound(q, p).item(), kl_by_quadrature(q, p, points, areas)
        assert 0 < kl <= bound
        assert (abs(bound - kl) < 1e-4) == tight  # overlapping components make the bound loose
    with pytest.raises(ValueError, match="same components"):
        mixture_kl_upper_bound(_mixture(3, 5.0), _mixture(3, 5.0))


def test_mixture_kl_upper_bound_stays_finite_where_a_prior_weight_underflows():
    """After an E-step some prior weights are below float32's smallest (log π_j < -104): KL(w || π) is still
    Σ w_j (log w_j - log π_j) over finite logs, where torch's categorical KL returns inf. Its gradient too."""
    components = VonMisesFisher(torch.eye(3), torch.full((3,), 50.0))
    p = VonMisesFisherMixture(torch.tensor([0.0, -2.0, -120.0]), components)
    logits = torch.tensor([0.0, -1.0, -100.0], requires_grad=True)  # w_2 = e^-100: tiny, not 0
    bound = mixture_kl_upper_bound(p.reweighted(logits), p)
    w, log_pi = torch.softmax(logits.detach().double(), -1), torch.log_softmax(torch.tensor([0.0, -2.0, -120.0], dtype=torch.float64), -1)
    expected = (w * (torch.log(w) - log_pi)).sum()
    assert torch.isfinite(bound) and bound.item() == pytest.approx(expected.item(), rel=1e-4)
    bound.backward()
    assert torch.isfinite(logits.grad).all()


def test_mixture_rsample_passes_gradients_to_the_weights():
    """The straight-through gradient of E[t_0ᵀt] raises the weight of t_0, lowers those of the orthogonal others."""
    p = VonMisesFisherMixture(torch.zeros(3, dtype=torch.float64), VonMisesFisher(torch.eye(3, 8, dtype=torch.float64), 50.0))
    logits = p.mixture_distribution.logits.clone().requires_grad_()
    t = p.reweighted(logits).rsample((N_DRAWS,))
    (t @ p.loc[0]).mean().backward()
    assert logits.grad[0] > 0 and (logits.grad[1:] < 0).all()
