"""Distributions on the unit sphere S^{D-1} of CLIP embeddings (METHOD.md, "Distributions").

- :class:`PowerSpherical` ``q(t) ∝ (1 + μᵀt)^κ`` (De Cao & Aziz 2020): the posterior family, with an
  exact reparameterised sampler.
- :class:`VonMisesFisher` ``p(t) = C_D(κ) exp(κ mᵀt)``: the prior family (CLIP's own conditional).
- :class:`VonMisesFisherMixture` ``Σ_j π_j vMF(t; t_j, κ)``: the ``text-bank`` prior and the posterior
  over its candidates.
- ``KL(PowerSpherical || VonMisesFisher)`` in closed form, registered with
  ``torch.distributions.kl_divergence``; between two mixtures over the same components, the bound
  :func:`mixture_kl_upper_bound`.

``log C_D`` needs ``log I_{D/2-1}(κ)`` for D up to 1024 and κ from 0 to 1e4 and beyond, where
``I_ν`` itself under- or overflows float64 (``scipy.special.ive`` ratios turn to nan at D = 768
and small κ). :func:`log_bessel_iv` evaluates it in log space, choosing an expansion per element.
"""

import math
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch.distributions import Beta, Categorical, Distribution, MixtureSameFamily, constraints
from torch.distributions.kl import register_kl

# ---------------------------------------------------------------------------------------------
# log I_ν(x), the modified Bessel function of the first kind, in log space.
#
# Large order: the uniform asymptotic (Debye) expansion, accurate for every x.
# Small order: the power series for small x, Hankel's large-argument expansion beyond.
# With these term counts every branch is accurate to ~1e-13 on its domain (checked against
# mpmath in tests/test_distributions.py, including the branch boundaries).

_DEBYE_MIN_ORDER = 15.0
_DEBYE_TERMS = 12
_SERIES_MAX_ARG = 50.0
_SERIES_TERMS = 64
_HANKEL_TERMS = 40


def _debye_polynomials(n: int) -> list[list[float]]:
    """Coefficients (by power of p) of the Debye polynomials u_0 .. u_{n-1} (DLMF 10.41.9).

    Exact rational recurrence ``u_{k+1} = p²(1-p²)/2 · u_k' + 1/8 ∫_0^p (1-5s²) u_k(s) ds``,
    so no long tables of constants are typed in by hand.
    """
    polynomials = [[Fraction(1)]]
    for _ in range(n - 1):
        u = polynomials[-1]
        nxt = [Fraction(0)] * (len(u) + 3)
        for power, c in enumerate(u):
            if power:  # p²(1-p²)/2 · d/dp p^power
                nxt[power + 1] += power * c / 2
                nxt[power + 3] -= power * c / 2
            nxt[power + 1] += c / (8 * (power + 1))  # 1/8 ∫ s^power
            nxt[power + 3] -= 5 * c / (8 * (power + 3))  # -5/8 ∫ s^(power+2)
        polynomials.append(nxt)
    return [[float(c) for c in u] for u in polynomials]


def _by_power(polynomials: list[list[float]]) -> list[list[float]]:
    """Row j: every polynomial's coefficient of p^j, highest power first, zero where a polynomial is shorter."""
    degree = max(len(u) for u in polynomials)
    return [[u[j] if j < len(u) else 0.0 for u in polynomials] for j in reversed(range(degree))]


_DEBYE_COEFFICIENTS = torch.tensor(_by_power(_debye_polynomials(_DEBYE_TERMS)), dtype=torch.float64)


_DEBYE_ON_DEVICE: dict[torch.device, torch.Tensor] = {}


def _debye_coefficients(device: torch.device) -> torch.Tensor:
    """The table on ``device``, copied there once: a copy per call would wait on a GPU in every step's KL."""
    if device not in _DEBYE_ON_DEVICE:
        _DEBYE_ON_DEVICE[device] = _DEBYE_COEFFICIENTS.to(device)
    return _DEBYE_ON_DEVICE[device]


