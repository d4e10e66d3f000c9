"""Tiny, seeded stand-ins for CLIP, the VAE, the UNet and the whole pipeline: tests build them in code.

Every builder seeds its own generator state (the caller's global RNG is left untouched), so the
same ``seed`` gives the same weights in every test file, and nothing is downloaded. The CLIP folder
written by ``save_tiny_clip`` has the layout of ``openai/clip-vit-large-patch14``, so code under
test loads it with the same ``from_pretrained`` calls it uses for the real model.
"""

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTextModelWithProjection,
    CLIPVisionModelWithProjection,
)

from .models import build_unet
from .pipelines import VDLPipeline
from .tokenization import train_clip_tokenizer

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
SHAPES = ["circle", "square", "triangle", "star", "cross", "ring"]
CORPUS = [f"a {colour} {shape}" for colour in COLOURS for shape in SHAPES] + [
    f"a small {shape} on a large {other}" for shape in SHAPES for other in SHAPES
]

IMAGE_SIZE = 32  # pixels; the tiny VAE maps 32×32×3 to 8×8×4, the tiny UNet's sample size
MAX_TOKENS = 16  # the tiny text encoder's context (77 for OpenAI CLIP)


def _seeded(seed: int, build):
    """Runs ``build()`` under ``torch.manual_seed(seed)`` without disturbing the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def tiny_clip(embedding_dim: int = 16, seed: int = 0) -> dict:
    """A two-layer ``CLIPModel`` with its tokenizer and 32×32 image processor (keys ``clip``,
    ``tokenizer``, ``feature_extractor``)."""
    tokenizer = train_clip_tokenizer(CORPUS)
    tokenizer.model_max_length = MAX_TOKENS
    # projection_dim in each tower's config too, as in OpenAI's config.json: the *WithProjection
    # classes read it from there when loading a CLIPModel folder.
    tower = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, projection_dim=embedding_dim
    )
    config = CLIPConfig(
        text_config=dict(
            **tower,
            vocab_size=len(tokenizer),
            max_position_embeddings=MAX_TOKENS,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(**tower, image_size=IMAGE_SIZE, patch_size=8),
        projection_dim=embedding_dim,
    )
    feature_extractor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    clip = _seeded(seed, lambda: CLIPModel(config).eval())
    return {"clip": clip, "tokenizer": tokenizer, "feature_extractor": feature_extractor}


def tiny_clip_components(embedding_dim: int = 16, seed: int = 0) -> dict:
    """The pipeline's CLIP parts: ``tokenizer``, ``text_encoder``, ``image_encoder`` and
    ``feature_extractor``, the two towers sharing the weights of one ``tiny_clip``."""
    parts = tiny_clip(embedding_dim, seed)
    clip = parts.pop("clip")
    weights = clip.state_dict()
    encoders = {
        "text_encoder": (CLIPTextModelWithProjection(clip.config.text_config), ("text_model.", "text_projection.")),
        "image_encoder": (
            CLIPVisionModelWithProjection(clip.config.vision_config),
            ("vision_model.", "visual_projection."),
        ),
    }
    for name, (encoder, prefixes) in encoders.items():
        encoder.load_state_dict({k: v for k, v in weights.items() if k.startswith(prefixes)})
        parts[name] = encoder.eval()
    return parts


def save_tiny_clip(path, embedding_dim: int = 16, seed: int = 0) -> Path:
    """Writes a ``CLIPModel`` + ``CLIPProcessor`` folder, loadable like ``openai/clip-vit-large-patch14``
    by ``CLIPModel``, ``CLIPTokenizerFast``, ``CLIPImageProcessor`` or the ``*WithProjection`` towers."""
    parts = tiny_clip(embedding_dim, seed)
    parts["clip"].save_pretrained(path)
    CLIPProcessor(image_processor=parts["feature_extractor"], tokenizer=parts["tokenizer"]).save_pretrained(path)
    return Path(path)


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    """A three-level ``AutoencoderKL``: 32×32×3 images to 8×8×4 latents."""
    config = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=IMAGE_SIZE,
    )
    return _seeded(seed, lambda: AutoencoderKL(**config).eval())


def save_tiny_vae(path, seed: int = 0) -> Path:
    """Writes ``tiny_vae(seed)`` where ``AutoencoderKL.from_pretrained(path)`` finds it."""
    tiny_vae(seed).save_pretrained(path)
    return Path(path)


def tiny_pipeline(seed: int = 0, scheduler=None, embedding_dim: int = 16, null_embedding=None) -> VDLPipeline:
    """A complete ``VDLPipeline`` (tiny UNet, VAE and CLIP, image encoder included); ``scheduler``
    defaults to Stable Diffusion's ``DDIMScheduler`` settings."""
    unet = _seeded(seed, lambda: build_unet("tiny", embedding_dim).eval())
    return VDLPipeline(
        vae=tiny_vae(seed),
        unet=unet,
        scheduler=scheduler
        if scheduler is not None
        else DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False),
        null_embedding=null_embedding,
        **tiny_clip_components(embedding_dim, seed),
    )
