"""The variational posterior ``q_φ(t | x, y)`` of the hidden CLIP text embedding.

- :class:`TextEmbeddingPosterior`: ``μ_φ = normalise(m(y) + g_φ(y, h(x)))`` and
  ``κ_φ = softplus(k_φ(y, h(x))) + κ_min`` (METHOD.md, "Posterior network"), ``m(y)`` the prior's
  mean direction (``y`` without a prior). ``g_φ`` starts at zero, so training starts from ``μ = m(y)``.
- :class:`BankMixturePosterior`: for the ``text-bank`` prior, the prior's own shape
  ``Σ_j w_j(x, y) vMF(t_j, κ_b)`` over its candidates, starting at ``w = π(y)``.

``h(x)`` is a compact image feature (CLIP's pooled vision feature by default).
"""

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch.distributions import Distribution, Independent, Normal

from .distributions import PowerSpherical, VonMisesFisherMixture

FAMILIES = ("power_spherical", "gaussian", "bank_mixture")


class TextEmbeddingPosterior(ModelMixin, ConfigMixin):
    """Amortised ``q_φ(t | x, y)``: a power spherical (default) or diagonal Gaussian over ``t``.

    Args:
        embedding_dim: ``D``, the width of CLIP's joint space.
        feature_dim: width of ``h(x)``; 0 to condition on ``y`` alone.
        hidden_dim, num_layers: the MLP trunk on ``[y, h(x)]``.
        family: ``"power_spherical"`` or ``"gaussian"`` (for comparison, METHOD.md).
        min_concentration: ``κ_min``, keeps ``q`` away from the uniform distribution.
        init_concentration: ``κ_φ`` at initialisation (the Gaussian's ``σ = κ^{-1/2}``).
    """

    @register_to_config
    def __init__(
        self,
        embedding_dim: int,
        feature_dim: int = 0,
        hidden_dim: int = 512,
        num_layers: int = 2,
        family: str = "power_spherical",
        min_concentration: float = 1.0,
        init_concentration: float = 100.0,
    ):
        super().__init__()
        if family not in ("power_spherical", "gaussian"):
            raise ValueError(f"Unknown posterior family {family!r}; choose power_spherical or gaussian (bank_mixture: BankMixturePosterior).")
        if init_concentration <= min_concentration:
            raise ValueError(
                f"`init_concentration` ({init_concentration}) must exceed `min_concentration` ({min_concentration})."
            )
        self.trunk, width = _trunk(embedding_dim + feature_dim, hidden_dim, num_layers)
        self.to_loc = nn.Linear(width, embedding_dim)
        # One concentration per sample on the sphere; one scale per dimension for the Gaussian.
        self.to_concentration = nn.Linear(width, embedding_dim if family == "gaussian" else 1)
        nn.init.zeros_(self.to_loc.weight)
        nn.init.zeros_(self.to_loc.bias)
        nn.init.zeros_(self.to_concentration.weight)
        nn.init.constant_(self.to_concentration.bias, _inverse_softplus(init_concentration - min_concentration))

    def forward(self, y: torch.Tensor, features: torch.Tensor | None = None, prior: Distribution | None = None) -> Distribution:
        """``q(t | x, y)``, centred on ``prior.mean_direction`` (the prior ``p(t | y)`` of the batch) or on ``y``."""
        h = self.trunk(_inputs(self.config, y, features))
        centre = y if prior is None else prior.mean_direction.to(y.dtype)
        concentration = F.softplus(self.to_concentration(h)) + self.config.min_concentration
        if self.config.family == "gaussian":
            return Independent(Normal(centre + self.to_loc(h), concentration.rsqrt()), 1)
        return PowerSpherical(F.normalize(centre + self.to_loc(h), dim=-1), concentration.squeeze(-1))


class BankMixturePosterior(ModelMixin, ConfigMixin):
    """``q(t | x, y) = Σ_j w_j vMF(t; t_j, κ_b)`` over the ``text-bank`` prior's candidates ``t_j`` of the image.

    ``log w_j = (1 + a) log π_j + uᵀt_j + const``, with ``a`` and ``u`` from an MLP on ``[y, h(x)]``:
    ``u`` prefers the candidates true of the image (the diffusion loss tells), ``a`` sharpens or
    flattens the prior. Both start at zero, so ``q = p`` at initialisation. The components are the
    prior's, so ``KL(q || p) ≤ KL(w || π)`` in closed form over k (`mixture_kl_upper_bound`).

    Args:
        embedding_dim, feature_dim, hidden_dim, num_layers: as `TextEmbeddingPosterior`.
        temperature: of the straight-through Gumbel-softmax that passes gradients to ``w``.
    """

    @register_to_config
    def __init__(self, embedding_dim: int, feature_dim: int = 0, hidden_dim: int = 512, num_layers: int = 2, temperature: float = 1.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"`temperature` must be positive, got {temperature}.")
        self.trunk, width = _trunk(embedding_dim + feature_dim, hidden_dim, num_layers)
        self.to_query = nn.Linear(width, embedding_dim)
        self.to_sharpening = nn.Linear(width, 1)
        for layer in (self.to_query, self.to_sharpening):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, y: torch.Tensor, features: torch.Tensor | None, prior: VonMisesFisherMixture) -> VonMisesFisherMixture:
        if not isinstance(prior, VonMisesFisherMixture):
            raise ValueError(f"BankMixturePosterior reweighs a text-bank prior's candidates; got a {type(prior).__name__} prior (use --prior text-bank).")
        h = self.trunk(_inputs(self.config, y, features))
        log_pi = prior.mixture_distribution.logits
        score = (prior.loc @ self.to_query(h)[..., None]).squeeze(-1)
        return prior.reweighted((1 + self.to_sharpening(h)) * log_pi + score, self.config.temperature)


def _trunk(width: int, hidden_dim: int, num_layers: int) -> tuple[nn.Sequential, int]:
    """The MLP on ``[y, h(x)]`` and its output width."""
    layers = []
    for _ in range(num_layers):
        layers += [nn.Linear(width, hidden_dim), nn.SiLU()]
        width = hidden_dim
    return nn.Sequential(*layers), width


def _inputs(config, y: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
    """``[y, h(x)]`` after checking both widths against the posterior's config."""
    if y.shape[-1] != config.embedding_dim:
        raise ValueError(f"`y` has width {y.shape[-1]}, the posterior expects {config.embedding_dim}.")
    if not config.feature_dim:
        return y
    if features is None or features.shape[-1] != config.feature_dim:
        got = None if features is None else features.shape[-1]
        raise ValueError(f"`features` h(x) must have width {config.feature_dim}, got {got}.")
    return torch.cat([y, features.to(y.dtype)], dim=-1)


def _inverse_softplus(x: float) -> float:
    return x + math.log(-math.expm1(-x))
