"""The toy world's oracle: a small CNN that reads the ground-truth attributes off an image.

It is used only for evaluation (does a generated image show what its prompt asked for?), and its
penultimate features serve a Fréchet distance in its own feature space (an offline FID).
"""

import numpy as np
import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from .world import ATTRIBUTE_NAMES, ATTRIBUTES


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.SiLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.SiLU(),
        nn.AvgPool2d(2),
    )


class ToyOracle(ModelMixin, ConfigMixin):
    """Attribute classifier for images in [-1, 1] (N, 3, 32, 32), one head per attribute.

    The features are flattened, not pooled, so the position of the object stays readable.
    """

    @register_to_config
    def __init__(
        self,
        attribute_names: tuple[str, ...] = ATTRIBUTE_NAMES,
        num_classes: tuple[int, ...] = tuple(len(ATTRIBUTES[a]) for a in ATTRIBUTE_NAMES),
        channels: tuple[int, ...] = (32, 64, 64),
        feature_dim: int = 128,
        image_size: int = 32,
    ):
        super().__init__()
        if len(attribute_names) != len(num_classes):
            raise ValueError(f"attribute_names ({len(attribute_names)}) and num_classes ({len(num_classes)}) must match")
        widths = (3, *channels)
        self.encoder = nn.Sequential(*[_block(a, b) for a, b in zip(widths[:-1], widths[1:])])
        side = image_size // 2 ** len(channels)
        self.project = nn.Sequential(nn.Flatten(), nn.Linear(channels[-1] * side * side, feature_dim), nn.SiLU())
        self.heads = nn.ModuleDict({a: nn.Linear(feature_dim, k) for a, k in zip(attribute_names, num_classes)})

    @staticmethod
    def to_pixels(images: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, 3) images -> float (N, 3, H, W) in [-1, 1], the range of VAE outputs."""
        return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N, feature_dim), e.g. for a Fréchet distance."""
        return self.project(self.encoder(pixels))

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per attribute."""
        h = self.features(pixels)
        return {a: head(h) for a, head in self.heads.items()}

    @torch.no_grad()
    def classify(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predicted label per attribute."""
        return {a: logits.argmax(-1) for a, logits in self(pixels).items()}
