"""The variational posterior ``q_φ(t | x, y)`` of the hidden CLIP text embedding.

``μ_φ = normalise(y + g_φ(y, h(x)))`` and ``κ_φ = softplus(k_φ(y, h(x))) + κ_min`` (METHOD.md,
"Posterior network"), with ``h(x)`` a compact image feature (CLIP's pooled vision feature by default).
``g_φ`` starts at zero, so training starts from ``μ = y``.
"""

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch.distributions import Distribution, Independent, Normal

from .distributions import PowerSpherical

FAMILIES = ("power_spherical", "gaussian")


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
        if family not in FAMILIES:
            raise ValueError(f"Unknown posterior family {family!r}; choose one of {FAMILIES}.")
        if init_concentration <= min_concentration:
            raise ValueError(
                f"`init_concentration` ({init_concentration}) must exceed `min_concentration` ({min_concentration})."
            )
        layers, width = [], embedding_dim + feature_dim
        for _ in range(num_layers):
            layers += [nn.Linear(width, hidden_dim), nn.SiLU()]
            width = hidden_dim
        self.trunk = nn.Sequential(*layers)
        self.to_loc = nn.Linear(width, embedding_dim)
        # One concentration per sample on the sphere; one scale per dimension for the Gaussian.
        self.to_concentration = nn.Linear(width, embedding_dim if family == "gaussian" else 1)
        nn.init.zeros_(self.to_loc.weight)
        nn.init.zeros_(self.to_loc.bias)
        nn.init.zeros_(self.to_concentration.weight)
        nn.init.constant_(self.to_concentration.bias, _inverse_softplus(init_concentration - min_concentration))

    def forward(self, y: torch.Tensor, features: torch.Tensor | None = None) -> Distribution:
        if y.shape[-1] != self.config.embedding_dim:
            raise ValueError(f"`y` has width {y.shape[-1]}, the posterior expects {self.config.embedding_dim}.")
        if self.config.feature_dim:
            if features is None or features.shape[-1] != self.config.feature_dim:
                got = None if features is None else features.shape[-1]
                raise ValueError(f"`features` h(x) must have width {self.config.feature_dim}, got {got}.")
            h = self.trunk(torch.cat([y, features.to(y.dtype)], dim=-1))
        else:
            h = self.trunk(y)
        concentration = F.softplus(self.to_concentration(h)) + self.config.min_concentration
        if self.config.family == "gaussian":
            return Independent(Normal(y + self.to_loc(h), concentration.rsqrt()), 1)
        return PowerSpherical(F.normalize(y + self.to_loc(h), dim=-1), concentration.squeeze(-1))


def _inverse_softplus(x: float) -> float:
    return x + math.log(-math.expm1(-x))
