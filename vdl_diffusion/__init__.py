"""vdl-diffusion: text-to-image latent diffusion trained on images without captions (VDL, CVPR 2023).

Public objects are imported on first use, so ``import vdl_diffusion`` stays cheap and a module that
needs only one piece (e.g. the distributions) does not pull in diffusers and transformers.
"""

import importlib

# Public name -> the module that defines it.
_EXPORTS = {
    "VDLPipeline": "vdl_diffusion.pipelines",
    "PowerSpherical": "vdl_diffusion.distributions",
    "VonMisesFisher": "vdl_diffusion.distributions",
    "VonMisesFisherMixture": "vdl_diffusion.distributions",
    "TextEmbeddingPosterior": "vdl_diffusion.posterior",
    "BankMixturePosterior": "vdl_diffusion.posterior",
    "ClipPrior": "vdl_diffusion.priors",
    "LearnedPrior": "vdl_diffusion.priors",
    "TextBankPrior": "vdl_diffusion.priors",
    "estimate_text_cone": "vdl_diffusion.priors",
    "condition": "vdl_diffusion.conditioning",
    "ELBO": "vdl_diffusion.objective",
    "build_unet": "vdl_diffusion.models",
    "FrozenEncoders": "vdl_diffusion.encoders",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vdl_diffusion' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
