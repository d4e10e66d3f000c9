"""The Hub side of a training run: its repository, its model card and its uploads.

The repository is created when the run starts (a wrong name or token fails in seconds, not after
training); an upload that fails is retried, and a failed checkpoint upload never ends the run.
"""

import logging
import time
from pathlib import Path

from diffusers.utils.hub_utils import populate_model_card
from huggingface_hub import ModelCard, ModelCardData, create_repo, upload_folder

from .pipelines.pipeline_vdl import MODEL_CARD_TEMPLATE, usage

logger = logging.getLogger(__name__)

# Never uploaded with a pipeline: resumable states, tracker logs, half-written folders.
IGNORE_PATTERNS = ["checkpoint-*", ".checkpoint-*", "logs/*", "*.partial/*", ".pipeline*"]
UPLOAD_ATTEMPTS = 3
RETRY_DELAY_S = 10.0  # before the second attempt; doubled before each later one


def create_hub_repo(repo_id: str, token: str | None = None, private: bool | None = None) -> str:
    """Creates ``repo_id`` (or finds it) and returns its full id, ``namespace/name``."""
    try:
        return create_repo(repo_id, exist_ok=True, token=token, private=private).repo_id
    except Exception as error:
        raise RuntimeError(
            f"--push_to_hub: cannot create or open the Hub repository {repo_id!r} ({type(error).__name__}: {error}). "
            "Check --hub_model_id and your token (`hf auth login`, or --hub_token); nothing was trained."
        ) from error


def push_pipeline_to_hub(folder: Path, repo_id: str, token: str | None = None, path_in_repo: str | None = None) -> str:
    """Uploads a saved pipeline folder (or a checkpoint into ``path_in_repo``) to an existing repository.

    A failed upload is tried again ``UPLOAD_ATTEMPTS`` times in all, then its error is raised.
    """
    what = path_in_repo or "the pipeline"
    for attempt in range(1, UPLOAD_ATTEMPTS + 1):
        try:
            upload_folder(
                repo_id=repo_id, folder_path=str(folder), path_in_repo=path_in_repo, token=token,
                commit_message=f"Upload {what} (vdl-diffusion)",
                ignore_patterns=None if path_in_repo else IGNORE_PATTERNS,
            )
            return repo_id
        except Exception as error:
            if attempt == UPLOAD_ATTEMPTS:
                raise
            delay = RETRY_DELAY_S * 2 ** (attempt - 1)
            logger.warning(
                f"Uploading {what} to {repo_id} failed (attempt {attempt} of {UPLOAD_ATTEMPTS}: "
                f"{type(error).__name__}: {error}); trying again in {delay:g} s."
            )
            time.sleep(delay)


def push_checkpoint_to_hub(folder: Path, repo_id: str, token: str | None = None) -> bool:
    """Uploads a checkpoint as ``repo_id/<its name>``; if every attempt fails, warns and returns False: the
    checkpoint is on disk, so a failed upload must not end the run."""
    try:
        push_pipeline_to_hub(folder, repo_id, token=token, path_in_repo=folder.name)
        return True
    except Exception as error:
        logger.warning(
            f"{folder.name} was not uploaded to {repo_id} after {UPLOAD_ATTEMPTS} attempts ({type(error).__name__}: "
            f"{error}); training goes on, and the checkpoint stays in {folder.parent}."
        )
        return False


