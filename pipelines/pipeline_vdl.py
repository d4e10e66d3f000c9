"""Text-to-image (and image variation) sampling for a UNet trained with VDL.

The generator ``p_θ(x | t)`` was trained on images alone, conditioned on samples ``t`` of the
posterior over CLIP *text* embeddings; at inference ``t`` is the L2-normalised CLIP text embedding
of the prompt (or the CLIP image embedding of ``image=``, for variations).

This file imports only torch, diffusers, transformers and what they depend on (PIL,
huggingface_hub): ``save_pretrained`` copies it beside the weights and names it in
``model_index.json``, so a saved pipeline loads with plain diffusers, without the vdl-diffusion package.
"""

import inspect
import json
import math
import numbers
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import PIL.Image
import torch
import torch.nn.functional as F
import transformers
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import replace_example_docstring
from diffusers.utils.torch_utils import randn_tensor
from huggingface_hub import ModelCard, ModelCardData, create_repo
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError
from transformers import (
    CLIPImageProcessor,
    CLIPTextModelWithProjection,
    CLIPTokenizerFast,
    CLIPVisionModelWithProjection,
)

# What model_index.json names, beside the class, and `custom_pipeline=` loads: this file, as save_pretrained copies it.
CUSTOM_PIPELINE = os.path.splitext(os.path.basename(__file__))[0]

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def _is_int(value) -> bool:
    """An integer (Python or NumPy), not a bool or a float that happens to be whole."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_finite(name: str, tensor: torch.Tensor):
    """Raises if a user-given tensor holds NaN or ±inf (one check per call, before any model runs)."""
    if tensor.is_floating_point():  # integer tensors cannot hold NaN or inf
        bad = (~torch.isfinite(tensor)).sum().item()
        if bad:
            raise ValueError(
                f"`{name}` has {bad} NaN or infinite value(s) among its {tensor.numel()} (shape "
                f"{tuple(tensor.shape)}); pass finite values."
            )


def _portable_class_name(library: str, class_name: str) -> str:
    """The class ``model_index.json`` records for a component of ``library``.

    transformers 5 builds ``CLIPImageProcessor`` as a backend class (``CLIPImageProcessorPil`` without
    torchvision), which transformers 4 lacks. The base name exists in every version, and its
    ``from_pretrained`` picks the backend the installed version has. Tokenizers are recorded by their
    fast name: in transformers 4 the slow ``CLIPTokenizer`` cannot read the ``tokenizer.json`` that 5
    saves, and in 5 ``CLIPTokenizerFast`` is ``CLIPTokenizer`` itself.
    """
    if library == "transformers":
        for suffix in ("Pil", "Fast"):
            base = class_name.removesuffix(suffix)
            if base != class_name and base.endswith("ImageProcessor") and hasattr(transformers, base):
                return base
        if class_name.endswith("Tokenizer") and hasattr(transformers, class_name + "Fast"):
            return class_name + "Fast"
    return class_name


def usage(repo_id: str, prompt: str = "a red circle") -> str:
    """Markdown: how to load and prompt the pipeline saved in ``repo_id`` (a Hub repository or a folder)."""
    return f"""```python
import torch
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained({json.dumps(repo_id)}, custom_pipeline="{CUSTOM_PIPELINE}", trust_remote_code=True)
image = pipe({json.dumps(prompt)}, guidance_scale=4.0, generator=torch.manual_seed(0)).images[0]
```

`{CUSTOM_PIPELINE}.py` beside the weights is the pipeline's code (`VDLPipeline`; torch, diffusers and
transformers only). `model_index.json` names it, so `custom_pipeline` may be left out; `trust_remote_code=True`
allows diffusers to run it. With `pip install vdl-diffusion`, `vdl_diffusion.VDLPipeline.from_pretrained({json.dumps(repo_id)})`
loads the same weights into the package's class, without running code from the repository."""


MODEL_CARD_TEMPLATE = """---
{{ card_data }}
---

{{ model_description }}
"""