def _log_bessel_iv_debye(nu: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log(I_ν(x) / (x/2)^ν) by Debye's expansion in ``z = x/ν``, ``p = 1/sqrt(1+z²)`` (DLMF 10.41.3)."""
    root = torch.sqrt(1 + (x / nu) ** 2)
    p = (1 / root)[..., None]
    # Horner on all u_k at once (a shorter polynomial's leading zeros stay exactly zero): one op per
    # power instead of one per coefficient, which the step's KL pays on every call.
    coefficients = _debye_coefficients(x.device)
    u = torch.zeros_like(p).expand(*p.shape[:-1], coefficients.shape[1])
    for row in coefficients:
        u = u * p + row
    k = torch.arange(coefficients.shape[1], dtype=x.dtype, device=x.device)
    correction = (u / nu[..., None] ** k).sum(-1)
    # ν·η - ν log(x/2) with η = root + log(z / (1 + root)), written without log(x).
    log_prefactor = nu * (root + torch.log(2 / (nu * (1 + root)))) - 0.5 * torch.log(2 * math.pi * nu * root)
    return log_prefactor + torch.log(correction)


def _log_bessel_iv_series(nu: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log(I_ν(x) / (x/2)^ν) = log Σ_k (x²/4)^k / (k! Γ(ν+k+1)); exact at x = 0."""
    k = torch.arange(1, _SERIES_TERMS + 1, dtype=x.dtype, device=x.device)
    ratios = (x * x / 4)[..., None] / (k * (nu[..., None] + k))
    return torch.log1p(torch.cumprod(ratios, dim=-1).sum(-1)) - torch.lgamma(nu + 1)


def _log_bessel_iv_hankel(nu: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Hankel's expansion of log(I_ν(x) / (x/2)^ν) for x ≫ ν² (DLMF 10.40.1)."""
    k = torch.arange(1, _HANKEL_TERMS + 1, dtype=x.dtype, device=x.device)
    ratios = -(4 * nu[..., None] ** 2 - (2 * k - 1) ** 2) / (8 * k * x[..., None])
    log_iv = x - 0.5 * torch.log(2 * math.pi * x) + torch.log1p(torch.cumprod(ratios, dim=-1).sum(-1))
    return log_iv - nu * torch.log(x / 2)


def _log_bessel_iv_reduced(nu, x: torch.Tensor) -> torch.Tensor:
    """``log(I_ν(x) / (x/2)^ν)`` in float64: an entire function of x, finite at 0 (= -lgamma(ν+1)).

    Taking out the power ``(x/2)^ν`` is what makes the κ → 0 limits of the vMF normaliser and of
    ``A_D`` come out without special cases.

    No host sync and no data-dependent indexing: an order given as a Python number (``D/2 - 1``,
    known on the host) picks Debye's expansion or the small-order pair statically; between the
    series and Hankel's expansion, and for a tensor order among all three, ``torch.where`` selects
    per element. Each branch is evaluated at a safe stand-in outside its domain (x = 0 for the
    series, x = 2·50 and ν = 0 for Hankel, ν = 15 for Debye), so the discarded values are finite
    and pass no nan into the gradient. Arguments are not checked here (see `log_bessel_iv`).
    """
    x = torch.as_tensor(x).double()
    if not torch.is_tensor(nu):
        nu = float(nu)
        if nu >= _DEBYE_MIN_ORDER:
            return _log_bessel_iv_debye(x.new_tensor(nu), x)
        return _log_bessel_iv_small_order(x.new_tensor(nu), x)
    nu, x = torch.broadcast_tensors(nu.to(x.device, torch.float64), x)
    debye = nu >= _DEBYE_MIN_ORDER
    safe_nu = torch.where(debye, nu, _DEBYE_MIN_ORDER)
    small_nu = torch.where(debye, 0.0, nu)
    return torch.where(debye, _log_bessel_iv_debye(safe_nu, x), _log_bessel_iv_small_order(small_nu, x))


def _log_bessel_iv_small_order(nu: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The series for ``x <= 50``, Hankel's expansion beyond, selected per element without a sync."""
    series = x <= _SERIES_MAX_ARG
    series_x = torch.where(series, x, 0.0)
    hankel_x = torch.where(series, 2 * _SERIES_MAX_ARG, x)
    hankel_nu = torch.where(series, 0.0, nu)
    return torch.where(series, _log_bessel_iv_series(nu, series_x), _log_bessel_iv_hankel(hankel_nu, hankel_x))


def _result_dtype(x) -> torch.dtype:
    return x.dtype if torch.is_tensor(x) and x.is_floating_point() else torch.get_default_dtype()


def _check_dim(dim: int) -> None:
    if not isinstance(dim, int) or dim < 2:
        raise ValueError(f"`dim` is D of the sphere S^(D-1) and must be an integer >= 2, got {dim!r}.")


def log_bessel_iv(nu, x) -> torch.Tensor:
    """``log I_ν(x)`` for ν >= 0, x >= 0, stable for orders into the thousands and any finite x.

    Differentiable in ``x`` by autograd; computed in float64 and returned in ``x``'s dtype.
    """
    x64 = torch.as_tensor(x).double()
    nu64 = torch.as_tensor(nu, device=x64.device).double()
    # Checked here, at the public entry, not in the training step's KL (a check there would wait on the device).
    if (nu64 < 0).any():
        raise ValueError("The Bessel order `nu` must be >= 0 (it is D/2 - 1 for the sphere S^{D-1}, D >= 2).")
    if (x64 < 0).any():
        raise ValueError("The Bessel argument `x` (a concentration κ) must be >= 0.")
    return (torch.xlogy(nu64, x64 / 2) + _log_bessel_iv_reduced(nu if not torch.is_tensor(nu) else nu64, x64)).to(_result_dtype(x))


def vmf_log_normalizer(dim: int, kappa) -> torch.Tensor:
    """``log C_D(κ) = (D/2-1) log κ - (D/2) log 2π - log I_{D/2-1}(κ)``, the vMF log-normaliser.

    At κ = 0 it is ``-log |S^{D-1}|``, the uniform distribution's; differentiable in κ.
    """
    _check_dim(dim)
    nu = dim / 2 - 1
    # The (D/2-1) log κ cancels against I_ν(κ) ~ (κ/2)^ν, leaving the reduced function.
    log_c = nu * math.log(2) - dim / 2 * math.log(2 * math.pi) - _log_bessel_iv_reduced(nu, kappa)
    return log_c.to(_result_dtype(kappa))


def mean_resultant_length(dim: int, kappa) -> torch.Tensor:
    """``A_D(κ) = I_{D/2}(κ) / I_{D/2-1}(κ) = E[mᵀt]`` under ``vMF(m, κ)`` on S^{D-1}; 0 at κ = 0."""
    _check_dim(dim)
    nu = dim / 2 - 1
    kappa64 = torch.as_tensor(kappa).double()
    log_ratio = _log_bessel_iv_reduced(nu + 1, kappa64) - _log_bessel_iv_reduced(nu, kappa64)
    return (torch.exp(log_ratio) * kappa64 / 2).to(_result_dtype(kappa))


def concentration_for_cosine(dim: int, cosine: float) -> float:
    """The κ at which ``vMF(m, κ)`` on S^{D-1} puts its samples at mean cosine ``cosine`` to ``m``: ``A_D(κ) = cosine``.

    ``A_D`` increases from 0 to 1, so bisection on ``log κ`` finds it to float64 precision.
    """
    if not 0 < cosine < 1:
        raise ValueError(f"`cosine` must lie in (0, 1), got {cosine}.")
    low, high = math.log(1e-8), math.log(1e8)
    for _ in range(100):
        middle = (low + high) / 2
        if mean_resultant_length(dim, torch.tensor(math.exp(middle), dtype=torch.float64)).item() < cosine:
            low = middle
        else:
            high = middle
    return math.exp((low + high) / 2)


# ---------------------------------------------------------------------------------------------
# Distributions on the sphere. Densities, entropies and the KL are computed in float64 and
# returned in the parameters' dtype: they are differences of terms ~1e3 (lgamma of κ, log C_D)
# whose float32 or bf16 rounding would swamp a KL of order 1.


class _UnitVector(constraints.Constraint):
    """Vectors of unit norm along the last dimension, to 1e-3 (looser in half precision).

    Loose enough for float32 vectors normalised and then cast, tight enough to catch a vector
    that was never normalised.
    """

    event_dim = 1

    def check(self, value: torch.Tensor) -> torch.Tensor:
        tolerance = max(1e-3, 10 * torch.finfo(value.dtype).eps)
        return (torch.linalg.vector_norm(value, dim=-1) - 1).abs() <= tolerance

    def __repr__(self) -> str:
        return "UnitVector(normalise with torch.nn.functional.normalize(x, dim=-1))"


unit_vector = _UnitVector()


def _place_on_sphere(w: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
    """``t = [w, sqrt(1-w²) v]`` with v uniform on S^{D-2}, then the Householder map of e1 to ``loc``.

    ``w`` is the cosine to the mean direction: the families differ only in its law. Works in
    ``w``'s dtype, returns ``loc``'s.
    """
    v = F.normalize(torch.randn(*w.shape, loc.shape[-1] - 1, dtype=w.dtype, device=w.device), dim=-1)
    # Clamped so that a w rounded to ±1 gets a zero rather than an infinite gradient.
    sine = torch.sqrt(((1 - w) * (1 + w)).clamp(min=torch.finfo(w.dtype).tiny))
    t = torch.cat([w[..., None], sine[..., None] * v], dim=-1)
    u = F.normalize(torch.cat([1 - loc[..., :1], -loc[..., 1:]], dim=-1).to(w.dtype), dim=-1)  # e1 - loc
    return (t - 2 * (t * u).sum(-1, keepdim=True) * u).to(loc.dtype)


class _SphericalDistribution(Distribution):
    """A unimodal distribution on S^{D-1}: mean direction ``loc`` (..., D), ``concentration`` (...)."""

    arg_constraints = {"loc": unit_vector, "concentration": constraints.positive}
    support = unit_vector

    def __init__(self, loc: torch.Tensor, concentration, validate_args=None):
        name = type(self).__name__
        if not torch.is_tensor(loc) or not loc.is_floating_point() or loc.ndim < 1 or loc.shape[-1] < 2:
            got = tuple(loc.shape) if torch.is_tensor(loc) else type(loc).__name__
            raise ValueError(
                f"{name}: `loc` must be a floating-point tensor of unit vectors of shape (..., D), D >= 2; got {got}."
            )
        concentration = torch.as_tensor(concentration, device=loc.device).to(loc.dtype)
        batch_shape = loc.shape[:-1]
        try:
            broadcast = torch.broadcast_shapes(batch_shape, concentration.shape)
        except RuntimeError:
            broadcast = None
        if broadcast != batch_shape:
            raise ValueError(
                f"{name}: `concentration` of shape {tuple(concentration.shape)} does not match `loc` of shape "
                f"{tuple(loc.shape)}; pass one concentration per direction, shape loc.shape[:-1] = "
                f"{tuple(batch_shape)} (e.g. `.squeeze(-1)` a trailing 1)."
            )
        self.loc, self.concentration = loc, concentration.expand(batch_shape)
        super().__init__(batch_shape, loc.shape[-1:], validate_args=validate_args)

    @property
    def dim(self) -> int:
        """D, so that the support is S^{D-1}."""
        return self.loc.shape[-1]

    @property
    def mean_direction(self) -> torch.Tensor:
        """The unit vector along the mean: ``loc``."""
        return self.loc

    @property
    def _sampling_dtype(self) -> torch.dtype:
        """At least float32: torch has no half-precision Beta sampler on CPU, and bf16 would blur w."""
        return torch.promote_types(self.loc.dtype, torch.float32)

    def _cosine(self, t: torch.Tensor) -> torch.Tensor:
        """``locᵀt`` in float64, after checking ``t`` when validating."""
        if self._validate_args:
            self._validate_sample(t)
        return (self.loc.double() * t.double()).sum(-1)


class PowerSpherical(_SphericalDistribution):
    """``q(t) = (1 + μᵀt)^κ / N(κ, D)`` on S^{D-1} (De Cao & Aziz 2020), VDL's posterior family.

    Its cosine ``w = μᵀt`` is ``2z - 1`` with ``z ~ Beta(α, β)``, ``α = (D-1)/2 + κ``, ``β = (D-1)/2``,
    so sampling is exact and reparameterised, unlike the von Mises-Fisher's rejection sampler.
    """

    has_rsample = True

    def _beta_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """α, β in float64."""
        beta = torch.full_like(self.concentration, (self.dim - 1) / 2, dtype=torch.float64)
        return beta + self.concentration.double(), beta

    def _entropy(self) -> torch.Tensor:
        """``H = log N - κ (log 2 + ψ(α) - ψ(α+β))`` in float64, ``E[log(1 + w)]`` in the brackets."""
        alpha, beta = self._beta_params()
        return self._log_normalizer() - self.concentration.double() * (
            math.log(2) + torch.digamma(alpha) - torch.digamma(alpha + beta)
        )

    def _log_normalizer(self) -> torch.Tensor:
        """``log N = (α+β) log 2 + β log π + lgamma(α) - lgamma(α+β)`` in float64."""
        alpha, beta = self._beta_params()
        log_gamma_ratio = torch.lgamma(alpha) - torch.lgamma(alpha + beta)
        return (alpha + beta) * math.log(2) + beta * math.log(math.pi) + log_gamma_ratio

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        alpha, beta = (param.to(self._sampling_dtype) for param in self._beta_params())
        z = Beta(alpha, beta, validate_args=False).rsample(sample_shape)
        return _place_on_sphere(2 * z - 1, self.loc)

    def log_prob(self, t: torch.Tensor) -> torch.Tensor:
        log_prob = self.concentration.double() * torch.log1p(self._cosine(t)) - self._log_normalizer()
        return log_prob.to(self.loc.dtype)

    def entropy(self) -> torch.Tensor:
        return self._entropy().to(self.loc.dtype)

    @property
    def mean(self) -> torch.Tensor:
        return self.loc * (self.concentration / (self.dim - 1 + self.concentration))[..., None]


class VonMisesFisher(_SphericalDistribution):
    """``p(t) = C_D(κ) exp(κ mᵀt)`` on S^{D-1}, VDL's prior family; κ = 0 is the uniform distribution.

    ``sample`` uses Wood's (1994) rejection sampler for the cosine ``w = mᵀt``; there is no
    reparameterised sampler (the posterior is the one that needs gradients through its samples).
    """

    arg_constraints = {"loc": unit_vector, "concentration": constraints.nonnegative}
    # Proposals drawn at once per sample. Wood's envelope accepts over 67 % of them (measured over
    # D = 3..1024, κ = 0..1e6), so all are rejected with probability below 0.33^32 < 1e-15.
    _PROPOSALS = 32

    def log_prob(self, t: torch.Tensor) -> torch.Tensor:
        kappa = self.concentration.double()
        return (vmf_log_normalizer(self.dim, kappa) + kappa * self._cosine(t)).to(self.loc.dtype)

    def entropy(self) -> torch.Tensor:
        kappa = self.concentration.double()
        entropy = -vmf_log_normalizer(self.dim, kappa) - kappa * mean_resultant_length(self.dim, kappa)
        return entropy.to(self.loc.dtype)

    @property
    def mean(self) -> torch.Tensor:
        return self.loc * mean_resultant_length(self.dim, self.concentration)[..., None]

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)[:-1]
        with torch.no_grad():  # a block, not the decorator, which torch.compile cannot trace through (torch 2.13)
            kappa = self.concentration.double().expand(shape)
            m = self.dim - 1
            b = m / (2 * kappa + torch.sqrt(4 * kappa**2 + m**2))
            x0 = (1 - b) / (1 + b)
            c = kappa * x0 + m * torch.log1p(-(x0**2))
            envelope = Beta(kappa.new_tensor(m / 2), kappa.new_tensor(m / 2))
            z = envelope.sample((self._PROPOSALS, *shape))
            proposal = (1 - (1 + b) * z) / (1 - (1 - b) * z)
            accept = kappa * proposal + m * torch.log1p(-x0 * proposal) - c >= torch.log(torch.rand_like(z))
            # The first accepted proposal of each sample: a fixed amount of work and no loop on `accept.any()`,
            # so sampling never waits on the device (argmax returns the first of equal maxima).
            w = proposal.gather(0, accept.to(torch.uint8).argmax(0, keepdim=True)).squeeze(0)
            return _place_on_sphere(w.to(self._sampling_dtype), self.loc)


class VonMisesFisherMixture(MixtureSameFamily):
    """``Σ_j π_j vMF(t; t_j, κ_j)`` on S^{D-1}: ``logits`` (..., K) = log π + const, ``components`` of batch shape (..., K).

    The ``text-bank`` prior's family (its components are bank texts) and that of the posterior that
    reweighs them. ``sample`` draws a component, then a point of it, instead of a point of every
    component. ``rsample`` is the same exact draw with a straight-through Gumbel-softmax gradient to
    the logits: a discrete choice has no reparameterisation, and the relaxed weights ``soft`` pass
    ``∂t/∂soft_j = t_j`` (biased, one sample; the components themselves get no gradient).
    """

    has_rsample = True

    def __init__(self, logits: torch.Tensor, components: VonMisesFisher, temperature: float = 1.0, validate_args=None):
        super().__init__(Categorical(logits=logits), components, validate_args=validate_args)
        self.temperature = temperature

    @property
    def loc(self) -> torch.Tensor:
        """The components' mean directions ``t_j``, (..., K, D)."""
        return self.component_distribution.loc

    @property
    def mean_direction(self) -> torch.Tensor:
        """The unit vector along the mean ``Σ_j π_j A_D(κ_j) t_j``."""
        return F.normalize(self.mean, dim=-1)

    def reweighted(self, logits: torch.Tensor, temperature: float = 1.0) -> "VonMisesFisherMixture":
        """The same components (the same object) with weights ``softmax(logits)``."""
        return VonMisesFisherMixture(logits, self.component_distribution, temperature)

    def sample_component(self, index: torch.Tensor) -> torch.Tensor:
        """One draw of component ``index`` (shape: sample + batch) of each mixture, e.g. to know which one was drawn."""
        loc, kappa = self.loc, self.component_distribution.concentration
        loc = torch.gather(loc.expand(*index.shape, *loc.shape[-2:]), -2, index[..., None, None].expand(*index.shape, 1, loc.shape[-1]))
        kappa = torch.gather(kappa.expand(*index.shape, kappa.shape[-1]), -1, index[..., None])
        return VonMisesFisher(loc.squeeze(-2), kappa.squeeze(-1), validate_args=False).sample()

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return self.sample_component(self.mixture_distribution.sample(sample_shape))

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        logits = self.mixture_distribution.logits.expand(*sample_shape, *self.mixture_distribution.logits.shape)
        uniform = torch.rand_like(logits).clamp(min=torch.finfo(logits.dtype).tiny)
        perturbed = logits - torch.log(-torch.log(uniform))  # Gumbel-max: its argmax is a draw from π
        soft = torch.softmax(perturbed / self.temperature, dim=-1)
        t = self.sample_component(perturbed.argmax(-1))
        return t + ((soft - soft.detach())[..., None] * self.loc).sum(-2)


def mixture_kl_upper_bound(q: VonMisesFisherMixture, p: VonMisesFisherMixture) -> torch.Tensor:
    """``KL(w || π) ≥ KL(q || p)`` for ``q = Σ w_j c_j`` and ``p = Σ π_j c_j`` over the same components ``c_j``.

    The log-sum inequality; equality when the components do not overlap, so the ELBO stays a bound.
    Build ``q`` with ``p.reweighted(...)``: the components are checked by identity, without a host sync.
    From the log-weights, not torch's categorical KL: that one is inf wherever ``π_j`` underflows to 0 in
    float32 (log π_j below about -104, as after an E-step) while ``w_j`` does not, though both logs are finite.
    """
    if q.component_distribution is not p.component_distribution:
        raise ValueError("`mixture_kl_upper_bound` needs two mixtures over the same components: build q with `p.reweighted(logits)`.")
    w, pi = q.mixture_distribution, p.mixture_distribution
    return (w.probs * (w.logits - pi.logits)).sum(-1)


@register_kl(PowerSpherical, VonMisesFisher)
def _kl_power_spherical_von_mises_fisher(q: PowerSpherical, p: VonMisesFisher) -> torch.Tensor:
    """``KL(q || p) = -H(q) - log C_D(κ_p) - κ_p m_pᵀ E_q[t]``, with ``E_q[t] = μ κ_q / (D-1+κ_q)``."""
    if q.dim != p.dim:
        raise ValueError(f"KL(q || p) needs both on the same sphere; q has D = {q.dim}, p has D = {p.dim}.")
    kappa_q, kappa_p = q.concentration.double(), p.concentration.double()
    expected_cosine = (p.loc.double() * q.loc.double()).sum(-1) * kappa_q / (q.dim - 1 + kappa_q)
    kl = -q._entropy() - vmf_log_normalizer(p.dim, kappa_p) - kappa_p * expected_cosine
    return kl.to(torch.promote_types(q.loc.dtype, p.loc.dtype))