def save_model_card(
    args, output_dir: Path, steps: int, folder: Path | None = None, repo_id: str | None = None, num_captions: int | None = None,
    num_images: int | None = None,
) -> Path:
    """``README.md`` for the run in ``output_dir``: what was trained, on what, how, for how long, with the latest
    sample grid, and how to load it from ``repo_id`` (default: the folder).

    It is written to ``folder`` (default ``output_dir``), e.g. an export being assembled.
    """
    if args.dataset_name and hub_id(args.dataset_name):
        data = f"[{args.dataset_name}](https://huggingface.co/datasets/{args.dataset_name})"
    elif args.dataset_name or args.train_data_dir:
        data = f"the local {'dataset' if args.dataset_name else 'image folder'} `{Path(args.dataset_name or args.train_data_dir).name}`"
    else:
        data = "the built-in toy world (`vdl_diffusion.toy`)"
    data += f", {num_images} images" if num_images is not None else ""
    if args.method == "supervised":
        captions = "all (supervised: the upper bound, not VDL)"
    elif num_captions:
        captions = f"{num_captions} (`--caption_fraction {args.caption_fraction}`, semi-supervised)"
    else:
        captions = "none: unsupervised, the images' captions were never read"
    prior = f"`{args.prior}` (logit scale {args.logit_scale})" if args.method in ("vdl", "prior-sample") else "not used"
    per_step = args.train_batch_size * args.gradient_accumulation_steps
    grid = Path(output_dir, "samples", "latest.png")
    prompt = (args.validation_prompts or ["a photograph of a dog"])[0]
    description = f"""
# VDL text-to-image model

A latent diffusion UNet trained on images **without captions** with
[Variational Distribution Learning](https://arxiv.org/abs/2303.16105) (Kang et al., CVPR 2023),
using vdl-diffusion. A variational posterior inferred, for each training
image, the CLIP text embedding its missing caption would have; the UNet learned to draw images from those
embeddings, and at inference it is conditioned on the normalised CLIP text embedding of the prompt.

## How to use

{usage(repo_id or str(output_dir), prompt)}

## Training

| | |
|---|---|
| training data | {data} |
| captions read in training | {captions} |
| method | `{args.method}` |
| prior p(t \\| y) | {prior} |
| posterior q(t \\| x, y) | {f"`{args.posterior_family}`" if args.method == "vdl" else "not used"} |
| β (KL weight) | {args.beta} (warm-up {args.beta_warmup_steps} steps) |
| CLIP | {_model_link(args.pretrained_clip, "toy CLIP (shipped)")} |
| VAE | {_model_link(args.pretrained_vae or args.pretrained_model_name_or_path, "toy VAE (shipped)")}{" (its vae/)" if args.pretrained_model_name_or_path else ""} |
| UNet | {_model_link(args.pretrained_unet or args.pretrained_pipeline, f"fresh, preset `{args.unet_preset}`")} |
| resolution | {args.resolution} × {args.resolution} |
| training | {steps} steps × {per_step} images per process and step (batch {args.train_batch_size} × {args.gradient_accumulation_steps} accumulation), learning rate {args.learning_rate:g} ({args.lr_scheduler}), seed {args.seed} |
| EMA | {f"yes, decay {args.ema_decay}" if args.use_ema else "no"} |
"""
    if grid.is_file() and args.validation_prompts:
        description += (
            f"\n## Samples\n\nAt the last validation, {args.num_validation_images} sample{'s' * (args.num_validation_images != 1)} per prompt "
            f"(a row each: {', '.join(f'“{p}”' for p in args.validation_prompts)}; guidance {args.guidance_scale}):\n\n"
            "![validation samples](samples/latest.png)\n"
        )
    card = ModelCard.from_template(
        ModelCardData(
            license="apache-2.0", library_name="diffusers", pipeline_tag="text-to-image",
            base_model=hub_id(args.pretrained_clip), datasets=[args.dataset_name] if hub_id(args.dataset_name) else None,
        ),
        template_str=MODEL_CARD_TEMPLATE,
        model_description=description,
    )
    card = populate_model_card(card, tags=["text-to-image", "vdl-diffusion", "unsupervised", args.method])
    path = Path(folder or output_dir, "README.md")
    card.save(path)
    return path


def _model_link(name: str | None, default: str) -> str:
    """A Hub model as a link, a local folder by its name alone (no path of the training machine in the card)."""
    if name is None:
        return default
    return f"[{name}](https://huggingface.co/{name})" if hub_id(name) else f"the local folder `{Path(name).name}`"


def hub_id(name: str | None) -> str | None:
    """``name`` if it names a Hub repository rather than a local folder (the card's ``base_model``)."""
    return name if name and not Path(name).exists() else None
