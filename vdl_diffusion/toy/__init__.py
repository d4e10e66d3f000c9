"""The toy world: a procedural captioned world of 32×32 images with its own CLIP, VAE and oracle.

Nothing can be downloaded offline, so the toolkit ships a small world and small pretrained models
of it (under ``weights/``); each loads with its library's ordinary ``from_pretrained``::

    CLIPModel.from_pretrained(TOY_CLIP); AutoencoderKL.from_pretrained(TOY_VAE)
    ToyOracle.from_pretrained(TOY_ORACLE)
"""

from pathlib import Path

from .models import ToyOracle
from .world import ATTRIBUTE_NAMES, ATTRIBUTES, SPLITS, ToySample, ToyWorld, as_dataset, write_imagefolder

TOY_WEIGHTS = Path(__file__).parent / "weights"
TOY_CLIP = TOY_WEIGHTS / "clip"
TOY_VAE = TOY_WEIGHTS / "vae"
TOY_ORACLE = TOY_WEIGHTS / "oracle"

__all__ = [
    "ATTRIBUTES",
    "ATTRIBUTE_NAMES",
    "SPLITS",
    "TOY_CLIP",
    "TOY_ORACLE",
    "TOY_VAE",
    "TOY_WEIGHTS",
    "ToyOracle",
    "ToySample",
    "ToyWorld",
    "as_dataset",
    "write_imagefolder",
]
