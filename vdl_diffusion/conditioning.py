"""The condition the UNet sees during training, one rule per ``--method`` (METHOD.md, "Baselines").

Every method returns the same :class:`Condition`, so the objective and the training loop never branch
on the method. Images whose caption the run may see (semi-supervised setting) are conditioned on
their real text embedding ``t*`` under every method.

Nothing here waits on the device: no ``.item()``, no branch on a tensor's value, no boolean
indexing. Rows are selected with ``torch.where``, and whether the run has captions at all is a
Python bool the caller knows from its dataset (``captions``), so the step compiles to one graph
(``torch.compile(fullgraph=True)``, checked in tests/test_objective.py).
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.distributions import Independent, Normal, kl_divergence

from .distributions import VonMisesFisher, VonMisesFisherMixture, mixture_kl_upper_bound

METHODS = ("vdl", "lafite", "image", "prior-sample", "supervised")


@dataclass
class Condition:
    t: torch.Tensor
    """(B, D) unit-norm condition for the UNet."""
    kl: torch.Tensor
    """(B,) ``KL(q(t | x, y) || p(t | y))`` (closed form, an upper bound or a Monte Carlo estimate: see
    ``stats``), zero where a method has none."""
    caption_nll: torch.Tensor
    """(B,) ``-log q(t* | x, y)`` (plus ``-log p(t* | y)`` for a learned prior) on captioned images."""
    stats: dict = field(default_factory=dict)
    """Scalars worth logging."""
    log_q: torch.Tensor | None = None
    """(S·B,) ``log w_j`` of the component each row of ``t`` drew, for a score-function gradient
    (``samples > 1``); then ``t`` holds S draws of every image, draw-major."""


def condition(
    method: str, batch: dict, posterior=None, prior=None, lafite_xi: float = 0.75, captions: bool = True, samples: int = 1
) -> Condition:
    """The condition for ``batch`` (``y``, ``features``, and optionally ``caption_embeds``/``has_caption``, and
    for the ``text-bank`` prior each image's top-k ``bank_index``/``bank_logits``).

    ``captions``: whether any image of the run may have a visible caption (the dataset's
    ``num_captions > 0``). False skips the caption terms; True computes them for every row and keeps
    those of captioned rows, so no step asks the device whether this batch has one.

    ``samples``: draws of ``t`` per image for ``vdl`` with the bank-mixture posterior. With ``S > 1`` its
    weights learn from the exact score-function gradient with a leave-one-out baseline (`ELBO`)
    instead of the straight-through Gumbel-softmax.
    """
    y = batch["y"]
    zero = y.new_zeros(y.shape[0])
    caption_embeds = batch.get("caption_embeds") if captions else None
    if caption_embeds is not None:
        has_caption = batch["has_caption"].to(device=y.device, dtype=torch.bool)
        # Rows without a caption hold zeros; y stands in so densities see unit vectors (they are masked out).
        caption_embeds = torch.where(has_caption[:, None], caption_embeds.to(y.dtype), y)
    kl, caption_nll, stats, log_q = zero, zero, {}, None
    needs_prior = method in ("vdl", "prior-sample") or _has_parameters(prior)
    # The text-bank prior reads each image's precomputed top-k bank entries when the batch has them.
    candidates = [batch[key] for key in ("bank_index", "bank_logits") if key in batch]
    p = prior(y, *candidates) if needs_prior else None

    if method == "vdl":
        # The prior is fitted on captions only (METHOD.md), never pulled towards q by the KL.
        p_fixed = _detached(p)
        q = posterior(y, batch.get("features"), p_fixed)
        if samples > 1:
            if not isinstance(q, VonMisesFisherMixture):
                raise ValueError(f"{samples} samples per image train the bank-mixture posterior only; got {type(posterior).__name__}.")
            component = q.mixture_distribution.sample((samples,))
            log_q = q.mixture_distribution.log_prob(component).flatten()
            t = q.sample_component(component).flatten(0, 1)
        else:
            t = F.normalize(q.rsample(), dim=-1)
        kl, estimator = _kl(q, p_fixed, t)
        if caption_embeds is not None:
            kl = torch.where(has_caption, zero, kl)
            caption_nll = torch.where(has_caption, -q.log_prob(caption_embeds), zero)
        if estimator:
            stats[estimator] = kl.mean().detach()
        if not isinstance(q, VonMisesFisherMixture):
            stats["kappa"] = _concentration(q).mean().detach()
    elif method == "lafite":
        noise = F.normalize(torch.randn_like(y), dim=-1)
        t = F.normalize((1 - lafite_xi) * y + lafite_xi * noise, dim=-1)
    elif method == "image":
        t = y
    elif method == "prior-sample":
        t = p.sample()
    elif method == "supervised":
        if caption_embeds is None:
            raise ValueError("Method `supervised` needs a caption for every image (`--caption_column`, `--caption_fraction 1`).")
        # Checked on the device, without waiting for it: the step fails (on a GPU, at the next sync) instead of training on y.
        torch._assert_async(has_caption.all(), "Method `supervised` needs a caption for every image (`--caption_column`, `--caption_fraction 1`).")
        t = caption_embeds
    else:
        raise ValueError(f"Unknown method {method!r}; choose one of {METHODS}.")

    if _has_parameters(prior) and caption_embeds is not None:
        caption_nll = caption_nll + torch.where(has_caption, -p.log_prob(caption_embeds), zero)
    draws = t.shape[0] // y.shape[0]
    if caption_embeds is not None:
        t = torch.where(has_caption.repeat(draws)[:, None], caption_embeds.repeat(draws, 1), t)
    stats["cos_t_y"] = F.cosine_similarity(t.detach(), y.repeat(draws, 1), dim=-1).mean()
    return Condition(t=t, kl=kl, caption_nll=caption_nll, stats=stats, log_q=log_q)


def _has_parameters(module) -> bool:
    return module is not None and any(True for _ in module.parameters())


def _detached(p):
    """The prior ``p`` (a vMF or a mixture of them) without gradients."""
    if isinstance(p, VonMisesFisherMixture):
        return p.reweighted(p.mixture_distribution.logits.detach())
    return VonMisesFisher(p.loc.detach(), p.concentration.detach())


def _kl(q, p, t: torch.Tensor) -> tuple[torch.Tensor, str | None]:
    """``KL(q || p)`` per row and, unless it is exact, the name of its estimate (a log key).

    - vMF prior: closed form; for the Gaussian posterior the prior becomes ``N(m, I/κ)``, its
      tangent-space approximation.
    - Mixture prior, mixture posterior over the same components: the bound ``KL(w || π)`` (``kl_bound``).
    - Mixture prior, power spherical posterior: no closed form; ``log q(t̃) - log p(t̃)`` at the
      reparameterised sample ``t̃`` that conditions the UNet, unbiased for the KL and its gradient (``kl_mc``).
    """
    if isinstance(p, VonMisesFisherMixture):
        if isinstance(q, VonMisesFisherMixture):
            return mixture_kl_upper_bound(q, p), "kl_bound"
        if isinstance(q, Independent):
            raise ValueError("The gaussian posterior lives in R^D, the text-bank prior on the sphere: use --posterior_family power_spherical or bank_mixture.")
        return q.log_prob(t) - p.log_prob(t), "kl_mc"
    if isinstance(q, Independent):
        p = Independent(Normal(p.loc, p.concentration.rsqrt()[..., None].expand_as(p.loc)), 1)
    return kl_divergence(q, p), None


def _concentration(q) -> torch.Tensor:
    """``κ_φ`` for either family (the Gaussian's as ``σ^{-2}`` averaged over dimensions)."""
    if isinstance(q, Independent):
        return q.base_dist.scale.pow(-2).mean(-1)
    return q.concentration