MODEL_DESCRIPTION = """\
# VDL text-to-image model

A text-to-image latent diffusion model trained on images **without captions** with Variational
Distribution Learning ([Kang et al., CVPR 2023](https://arxiv.org/abs/2303.16105)): the UNet is
conditioned on a CLIP text embedding that a variational posterior infers from each image, and at
inference on the normalised CLIP text embedding of the prompt.

{usage}
"""


EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from vdl_diffusion import VDLPipeline

        >>> pipe = VDLPipeline.from_pretrained("path/to/vdl-run")  # a folder written by train.py
        >>> image = pipe("a red circle", guidance_scale=4.0, generator=torch.manual_seed(0)).images[0]

        >>> # The same weights make variations of an image (needs `image_encoder`).
        >>> variation = pipe(image=image, generator=torch.manual_seed(1)).images[0]

        >>> # Without vdl-diffusion installed: the folder carries this pipeline's code.
        >>> from diffusers import DiffusionPipeline

        >>> pipe = DiffusionPipeline.from_pretrained("path/to/vdl-run", trust_remote_code=True)
        ```
"""


class VDLPipeline(DiffusionPipeline):
    r"""
    Samples images from a UNet conditioned on one pooled, L2-normalised CLIP embedding ``t``.

    This model inherits from [`DiffusionPipeline`]; see the superclass for the generic methods
    (loading, saving, moving to a device, offloading).

    Args:
        vae ([`AutoencoderKL`]): decodes latents (scaled by `vae.config.scaling_factor`) to images.
        unet ([`UNet2DConditionModel`]): the denoiser; the condition enters as
            `added_cond_kwargs={"image_embeds": t}`, `t` of width `unet.config.encoder_hid_dim`.
        scheduler ([`SchedulerMixin`]): any diffusers scheduler (DDIM, DPM-Solver, Euler, ...).
        tokenizer ([`CLIPTokenizerFast`]) and text_encoder ([`CLIPTextModelWithProjection`]): give `t`
            for a prompt.
        image_encoder ([`CLIPVisionModelWithProjection`], *optional*) and feature_extractor
            ([`CLIPImageProcessor`], *optional*): give `t` for `image=` (image variations).
        null_embedding (`list[float]`, *optional*): the unconditional condition of classifier-free
            guidance, the one the trainer substituted for `t` with probability `p_uncond`; zeros if
            `None`. Saved in `model_index.json`.

    Any model may be `None` to save memory, e.g. `VDLPipeline.from_pretrained(path, unet=None, vae=None)`
    only encodes prompts (`encode_prompt`), and a pipeline without `text_encoder` and `tokenizer`
    samples from `prompt_embeds`.
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->unet->vae"
    _optional_components = ["image_encoder", "feature_extractor"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(
        self,
        vae: AutoencoderKL,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        tokenizer: CLIPTokenizerFast,
        text_encoder: CLIPTextModelWithProjection,
        image_encoder: CLIPVisionModelWithProjection | None = None,
        feature_extractor: CLIPImageProcessor | None = None,
        null_embedding: list[float] | torch.Tensor | None = None,
    ):
        super().__init__()
        if isinstance(null_embedding, torch.Tensor):
            null_embedding = null_embedding.detach().float().cpu().tolist()
        self.register_modules(
            vae=vae,
            unet=unet,
            scheduler=scheduler,
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
        )
        self.register_to_config(null_embedding=null_embedding)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        widths = self._condition_widths()
        reference, dim = next(iter(widths.items()), (None, None))
        for name, width in widths.items():
            if width != dim:
                what = f"the UNet takes conditions of width {dim}" if reference.startswith("unet") else f"{reference} is {dim}"
                raise ValueError(f"{name} is {width} but {what} ({reference}).")

    def _condition_widths(self) -> dict[str, int]:
        """The width of `t` as each present part sees it, the UNet's first."""
        widths = {}
        for name, model, key in (
            ("unet", self.unet, "encoder_hid_dim"),
            ("text_encoder", self.text_encoder, "projection_dim"),
            ("image_encoder", self.image_encoder, "projection_dim"),
        ):
            if model is not None:
                widths[f"{name}.config.{key}"] = getattr(model.config, key)
        if self.config.null_embedding is not None:
            widths["len(null_embedding)"] = len(self.config.null_embedding)
        return widths

    @property
    def condition_dim(self) -> int:
        """D, the width of the condition `t` (and of the null embedding)."""
        widths = self._condition_widths()
        if not widths:
            raise ValueError("This pipeline has no UNet, CLIP encoder or null embedding to tell the width of `t`.")
        return next(iter(widths.values()))

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1

    @property
    def cross_attention_kwargs(self) -> dict[str, Any] | None:
        return self._cross_attention_kwargs

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        device: torch.device | None = None,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        r"""
        The conditions of `__call__`: needs only `text_encoder` and `tokenizer` (or neither, given embeddings).

        Args:
            prompt (`str` or `list[str]`, *optional*): encoded as ``t = f_T(prompt) / ||f_T(prompt)||``,
                one row per prompt; ignored if `prompt_embeds` is given.
            device (`torch.device`, *optional*): where the embeddings go; default the execution device.
            num_images_per_prompt (`int`): each row is repeated this many times.
            do_classifier_free_guidance (`bool`): whether to return the unconditional branch too.
            negative_prompt (`str` or `list[str]`, *optional*): encoded like `prompt` as the
                unconditional branch; without it (and without `negative_prompt_embeds`) that branch is
                the null embedding.
            prompt_embeds, negative_prompt_embeds (`torch.Tensor` of shape `(batch, D)`, *optional*):
                used as given.

        Returns:
            `prompt_embeds` and `negative_prompt_embeds` (`None` without guidance), each with
            `batch × num_images_per_prompt` rows: pass them to `__call__` (with its default
            `num_images_per_prompt=1`) on a pipeline without text encoder.
        """
        device = device or self._execution_device
        if prompt_embeds is None:
            prompt_embeds = self._encode_text(prompt, device)
        prompt_embeds = prompt_embeds.to(device)
        batch_size = prompt_embeds.shape[0]
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            if negative_prompt is None:
                negative_prompt_embeds = self.null_condition(batch_size, device, prompt_embeds.dtype)
            else:
                if isinstance(negative_prompt, str):
                    negative_prompt = [negative_prompt] * batch_size
                negative_prompt_embeds = self._encode_text(negative_prompt, device)
        prompt_embeds = prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.to(device).repeat_interleave(num_images_per_prompt, dim=0)
        return prompt_embeds, negative_prompt_embeds

    def _encode_text(self, prompt: str | list[str], device: torch.device) -> torch.Tensor:
        """``t = f_T(prompt) / ||f_T(prompt)||``, one row per prompt."""
        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError(
                "Encoding a prompt needs `text_encoder` and `tokenizer`, and this pipeline has "
                f"{'neither' if self.text_encoder is None and self.tokenizer is None else 'only one of them'}: "
                "load it with both, or pass `prompt_embeds` (and `negative_prompt_embeds`) instead of prompts."
            )
        text_inputs = self.tokenizer(
            prompt,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        t = self.text_encoder(text_inputs.input_ids.to(device)).text_embeds
        return F.normalize(t, dim=-1)

    def encode_image(self, image, device: torch.device | None = None) -> torch.Tensor:
        """The conditions ``y = f_I(image) / ||f_I(image)||``, one row per image; a tensor ``image`` is
        taken as the feature extractor's ``pixel_values``."""
        if not isinstance(image, torch.Tensor):
            image = self.feature_extractor(image, return_tensors="pt").pixel_values
        image = image.to(device=device or self._execution_device, dtype=self.image_encoder.dtype)
        return F.normalize(self.image_encoder(image).image_embeds, dim=-1)

    def null_condition(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The unconditional branch of guidance: ``null_embedding`` (zeros if unset), ``batch_size`` rows."""
        dim = self.condition_dim
        null = torch.zeros(dim) if self.config.null_embedding is None else torch.tensor(self.config.null_embedding)
        return null.to(device=device, dtype=dtype).expand(batch_size, dim)

    def prepare_latents(self, batch_size, num_channels_latents, height, width, dtype, device, generator, latents=None):
        """Initial noise ``z_T``, scaled to the scheduler's starting sigma."""
        # `check_inputs` has checked `generator` and `latents` against this shape.
        shape = (batch_size, num_channels_latents, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        else:
            latents = latents.to(device=device, dtype=dtype)
        return latents * self.scheduler.init_noise_sigma

    def prepare_extra_step_kwargs(self, generator, eta):
        """The keywords of ``scheduler.step`` that only some schedulers take: ``eta`` (DDIM's η; others ignore
        it) and ``generator``."""
        accepted = inspect.signature(self.scheduler.step).parameters
        extra_step_kwargs = {}
        if "eta" in accepted:
            extra_step_kwargs["eta"] = eta
        if "generator" in accepted:
            extra_step_kwargs["generator"] = generator
        return extra_step_kwargs

    @staticmethod
    def _batch_size(prompt, prompt_embeds, image) -> int:
        if prompt is not None:
            return 1 if isinstance(prompt, str) else len(prompt)
        if prompt_embeds is not None:
            return prompt_embeds.shape[0]
        return 1 if isinstance(image, PIL.Image.Image) else len(image)

    def check_inputs(
        self,
        prompt,
        image,
        height,
        width,
        negative_prompt=None,
        prompt_embeds=None,
        negative_prompt_embeds=None,
        num_images_per_prompt=1,
        output_type="pil",
        callback_on_step_end_tensor_inputs=None,
        num_inference_steps=1,
        guidance_scale=1.0,
        latents=None,
        generator=None,
        timesteps=None,
        sigmas=None,
        cross_attention_kwargs=None,
    ):
        """Raises, before any model runs, on an argument of `__call__` that it cannot use, naming the
        argument, the value it got and what it takes; `height` and `width` are the sizes in pixels,
        defaults filled in."""
        if self.unet is None or self.scheduler is None:
            raise ValueError(
                "Sampling needs `unet` and `scheduler`, and this pipeline was built or loaded without "
                f"{' and '.join(n for n in ('unet', 'scheduler') if getattr(self, n) is None)}; load them, or use "
                "`encode_prompt` alone."
            )
        if output_type != "latent" and self.vae is None:
            raise ValueError(f"`output_type={output_type!r}` needs `vae` to decode; load it or pass `output_type='latent'`.")
        given = [
            name
            for name, value in (("prompt", prompt), ("prompt_embeds", prompt_embeds), ("image", image))
            if value is not None
        ]
        if len(given) != 1:
            raise ValueError(
                f"Pass exactly one of `prompt`, `prompt_embeds` or `image`; got {given or 'none of them'}."
            )
        for name, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if text is not None and not (
                isinstance(text, str) or (isinstance(text, list) and all(isinstance(p, str) for p in text))
            ):
                raise TypeError(f"`{name}` must be a string or a list of strings, got {type(text).__name__}.")
        if (prompt is not None or negative_prompt is not None) and (self.text_encoder is None or self.tokenizer is None):
            name = "prompt" if prompt is not None else "negative_prompt"
            raise ValueError(
                f"`{name}` needs `text_encoder` and `tokenizer`, which this pipeline was built or loaded without; "
                f"pass `{name.replace('prompt', 'prompt_embeds')}` (e.g. from `encode_prompt` of a pipeline that has them)."
            )
        if image is not None:
            if self.image_encoder is None or self.feature_extractor is None:
                raise ValueError(
                    "`image` needs an image encoder: pass `image_encoder` (CLIPVisionModelWithProjection) and "
                    "`feature_extractor` (CLIPImageProcessor) when building or loading the pipeline."
                )
            if not isinstance(image, (PIL.Image.Image, list, torch.Tensor)):
                raise TypeError(
                    f"`image` must be a PIL image, a list of them or a pixel tensor, got {type(image).__name__}."
                )
            if isinstance(image, torch.Tensor):
                _check_finite("image", image)
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("Pass `negative_prompt` or `negative_prompt_embeds`, not both.")

        dim = self.unet.config.encoder_hid_dim
        for name, embeds in (("prompt_embeds", prompt_embeds), ("negative_prompt_embeds", negative_prompt_embeds)):
            if embeds is not None and (
                not isinstance(embeds, torch.Tensor) or embeds.ndim != 2 or embeds.shape[1] != dim
            ):
                got = tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__
                raise ValueError(
                    f"`{name}` must be a tensor of shape (batch, {dim}) (unet.config.encoder_hid_dim), got {got}."
                )
            if embeds is not None:
                _check_finite(name, embeds)

        batch_size = self._batch_size(prompt, prompt_embeds, image)
        if batch_size == 0:
            value = {"prompt": prompt, "prompt_embeds": prompt_embeds, "image": image}[given[0]]
            got = f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else "an empty list"
            what = {"prompt": "prompt", "prompt_embeds": "row of embeddings", "image": "image"}[given[0]]
            raise ValueError(f"`{given[0]}` is empty (got {got}); pass at least one {what}.")
        negatives = {
            "negative_prompt": negative_prompt if isinstance(negative_prompt, list) else None,
            "negative_prompt_embeds": negative_prompt_embeds,
        }
        for name, negative in negatives.items():
            if negative is not None and len(negative) != batch_size:
                raise ValueError(
                    f"`{name}` has batch size {len(negative)} but `{given[0]}` has {batch_size}; "
                    f"pass one negative per prompt{' or a single string' if name == 'negative_prompt' else ''}."
                )

        factor = self.vae_scale_factor
        for name, size in (("height", height), ("width", width)):
            if not _is_int(size) or size <= 0:
                raise ValueError(
                    f"`{name}` must be a positive integer number of pixels, got {size!r}; pass a multiple of the "
                    f"VAE factor {factor} (default {self.unet.config.sample_size * factor})."
                )
            if size % factor != 0:
                raise ValueError(
                    f"`{name}` must be divisible by the VAE factor {factor}, got {size}; "
                    f"pass e.g. {size // factor * factor or factor} or {(size // factor + 1) * factor}."
                )
        if not _is_int(num_images_per_prompt) or num_images_per_prompt < 1:
            raise ValueError(
                f"`num_images_per_prompt` must be an integer of at least 1, got {num_images_per_prompt!r}; "
                "pass how many images to draw per prompt (or per image)."
            )
        if timesteps is not None and sigmas is not None:
            raise ValueError("Pass `timesteps` or `sigmas` (a custom schedule), not both.")
        for name, schedule in (("timesteps", timesteps), ("sigmas", sigmas)):
            if schedule is not None and name not in inspect.signature(self.scheduler.set_timesteps).parameters:
                raise ValueError(
                    f"`{name}` needs a scheduler whose `set_timesteps` takes custom {name}, and "
                    f"{type(self.scheduler).__name__}'s does not; use e.g. EulerDiscreteScheduler or "
                    "DPMSolverMultistepScheduler, or `num_inference_steps`."
                )
            if schedule is not None and len(schedule) == 0:
                raise ValueError(f"`{name}` is empty; pass at least one value, or `num_inference_steps`.")
        if timesteps is None and sigmas is None and (not _is_int(num_inference_steps) or num_inference_steps < 1):
            raise ValueError(
                f"`num_inference_steps` must be a positive integer, got {num_inference_steps!r}; "
                "pass the number of denoising steps (default 25)."
            )
        try:
            finite = math.isfinite(guidance_scale)
        except (TypeError, ValueError, RuntimeError):  # not a number, or a tensor of several
            finite = False
        if not finite:
            raise ValueError(
                f"`guidance_scale` must be a finite number, got {guidance_scale!r}; pass e.g. 4.0 "
                "(guidance is off at 1 or less)."
            )
        if cross_attention_kwargs is not None and not isinstance(cross_attention_kwargs, dict):
            raise TypeError(
                f"`cross_attention_kwargs` must be a dict (passed to the attention processors), "
                f"got {type(cross_attention_kwargs).__name__}."
            )

        images = batch_size * num_images_per_prompt
        if isinstance(generator, list) and len(generator) != images:
            raise ValueError(
                f"`generator` is a list of {len(generator)} generators but {images} images are requested; "
                "pass one generator per image (batch size × num_images_per_prompt)."
            )
        if latents is not None:
            shape = (images, self.unet.config.in_channels, height // factor, width // factor)
            if not isinstance(latents, torch.Tensor):
                raise TypeError(f"`latents` must be a torch.Tensor of shape {shape}, got {type(latents).__name__}.")
            if tuple(latents.shape) != shape:
                raise ValueError(
                    f"`latents` has shape {tuple(latents.shape)}, expected {shape} "
                    "(batch size × num_images_per_prompt, unet.config.in_channels, height / VAE factor, "
                    "width / VAE factor)."
                )
            _check_finite("latents", latents)
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        unknown = [k for k in callback_on_step_end_tensor_inputs or [] if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` has {unknown}, which the pipeline does not provide; "
                f"choose from {self._callback_tensor_inputs}."
            )

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        image: PIL.Image.Image | list[PIL.Image.Image] | torch.Tensor | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 25,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable[["VDLPipeline", int, int, dict], dict]
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
        callback_on_step_end_tensor_inputs: list[str] | tuple[str, ...] = ("latents",),
    ):
        r"""
        Generates images for a prompt (or variations of an image).

        Args:
            prompt (`str` or `list[str]`): what to draw. Exactly one of `prompt`, `prompt_embeds`
                and `image` is given.
            negative_prompt (`str` or `list[str]`, *optional*): encoded like `prompt`, it replaces the
                null embedding as the unconditional branch of guidance.
            prompt_embeds (`torch.Tensor` of shape `(batch, D)`, *optional*): conditions `t`, used as
                given (normalise CLIP embeddings first, as `encode_prompt` does).
            negative_prompt_embeds (`torch.Tensor` of shape `(batch, D)`, *optional*): the
                unconditional branch, used as given.
            image (PIL image, list of them, or `torch.Tensor` of CLIP pixel values, *optional*):
                condition on the normalised CLIP image embedding instead (image variations).
            height, width (`int`, *optional*): image size in pixels; default
                `unet.config.sample_size * vae_scale_factor`.
            num_inference_steps (`int`): denoising steps; ignored when `timesteps` or `sigmas` is given.
            timesteps (`list[int]`, *optional*): a custom schedule of timesteps, for schedulers whose
                `set_timesteps` takes one.
            sigmas (`list[float]`, *optional*): a custom schedule of noise levels, likewise.
            guidance_scale (`float`): classifier-free guidance weight `w` in
                `ε_uncond + w (ε_cond - ε_uncond)`; guidance is off at `w <= 1`. A callback may change
                it as `pipe._guidance_scale` (switching it on mid-run needs it on at the start).
            num_images_per_prompt (`int`): images per prompt (or per image).
            eta (`float`): DDIM's η (0 is deterministic DDIM, 1 is DDPM-like); other schedulers ignore it.
            generator (`torch.Generator` or one per image, *optional*): makes sampling reproducible.
            latents (`torch.Tensor`, *optional*): initial noise in place of a fresh draw.
            output_type (`str`): `"pil"`, `"np"`, `"pt"` or `"latent"` (undecoded latents).
            return_dict (`bool`): return an [`ImagePipelineOutput`] rather than a tuple.
            cross_attention_kwargs (`dict`, *optional*): passed to the UNet's attention processors
                (e.g. `{"scale": 0.5}` for a LoRA's weight).
            callback_on_step_end (`Callable`, `PipelineCallback` or `MultiPipelineCallbacks`, *optional*):
                called as `callback_on_step_end(self, i, timestep, callback_kwargs)` after every step;
                the tensors it returns replace the pipeline's own. Setting `pipe._interrupt = True`
                skips the remaining steps.
            callback_on_step_end_tensor_inputs (`list[str]`): which of `_callback_tensor_inputs`
                go into `callback_kwargs` (a `PipelineCallback` names its own).

        Examples:

        Returns:
            [`ImagePipelineOutput`] or `tuple`: the images (first element of the tuple when
            `return_dict=False`).
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs

        # 1. Check inputs (sizes default to the UNet's; not `height or ...`: 0 is an error, not the default)
        if self.unet is not None:
            height = self.unet.config.sample_size * self.vae_scale_factor if height is None else height
            width = self.unet.config.sample_size * self.vae_scale_factor if width is None else width
        self.check_inputs(
            prompt,
            image,
            height,
            width,
            negative_prompt,
            prompt_embeds,
            negative_prompt_embeds,
            num_images_per_prompt,
            output_type,
            callback_on_step_end_tensor_inputs,
            num_inference_steps,
            guidance_scale,
            latents,
            generator,
            timesteps,
            sigmas,
            cross_attention_kwargs,
        )
        self._guidance_scale = guidance_scale
        self._cross_attention_kwargs = cross_attention_kwargs
        self._interrupt = False

        # 2. Define call parameters
        batch_size = self._batch_size(prompt, prompt_embeds, image)
        device = self._execution_device
        dtype = self.unet.dtype

        # 3. Encode the condition t and, for guidance, the unconditional branch
        if image is not None:
            prompt_embeds = self.encode_image(image, device)
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt,
            device,
            num_images_per_prompt,
            self.do_classifier_free_guidance,
            negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
        )
        prompt_embeds = prompt_embeds.to(dtype)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.to(dtype)

        # 4. Prepare timesteps
        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device, timesteps, sigmas)
        self._num_timesteps = len(timesteps)

        # 5. Prepare latents
        latents = self.prepare_latents(
            batch_size * num_images_per_prompt,
            self.unet.config.in_channels,
            height,
            width,
            dtype,
            device,
            generator,
            latents,
        )
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)

        # 6. Denoising loop: one UNet call per step, conditional and unconditional rows batched
        for i, timestep in enumerate(self.progress_bar(timesteps)):
            if self.interrupt:
                continue
            if self.do_classifier_free_guidance:
                t = torch.cat([negative_prompt_embeds, prompt_embeds])
                z = torch.cat([latents, latents])
            else:
                t, z = prompt_embeds, latents
            z = self.scheduler.scale_model_input(z, timestep)
            noise_pred = self.unet(
                z,
                timestep,
                encoder_hidden_states=None,
                added_cond_kwargs={"image_embeds": t},
                cross_attention_kwargs=self.cross_attention_kwargs,
                return_dict=False,
            )[0]
            if self.do_classifier_free_guidance:
                noise_pred_uncond, noise_pred_cond = noise_pred.chunk(2)
                noise_pred = noise_pred_uncond + self.guidance_scale * (noise_pred_cond - noise_pred_uncond)
            latents = self.scheduler.step(noise_pred, timestep, latents, **extra_step_kwargs, return_dict=False)[0]

            if callback_on_step_end is not None:
                tensors = {
                    "latents": latents,
                    "prompt_embeds": prompt_embeds,
                    "negative_prompt_embeds": negative_prompt_embeds,
                }
                callback_kwargs = {k: tensors[k] for k in callback_on_step_end_tensor_inputs}
                callback_outputs = callback_on_step_end(self, i, timestep, callback_kwargs)
                latents = callback_outputs.pop("latents", latents)
                prompt_embeds = callback_outputs.pop("prompt_embeds", prompt_embeds)
                negative_prompt_embeds = callback_outputs.pop("negative_prompt_embeds", negative_prompt_embeds)

        # 7. Decode latents (the inverse of the trainer's encoding: shift, then scale)
        if output_type == "latent":
            images = latents
        else:
            latents = latents / self.vae.config.scaling_factor
            if getattr(self.vae.config, "shift_factor", None) is not None:
                latents = latents + self.vae.config.shift_factor
            images = self.vae.decode(latents, return_dict=False)[0]
            images = self.image_processor.postprocess(images, output_type=output_type)
        self.maybe_free_model_hooks()

        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    # Saving, loading and uploading

    def to_json_string(self) -> str:
        """``model_index.json``: it names this file with the class, ``["pipeline_vdl", "VDLPipeline"]`` (diffusers'
        convention for a pipeline whose code lies beside its weights), so that plain
        ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` finds the code; and each
        component's class as every supported transformers version has it."""
        config = json.loads(super().to_json_string())
        config["_class_name"] = [CUSTOM_PIPELINE, type(self).__name__]
        for name in self.components:
            library, class_name = config[name]
            if library is not None:
                config[name] = [library, _portable_class_name(library, class_name)]
        return json.dumps(config, indent=2, sort_keys=True) + "\n"

    @classmethod
    def _dict_from_json_file(cls, json_file: str | os.PathLike) -> dict[str, Any]:
        """Reads ``model_index.json`` for loading into this class (or a subclass) itself: the file it names
        is then not imported, so ``VDLPipeline.from_pretrained`` needs no ``trust_remote_code``."""
        config = super()._dict_from_json_file(json_file)
        if isinstance(config.get("_class_name"), list):
            config["_class_name"] = cls.__name__
        return config

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs):
        """Saves the components, and copies this file beside them so that plain diffusers loads the
        folder. With ``push_to_hub=True`` it then uploads the folder (``repo_id`` default: the folder's
        name) with a model card that says how to load it."""
        hub_kwargs = {k: kwargs.pop(k) for k in ("repo_id", "token", "private", "commit_message", "create_pr") if k in kwargs}
        save_directory = os.fspath(save_directory)
        os.makedirs(save_directory, exist_ok=True)
        shutil.copy(__file__, os.path.join(save_directory, f"{CUSTOM_PIPELINE}.py"))
        super().save_pretrained(save_directory, **kwargs)
        if push_to_hub:
            repo_id = hub_kwargs.pop("repo_id", os.path.basename(os.path.normpath(save_directory)))
            self._push_folder(save_directory, repo_id, **hub_kwargs)

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        create_pr: bool = False,
        safe_serialization: bool = True,
        variant: str | None = None,
    ) -> str:
        """Uploads the saved pipeline with a model card that says how to load it with plain diffusers
        (diffusers' own card is a template with TODO sections)."""
        with tempfile.TemporaryDirectory() as tmpdir:
            self.save_pretrained(tmpdir, safe_serialization=safe_serialization, variant=variant)
            return self._push_folder(
                tmpdir, repo_id, token=token, private=private, commit_message=commit_message, create_pr=create_pr
            )

    def _push_folder(self, folder, repo_id, token=None, private=None, commit_message=None, create_pr=False) -> str:
        """Creates ``repo_id`` if needed and uploads ``folder``, adding the Hub's card or, if the repository
        has none, ours, unless the folder has its own ``README.md`` (train.py writes one)."""
        repo_id = create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
        card_path = os.path.join(folder, "README.md")
        if not os.path.isfile(card_path):
            try:
                card = ModelCard.load(repo_id, token=token)
            except (EntryNotFoundError, RepositoryNotFoundError):
                card = ModelCard.from_template(
                    ModelCardData(library_name="diffusers", pipeline_tag="text-to-image", tags=["text-to-image", "vdl"]),
                    template_str=MODEL_CARD_TEMPLATE,
                    model_description=MODEL_DESCRIPTION.format(usage=usage(repo_id)),
                )
            card.save(card_path)
        return self._upload_folder(folder, repo_id, token=token, commit_message=commit_message, create_pr=create_pr)
