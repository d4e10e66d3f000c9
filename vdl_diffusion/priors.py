"""Priors ``p(t | y)`` over the hidden CLIP text embedding ``t`` given the image embedding ``y``.

All are von Mises-Fisher on the unit sphere (METHOD.md, "Priors"):

- ``clip``: CLIP's own conditional ``p(t | y) ∝ p(t) exp(s cos(t, y))`` with a flat text marginal,
  i.e. ``vMF(y, s)``, ``s`` the logit scale.
- ``clip-gap``: the same with a text-cone marginal ``p(t) = vMF(m_T, κ_T)``; the product of the two
  is ``vMF(normalise(s y + κ_T m_T), ||s y + κ_T m_T||)``. ``clip`` is its special case ``κ_T = 0``,
  so one class serves both.
- ``learned``: ``m, κ_p`` from a small network of ``y``, fitted by maximum likelihood on whatever
  image-caption pairs exist.

Priors are diffusers ``ModelMixin``s so their parameters (``m_T``, ``κ_T`` or the network) are
saved with the trained model.
"""

from typing import Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .distributions import VonMisesFisher
from .posterior import TextEmbeddingPosterior

PRIORS = ("clip", "clip-gap", "learned")


class ClipPrior(ModelMixin, ConfigMixin):
    """``vMF(normalise(s·y + κ_T·m_T), ||s·y + κ_T·m_T||)``; ``κ_T = 0`` gives the ``clip`` prior."""

    @register_to_config
    def __init__(self, embedding_dim: int, logit_scale: float = 100.0, text_concentration: float = 0.0):
        super().__init__()
        if logit_scale <= 0:
            raise ValueError(f"`logit_scale` must be positive (CLIP's is 100), got {logit_scale}.")
        self.register_buffer("text_mean", torch.zeros(embedding_dim))

    def forward(self, y: torch.Tensor) -> VonMisesFisher:
        eta = self.config.logit_scale * y + self.config.text_concentration * self.text_mean.to(y.dtype)
        return VonMisesFisher(F.normalize(eta, dim=-1), eta.norm(dim=-1))

    @classmethod
    def from_text_cone(cls, text_mean: torch.Tensor, text_concentration: float, logit_scale: float = 100.0):
        """The ``clip-gap`` prior for a text cone ``vMF(m_T, κ_T)`` (see :func:`estimate_text_cone`)."""
        prior = cls(embedding_dim=text_mean.numel(), logit_scale=logit_scale, text_concentration=float(text_concentration))
        prior.text_mean.copy_(F.normalize(text_mean.flatten().float(), dim=0))
        return prior


def fit_von_mises_fisher(t: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Maximum-likelihood direction and (Banerjee et al. 2005) concentration of unit vectors ``t``."""
    if t.ndim != 2 or t.shape[0] < 2:
        raise ValueError(f"Need at least two embeddings as an (N, D) tensor, got shape {tuple(t.shape)}.")
    dim = t.shape[1]
    resultant = F.normalize(t.double(), dim=-1).mean(dim=0)
    r = resultant.norm().clamp(max=1 - 1e-6).item()
    return F.normalize(resultant, dim=0).float(), r * (dim - r**2) / (1 - r**2)


@torch.no_grad()
def estimate_text_cone(texts: Sequence[str], tokenizer, text_encoder, batch_size: int = 256) -> tuple[torch.Tensor, float]:
    """``m_T, κ_T`` of CLIP text embeddings of **unpaired** texts (never the training images' captions).

    ``text_encoder`` is a ``CLIPTextModelWithProjection``; any generic prompts or class names in
    templates will do.
    """
    texts = [text for text in texts if text.strip()]
    if len(texts) < 2:
        raise ValueError("`estimate_text_cone` needs at least two non-empty texts to estimate the text cone.")
    embeds = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(
            texts[start : start + batch_size],
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).to(text_encoder.device)
        embeds.append(text_encoder(**tokens).text_embeds.float().cpu())
    return fit_von_mises_fisher(torch.cat(embeds))


class LearnedPrior(ModelMixin, ConfigMixin):
    """``vMF(normalise(y + g(y)), softplus(k(y)) + κ_min)``, starting as the ``clip`` prior ``vMF(y, s)``.

    The network is the posterior's, fed ``y`` alone; only the family of the output differs.
    """

    @register_to_config
    def __init__(self, embedding_dim: int, hidden_dim: int = 512, logit_scale: float = 100.0, min_concentration: float = 1.0):
        super().__init__()
        self.net = TextEmbeddingPosterior(
            embedding_dim, hidden_dim=hidden_dim, min_concentration=min_concentration, init_concentration=logit_scale
        )

    def forward(self, y: torch.Tensor) -> VonMisesFisher:
        q = self.net(y)
        return VonMisesFisher(q.loc, q.concentration)


def build_prior(name: str, embedding_dim: int, logit_scale: float = 100.0, text_cone=None) -> nn.Module:
    """The prior named on the command line; ``clip-gap`` needs ``text_cone = (m_T, κ_T)``."""
    if name == "clip":
        return ClipPrior(embedding_dim, logit_scale)
    if name == "clip-gap":
        if text_cone is None:
            raise ValueError("The `clip-gap` prior needs the text cone (m_T, κ_T): pass unpaired texts (`--prior_texts`).")
        return ClipPrior.from_text_cone(*text_cone, logit_scale=logit_scale)
    if name == "learned":
        return LearnedPrior(embedding_dim, logit_scale=logit_scale)
    raise ValueError(f"Unknown prior {name!r}; choose one of {PRIORS}.")
