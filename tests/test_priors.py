import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Independent, kl_divergence

from vdl_diffusion.distributions import PowerSpherical, VonMisesFisher, mean_resultant_length
from vdl_diffusion.posterior import TextEmbeddingPosterior
from vdl_diffusion.priors import ClipPrior, LearnedPrior, build_prior, estimate_text_cone, fit_von_mises_fisher


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_clip_prior_is_vmf_at_y_with_the_logit_scale():
    y = unit(4, 512)
    p = ClipPrior(512, logit_scale=100.0)(y)
    assert isinstance(p, VonMisesFisher)
    torch.testing.assert_close(p.loc, y)
    torch.testing.assert_close(p.concentration, torch.full((4,), 100.0))


def test_clip_prior_samples_sit_at_caption_like_cosines():
    """With real CLIP's D and s, prior samples sit at cos A_D(s) from y, near real captions (~0.2-0.3)."""
    y = unit(1, 512).expand(4000, 512)
    t = ClipPrior(512, logit_scale=100.0)(y).sample()
    cos = (t * y).sum(-1)
    assert abs(cos.mean().item() - mean_resultant_length(512, torch.tensor(100.0)).item()) < 0.01
    assert 0.15 < cos.mean().item() < 0.35


def test_clip_gap_prior_is_the_product_of_two_vmfs():
    m_t, kappa_t, s = unit(64, seed=1), 30.0, 100.0
    prior = ClipPrior.from_text_cone(m_t, kappa_t, logit_scale=s)
    y = unit(3, 64, seed=2)
    t = unit(5, 3, 64, seed=3)
    # log p(t|y) - [s y·t + κ_T m_T·t] must not depend on t: the product of the two densities.
    p = prior(y)
    residual = p.log_prob(t) - (s * (t * y).sum(-1) + kappa_t * (t @ m_t))
    torch.testing.assert_close(residual - residual[0], torch.zeros_like(residual), atol=1e-3, rtol=0)


def test_clip_gap_prior_saves_its_text_cone(tmp_path):
    prior = ClipPrior.from_text_cone(unit(16), 12.5)
    prior.save_pretrained(tmp_path)
    loaded = ClipPrior.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.text_mean, prior.text_mean)
    assert loaded.config.text_concentration == 12.5


def test_fit_von_mises_fisher_recovers_direction_and_concentration():
    loc = unit(32, seed=4)
    t = VonMisesFisher(loc.expand(20000, 32), torch.full((20000,), 50.0)).sample()
    m, kappa = fit_von_mises_fisher(t)
    assert torch.dot(m, loc) > 0.999
    assert kappa == pytest.approx(50.0, rel=0.05)


def test_estimate_text_cone_runs_the_text_encoder():
    from vdl_diffusion.testing_utils import tiny_clip_components

    clip = tiny_clip_components()
    texts = ["a red circle", "a blue square", "a small green triangle", "something round"] * 4
    m_t, kappa_t = estimate_text_cone(texts, clip["tokenizer"], clip["text_encoder"], batch_size=5)
    tokens = clip["tokenizer"](texts, padding="max_length", max_length=clip["tokenizer"].model_max_length, return_tensors="pt")
    with torch.no_grad():
        direction = F.normalize(F.normalize(clip["text_encoder"](**tokens).text_embeds, dim=-1).mean(0), dim=0)
    torch.testing.assert_close(m_t, direction, atol=1e-4, rtol=0)  # other batch sizes: not bitwise
    assert kappa_t > 0


def test_learned_prior_starts_as_the_clip_prior_and_learns_from_pairs():
    y, t_star = unit(64, 16, seed=5), unit(64, 16, seed=6)
    prior = LearnedPrior(16, hidden_dim=32, logit_scale=100.0)
    p = prior(y)
    torch.testing.assert_close(p.loc, y)
    torch.testing.assert_close(p.concentration, torch.full((64,), 100.0))
    nll = -p.log_prob(t_star).mean()
    nll.backward()
    assert all(param.grad is not None for param in prior.parameters())


def test_build_prior_errors_name_the_fix():
    with pytest.raises(ValueError, match="--prior_texts"):
        build_prior("clip-gap", 8)
    with pytest.raises(ValueError, match="Unknown prior"):
        build_prior("flat", 8)


@pytest.mark.parametrize("family", ["power_spherical", "gaussian"])
def test_posterior_starts_at_y_and_round_trips(tmp_path, family):
    y, h = unit(6, 16), torch.randn(6, 24)
    posterior = TextEmbeddingPosterior(16, 24, hidden_dim=32, family=family, init_concentration=50.0)
    q = posterior(y, h)
    if family == "gaussian":
        assert isinstance(q, Independent)
        torch.testing.assert_close(q.mean, y)
        torch.testing.assert_close(q.base_dist.scale, torch.full((6, 16), 50.0**-0.5))
    else:
        assert isinstance(q, PowerSpherical)
        torch.testing.assert_close(q.loc, y)
        torch.testing.assert_close(q.concentration, torch.full((6,), 50.0))
    posterior.save_pretrained(tmp_path)
    loaded = TextEmbeddingPosterior.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded(y, h).mean, q.mean)


def test_posterior_kl_to_prior_trains_loc_and_concentration():
    y, h = unit(8, 16), torch.randn(8, 4)
    posterior = TextEmbeddingPosterior(16, 4, hidden_dim=32)
    q = posterior(y, h)
    kl = kl_divergence(q, ClipPrior(16)(y))
    (kl.mean() + q.rsample().sum()).backward()
    assert posterior.to_loc.weight.grad.abs().sum() > 0
    assert posterior.to_concentration.weight.grad.abs().sum() > 0


def test_posterior_rejects_bad_input():
    posterior = TextEmbeddingPosterior(16, 4, hidden_dim=8)
    with pytest.raises(ValueError, match="`y` has width 15"):
        posterior(unit(2, 15), torch.randn(2, 4))
    with pytest.raises(ValueError, match="`features`"):
        posterior(unit(2, 16), None)
    with pytest.raises(ValueError, match="family"):
        TextEmbeddingPosterior(16, family="cauchy")
