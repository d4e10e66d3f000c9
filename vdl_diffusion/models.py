"""The generator ``p_θ(x | t)``: a stock diffusers UNet conditioned on one pooled embedding.

The condition enters Kandinsky-2.2 style (``addition_embed_type="image"``,
``encoder_hid_dim_type="image_proj"``): ``t`` is added to the timestep embedding and projected to
cross-attention tokens, and is passed as ``added_cond_kwargs={"image_embeds": t}``. Nothing here
is custom, so a saved UNet loads with plain ``UNet2DConditionModel.from_pretrained``.
"""

from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel

# Sizes by use: tiny for the toy world (its 10-minute CPU default) and tests, small for longer toy runs, base for real data.
UNET_PRESETS = {
    "tiny": dict(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    ),
    "small": dict(
        sample_size=8,
        block_out_channels=(64, 128, 128),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=128,
        attention_head_dim=32,
        norm_num_groups=32,
    ),
    "base": dict(
        sample_size=32,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=1024,
        attention_head_dim=64,
        norm_num_groups=32,
    ),
}

# train.py's default peak learning rate for each preset. tiny: the best of 1e-3, 2e-3, 4e-3 and 8e-3 on
# the toy world at its default budget (README, "Quick start"); small: not tuned; base: the default of
# diffusers' text-to-image training scripts.
PRESET_LEARNING_RATES = {"tiny": 4e-3, "small": 1e-3, "base": 1e-4}


def build_unet(preset: str, embedding_dim: int, latent_channels: int = 4, **overrides) -> UNet2DConditionModel:
    """A fresh UNet from a preset, taking a ``embedding_dim``-wide condition ``t``.

    ``overrides`` replace preset entries (e.g. ``sample_size`` for another resolution).
    """
    if preset not in UNET_PRESETS:
        raise ValueError(f"Unknown UNet preset {preset!r}; choose one of {sorted(UNET_PRESETS)}.")
    config = {
        **UNET_PRESETS[preset],
        "in_channels": latent_channels,
        "out_channels": latent_channels,
        "encoder_hid_dim": embedding_dim,
        "encoder_hid_dim_type": "image_proj",
        "addition_embed_type": "image",
        **overrides,
    }
    return UNet2DConditionModel(**config)


def build_noise_scheduler(prediction_type: str = "epsilon") -> DDPMScheduler:
    """The forward process the UNet trains on: the cosine schedule (``squaredcos_cap_v2``)."""
    return DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type)


def build_sampling_scheduler(noise_scheduler: DDPMScheduler) -> DPMSolverMultistepScheduler:
    """DPM-Solver++ for a UNet trained on ``noise_scheduler``, as exported pipelines use it.

    "leading" spacing starts sampling at t = 950, not 999: on the cosine schedule ᾱ(999) ≈ 2e-9, so
    a first step from there would divide the noise estimate's error by sqrt(ᾱ) ≈ 5e-5.
    """
    return DPMSolverMultistepScheduler.from_config(noise_scheduler.config, timestep_spacing="leading")
