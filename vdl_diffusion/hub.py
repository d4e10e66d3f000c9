"""Model cards and uploads for trained pipelines, through diffusers' and huggingface_hub's own helpers."""

from pathlib import Path

from diffusers.utils.hub_utils import MODEL_CARD_TEMPLATE_PATH, populate_model_card
from huggingface_hub import ModelCard, ModelCardData, create_repo, upload_folder

# Never uploaded with a pipeline: resumable states, tracker logs, half-written folders.
IGNORE_PATTERNS = ["checkpoint-*", ".checkpoint-*", "logs/*", "*.partial/*", ".pipeline*"]


def save_model_card(args, output_dir: Path, steps: int, folder: Path | None = None) -> Path:
    """``README.md`` for the run in ``output_dir``: what was trained, on what, how, with the latest sample grid.

    It is written to ``folder`` (default ``output_dir``), e.g. an export being assembled.
    """
    data = args.dataset_name or args.train_data_dir or "the built-in toy world (vdl_diffusion.toy), without captions"
    grid = Path(output_dir, "samples", "latest.png")
    description = f"""
# VDL text-to-image model

A latent diffusion UNet trained on images **without captions** with
[Variational Distribution Learning](https://arxiv.org/abs/2303.16105) (Kang et al., CVPR 2023),
using vdl-diffusion. At inference it is conditioned on the normalised CLIP text embedding of the prompt.

| | |
|---|---|
| training data | {data} |
| CLIP | {args.pretrained_clip or "toy CLIP (shipped)"} |
| VAE | {args.pretrained_vae or "toy VAE (shipped)"} |
| method | `{args.method}` |
| prior | `{args.prior}` (logit scale {args.logit_scale}) |
| posterior | `{args.posterior_family}` |
| β (KL weight) | {args.beta} (warm-up {args.beta_warmup_steps} steps) |
| caption fraction | {args.caption_fraction} |
| steps × batch | {steps} × {args.train_batch_size} per process |
| resolution | {args.resolution} |

```python
from vdl_diffusion import VDLPipeline

pipe = VDLPipeline.from_pretrained("{args.hub_model_id or Path(output_dir).name}")
image = pipe("{(args.validation_prompts or ["a red circle"])[0]}").images[0]
```
"""
    if grid.is_file():
        description += f"\n![samples for {', '.join(args.validation_prompts)}](samples/latest.png)\n"
    # diffusers' training-card template, filled locally: the card exists before (and without) any upload.
    card = ModelCard.from_template(
        ModelCardData(license="apache-2.0", library_name="diffusers", inference=True, base_model=hub_id(args.pretrained_clip)),
        template_path=MODEL_CARD_TEMPLATE_PATH,
        model_description=description,
    )
    card = populate_model_card(card, tags=["text-to-image", "vdl-diffusion", "unsupervised", args.method])
    path = Path(folder or output_dir, "README.md")
    card.save(path)
    return path


def hub_id(name: str | None) -> str | None:
    """``name`` if it names a Hub repository rather than a local folder (the card's ``base_model``)."""
    return name if name and not Path(name).exists() else None


def push_pipeline_to_hub(folder: Path, repo_id: str, token: str | None = None, path_in_repo: str | None = None) -> str:
    """Upload a saved pipeline folder (or a checkpoint into ``path_in_repo``); returns the repo id."""
    repo_id = create_repo(repo_id, exist_ok=True, token=token).repo_id
    upload_folder(
        repo_id=repo_id, folder_path=str(folder), path_in_repo=path_in_repo, token=token,
        commit_message=f"Upload {path_in_repo or 'pipeline'} (vdl-diffusion)",
        ignore_patterns=None if path_in_repo else IGNORE_PATTERNS,
    )
    return repo_id
