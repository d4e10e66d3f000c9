"""The frozen models of VDL: the VAE that gives `z0`, CLIP's image encoder `f_I` and text encoder `f_T`.

One home for running them, used to build the embedding cache and, with ``--no_cache``, inside
the training loop, so both paths produce the same tensors.
"""

import hashlib
import json
import logging
from contextlib import contextmanager

import torch
import torch.nn.functional as F
import transformers
from diffusers import AutoencoderKL
from transformers import CLIPTextModelWithProjection, CLIPTokenizerFast, CLIPVisionModelWithProjection, PreTrainedTokenizerBase
from transformers.utils import logging as transformers_logging

logger = logging.getLogger(__name__)


@contextmanager
def _quiet_transformers():
    """transformers' warnings and its "Loading weights" bars off for the block; its errors still show.

    For loading the frozen encoders: the reports there are expected (see `_clip_tower`), and a few
    hundred tensors load too fast for a bar to tell anything.
    """
    verbosity, bars = transformers_logging.get_verbosity(), transformers_logging.is_progress_bar_enabled()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)
        if bars:
            transformers_logging.enable_progress_bar()


class _TorchvisionFallbackFilter(logging.Filter):
    """Drops transformers' notice that an image processor falls back to its PIL backend; every other message passes.

    transformers 5 makes ``CLIPImageProcessor`` (and ``SiglipImageProcessor``, which diffusers imports) its
    torchvision class and, without torchvision (optional here: its wheel does not import beside every
    torch build), hands out the ``...Pil`` class with that warning. Only the processor's mean and std
    are read here (`clip_pixels` resizes in torch), so either backend serves.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed); falling back to" not in record.getMessage()


transformers_logging.get_logger("transformers.utils.import_utils").addFilter(_TorchvisionFallbackFilter())
CLIPImageProcessor = transformers.CLIPImageProcessor  # after the filter: transformers warns at the name's first use


class FrozenEncoders(torch.nn.Module):
    """VAE + CLIP vision + CLIP text, in eval mode, without gradients.

    Inputs are moved to the encoders' device and dtype; outputs come back in that dtype.
    """

    def __init__(
        self,
        vae: AutoencoderKL,
        image_encoder: CLIPVisionModelWithProjection,
        text_encoder: CLIPTextModelWithProjection,
        tokenizer: PreTrainedTokenizerBase,
        feature_extractor: CLIPImageProcessor,
    ):
        super().__init__()
        self.vae = vae
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor  # its mean and std; saved with the pipeline
        mean, std = feature_extractor.image_mean, feature_extractor.image_std
        self.register_buffer("image_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False).eval()
        self._fingerprint = None

    @classmethod
    def from_pretrained(
        cls,
        clip_path: str,
        vae_path: str,
        *,
        vae_subfolder: str | None = None,
        revision: str | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        cache_dir: str | None = None,
        variant: str | None = None,
    ) -> "FrozenEncoders":
        """Loads e.g. ``openai/clip-vit-large-patch14`` and ``stabilityai/sd-vae-ft-mse`` (or local folders).

        ``vae_path`` may also be a whole Stable Diffusion repository, whose VAE is in its ``vae/``
        subfolder (found by itself, or named with ``vae_subfolder="vae"``). ``cache_dir`` is the Hub
        download cache; ``variant`` (e.g. ``"fp16"``) picks the VAE's weight files, not CLIP's.
        """
        hub = dict(revision=revision, cache_dir=cache_dir)
        vae = _load_vae(vae_path, vae_subfolder, variant=variant, **hub)
        image_encoder = _clip_tower(CLIPVisionModelWithProjection, clip_path, **hub)
        text_encoder = _clip_tower(CLIPTextModelWithProjection, clip_path, **hub)
        tokenizer = CLIPTokenizerFast.from_pretrained(clip_path, **hub)  # reads tokenizer.json in transformers 4 and 5
        try:
            feature_extractor = CLIPImageProcessor.from_pretrained(clip_path, **hub)
        except OSError:
            logger.warning("No image processor config in %s; normalising with OpenAI CLIP's mean and std.", clip_path)
            size = image_encoder.config.image_size
            feature_extractor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        encoders = cls(vae, image_encoder, text_encoder, tokenizer, feature_extractor)
        return encoders.to(device=device, dtype=dtype)

    @property
    def device(self) -> torch.device:
        return self.vae.device

    @property
    def dtype(self) -> torch.dtype:
        return self.vae.dtype

    @property
    def embedding_dim(self) -> int:
        """D, the dimension of the joint CLIP space where `y` and `t` live."""
        return self.image_encoder.config.projection_dim

    @property
    def feature_dim(self) -> int:
        """The dimension of CLIP's pooled vision feature `h(x)`."""
        return self.image_encoder.config.hidden_size

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def encode_latents(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`z0` for images in [-1, 1]: the mean of the VAE posterior, shifted and scaled.

        The mean, not a sample: a cached latent must be a function of the image, and cached and
        uncached training must see the same `z0`. The SD VAE's posterior is narrow next to the
        spread of the latents, so a sample would add little but noise baked into the cache.
        """
        pixel_values = pixel_values.to(self.device, self.dtype)
        latents = self.vae.encode(pixel_values).latent_dist.mode()
        if self.vae.config.shift_factor is not None:
            latents = latents - self.vae.config.shift_factor
        return latents * self.vae.config.scaling_factor

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """``latents`` (`z0`), ``y`` (unit CLIP image embedding) and ``features`` (pooled, pre-projection).

        `y` and ``features`` come from one vision forward pass.
        """
        pooled = self.image_encoder.vision_model(pixel_values=self.clip_pixels(pixel_values)).pooler_output
        y = F.normalize(self.image_encoder.visual_projection(pooled), dim=-1)
        return {"latents": self.encode_latents(pixel_values), "y": y, "features": pooled}

    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> torch.Tensor:
        """`t = f_T(caption)`: unit CLIP text embeddings, one row per caption."""
        tokens = self.tokenizer(
            captions,
            padding="max_length",
            max_length=self.text_encoder.config.max_position_embeddings,
            truncation=True,
            return_tensors="pt",
        )
        t = self.text_encoder(input_ids=tokens.input_ids.to(self.device)).text_embeds
        return F.normalize(t, dim=-1)

    def clip_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """What ``CLIPImageProcessor`` does, batched in torch: shorter side to the model's size, centre crop, normalise."""
        size = self.image_encoder.config.image_size
        x = (pixel_values.to(self.device, torch.float32) + 1.0) / 2.0
        height, width = x.shape[-2:]
        resized = (size * height // min(height, width), size * width // min(height, width))  # as transformers rounds
        x = F.interpolate(x, size=resized, mode="bicubic", antialias=True, align_corners=False).clamp(0.0, 1.0)
        top, left = (resized[0] - size) // 2, (resized[1] - size) // 2
        x = x[..., top : top + size, left : left + size]
        return ((x - self.image_mean.float()) / self.image_std.float()).to(self.dtype)

    def fingerprint(self) -> str:
        """A hash of everything that decides the encoders' outputs: weights, configs, normalisation, vocabulary.

        Weights rather than names, so a fine-tuned checkpoint in a reused folder never matches an old cache.
        """
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for name, model in (("vae", self.vae), ("image_encoder", self.image_encoder), ("text_encoder", self.text_encoder)):
                digest.update(json.dumps([name, type(model).__name__, _config_dict(model)], sort_keys=True, default=str).encode())
                for key, tensor in model.state_dict().items():
                    digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
                    digest.update(tensor.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy())
            digest.update(json.dumps([self.image_mean.flatten().tolist(), self.image_std.flatten().tolist()]).encode())
            digest.update(json.dumps(self.tokenizer.get_vocab(), sort_keys=True).encode())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint


def _load_vae(vae_path: str, subfolder: str | None, **kwargs) -> AutoencoderKL:
    """The ``AutoencoderKL`` in ``vae_path``, or in its ``vae/`` subfolder when it is a whole pipeline (no
    ``config.json`` at its top, as in a Stable Diffusion repository)."""
    if subfolder is not None:
        return AutoencoderKL.from_pretrained(vae_path, subfolder=subfolder, **kwargs)
    try:
        return AutoencoderKL.from_pretrained(vae_path, **kwargs)
    except OSError as error:
        if "config.json" not in str(error):
            raise
        try:
            vae = AutoencoderKL.from_pretrained(vae_path, subfolder="vae", **kwargs)
        except OSError:
            raise error from None
    logger.info("%s has no VAE at its top; loaded the one in its vae/ subfolder (a Stable Diffusion layout).", vae_path)
    return vae


def _clip_tower(cls, clip_path: str, **hub):
    """One tower of a full CLIP checkpoint (``cls`` is the vision or text model with projection).

    The other tower's weights are expected leftovers, so transformers' report listing them is
    silenced; a weight of this tower missing from the checkpoint would be left random, so it fails.
    """
    with _quiet_transformers():
        model, info = cls.from_pretrained(clip_path, output_loading_info=True, **hub)
    if missing := sorted(info["missing_keys"]):
        raise ValueError(
            f"{clip_path} has no weights for {len(missing)} parameters of {cls.__name__} (e.g. {missing[0]}); "
            "pass a CLIP with projection heads, e.g. openai/clip-vit-large-patch14."
        )
    return model


def _config_dict(model: torch.nn.Module) -> dict:
    """A model's config without the library version and private keys, which do not change its outputs."""
    config = model.config.to_dict() if hasattr(model.config, "to_dict") else dict(model.config)
    return {key: value for key, value in config.items() if not key.startswith("_") and "version" not in key}
