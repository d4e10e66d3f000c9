"""Train a text-to-image latent diffusion model on images without captions (VDL, CVPR 2023).

A frozen CLIP embeds each image as ``y``; the posterior ``q(t | x, y)`` samples the hidden text
embedding ``t̃`` that conditions the UNet; the loss is the negative ELBO
``L_diff(z0, t̃) + β · KL(q || p(t | y)) / n_latent`` (vdl_diffusion/objective.py). At the end the
UNet is exported as a ``VDLPipeline`` that is prompted with real CLIP text embeddings.

With no arguments it trains on the built-in toy world (shipped CLIP and VAE, no download):

    make toy                                                     # the same, set up, resumed if interrupted
    GOMP_SPINCOUNT=1000 accelerate launch train.py               # one CPU (the spin count: see busy_machine_warning) or one GPU
    accelerate launch --num_processes 2 train.py ...             # several processes / GPUs (DDP)
    accelerate launch --multi_gpu --num_machines 2 --machine_rank 0 \\
        --main_process_ip 10.0.0.1 --main_process_port 29500 --num_processes 16 train.py ...   # nodes
    accelerate launch --config_file examples/accelerate/deepspeed_zero2.yaml train.py ...   # DeepSpeed
    accelerate launch --config_file examples/accelerate/fsdp.yaml train.py ...              # FSDP

On real data:

    accelerate launch train.py --train_data_dir ./my_images --pretrained_clip openai/clip-vit-large-patch14 \\
        --pretrained_vae stabilityai/sd-vae-ft-mse --resolution 256 --unet_preset base \\
        --train_batch_size 32 --mixed_precision bf16 --output_dir vdl-model --push_to_hub
"""

import argparse
import functools
import importlib.util
import json
import logging
import math
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, DistributedType, DistributedDataParallelKwargs, ProjectConfiguration, gather_object, set_seed
from diffusers import UNet2DConditionModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from diffusers.utils import make_image_grid
from huggingface_hub import constants as hub_constants
from tqdm.auto import tqdm

# vdl_diffusion.cache loads .encoders first, which resolves CLIPImageProcessor without transformers' torchvision warning.
from vdl_diffusion.cache import build_or_load_cache
from vdl_diffusion.checkpoints import find_checkpoint, is_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from vdl_diffusion.conditioning import METHODS
from vdl_diffusion.data import INTERPOLATION_MODES, is_saved_dataset, load_image_dataset, write_skipped
from vdl_diffusion.e_step import balance_choice, e_step, kl_from_prior, write_choice
from vdl_diffusion.encoders import FrozenEncoders
from vdl_diffusion.files import atomic_folder, locked, publish_entries
from vdl_diffusion.hub import create_hub_repo, push_checkpoint_to_hub, push_pipeline_to_hub, save_model_card
from vdl_diffusion.models import PRESET_LEARNING_RATES, UNET_PRESETS, build_noise_scheduler, build_sampling_scheduler, build_unet
from vdl_diffusion.objective import ELBO, beta_at
from vdl_diffusion.pipelines import VDLPipeline
from vdl_diffusion.posterior import FAMILIES, BankMixturePosterior, TextEmbeddingPosterior
from vdl_diffusion.priors import PRIORS, LearnedPrior, TextBankPrior, build_prior, estimate_text_cone
from vdl_diffusion.text_bank import load_texts, with_bank_candidates
from vdl_diffusion.toy import TOY_CLIP, TOY_VAE, ToyWorld, as_dataset

logger = get_logger(__name__)

DEFAULT_MAX_TRAIN_STEPS = 6000  # the toy world's default run (README, "Quick start")
TOY_VALIDATION_PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow ring"]
FUSED_ADAMW_DEVICES = ("cpu", "cuda")  # where every torch >= 2.6 has the fused AdamW kernel


def _number(kind, accept, requirement: str):
    """An argparse ``type`` for finite numbers meeting ``requirement``: argparse then names the flag in the error."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'}, got {text!r}") from None
        if not (math.isfinite(value) and accept(value)):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value

    return parse


positive_int = _number(int, lambda v: v > 0, "> 0")
non_negative_int = _number(int, lambda v: v >= 0, "≥ 0")
positive_float = _number(float, lambda v: v > 0, "> 0")
non_negative_float = _number(float, lambda v: v >= 0, "≥ 0")
probability = _number(float, lambda v: 0 <= v < 1, "in [0, 1)")
unit_interval = _number(float, lambda v: 0 <= v <= 1, "in [0, 1]")
# A number of steps, or a fraction of the run below 1 (as transformers' TrainingArguments take eval_steps).
step_or_fraction = _number(float, lambda v: 0 < v < 1 or v >= 1 and v.is_integer(), "a whole number of steps or a fraction of the run in (0, 1)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data (default: the toy world's training images, without captions)")
    g.add_argument("--dataset_name", help="A Hugging Face Hub dataset of images, or a folder written by datasets' save_to_disk.")
    g.add_argument("--toy_train_images", type=positive_int, default=20000, help="Size of the toy world's training split (the default data).")
    g.add_argument(
        "--toy_world_seed", type=int,
        help="The toy world to train on (default: --seed). With it, other --seed values retrain the same world from other initial "
        "weights, data order and noise, which is how far retraining alone moves a figure.",
    )
    g.add_argument("--dataset_config_name", help="The dataset's configuration, if it has several.")
    g.add_argument("--train_data_dir", help="A local image folder (datasets' imagefolder layout).")
    g.add_argument("--image_column", default="image", help="Column holding the images.")
    g.add_argument("--caption_column", help="Column holding captions; only for --method supervised or --caption_fraction > 0.")
    g.add_argument("--caption_fraction", type=unit_interval, default=0.0, help="Share of images whose caption training may see (semi-supervised).")
    g.add_argument("--resolution", type=positive_int, default=32, help="Training images are resized and cropped to this size.")
    g.add_argument(
        "--image_interpolation_mode", default="bilinear", choices=sorted(INTERPOLATION_MODES),
        help="The filter that resizes training images (diffusers' scripts default to lanczos).",
    )
    g.add_argument("--center_crop", action="store_true", help="Center-crop instead of random-crop.")
    g.add_argument("--random_flip", action="store_true", help="Flip images horizontally at random.")
    g.add_argument("--max_train_samples", type=positive_int, help="Use only the first N images (debugging, quick runs).")
    g.add_argument(
        "--embedding_cache_dir", default=os.path.join(hub_constants.HF_HOME, "vdl-diffusion"),
        help="Where encoded latents and CLIP embeddings are cached, and the toy world's images saved (default: $HF_HOME/vdl-diffusion, "
        "beside the Hugging Face caches: %(default)s).",
    )
    g.add_argument(
        "--streaming", action="store_true",
        help="Stream --dataset_name (datasets' streaming=True) instead of downloading it first: the embedding cache is built in one "
        "pass as the images arrive, and a killed build resumes from its finished shards.",
    )
    g.add_argument("--no_cache", action="store_true", help="Run the frozen encoders in every step (nothing is written beside the images).")
    g.add_argument("--cache_in_memory", action="store_true", help="Hold the embedding cache in RAM if it fits in half the available memory (logged); else it stays memory-mapped.")
    g.add_argument("--dataloader_num_workers", type=non_negative_int, default=0, help="Data loader worker processes.")

    g = p.add_argument_group("models")
    g.add_argument("--pretrained_clip", help="A CLIP with projection heads (e.g. openai/clip-vit-large-patch14); default: the toy CLIP.")
    g.add_argument(
        "--pretrained_model_name_or_path",
        help="A Stable Diffusion-layout repository (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5): its vae/ is the VAE. "
        "Nothing else is read from it (its UNet and text encoder do not take a pooled CLIP embedding).",
    )
    g.add_argument("--pretrained_vae", help="An AutoencoderKL, alone (e.g. stabilityai/sd-vae-ft-mse) or in a pipeline's vae/; default: the toy VAE.")
    g.add_argument("--unet_preset", default="tiny", choices=sorted(UNET_PRESETS), help="Size of a fresh UNet (tiny fits the toy world's 10-minute CPU budget).")
    g.add_argument("--pretrained_unet", help="Start from this UNet2DConditionModel instead of a fresh one.")
    g.add_argument("--pretrained_pipeline", help="Continue from a saved VDLPipeline (its UNet, posterior and prior).")
    g.add_argument("--revision", help="Hub revision of the pretrained models.")
    g.add_argument(
        "--non_ema_revision",
        help="With --use_ema and --pretrained_unet/--pretrained_pipeline: the Hub revision whose UNet weights are trained "
        "(the EMA starts from --revision's).",
    )
    g.add_argument("--variant", help="Variant of the diffusers weight files to load (e.g. fp16): the VAE's; CLIP checkpoints have none.")
    g.add_argument("--cache_dir", help="Where models and datasets downloaded from the Hub are stored (default: the Hub's cache).")

    g = p.add_argument_group("method (METHOD.md)")
    g.add_argument("--method", default="vdl", choices=METHODS, help="What conditions the UNet in training.")
    g.add_argument("--prior", default="clip", choices=PRIORS, help="The prior p(t | y).")
    g.add_argument(
        "--prior_texts",
        help="Unpaired texts (never captions of the training images) for the clip-gap and text-bank priors: a UTF-8 file, one a line, "
        "or DATASET:COLUMN (default: the toy world's generic prompts for clip-gap, 4000 captions of its CLIP split for text-bank).",
    )
    g.add_argument("--logit_scale", type=positive_float, default=100.0, help="CLIP's logit scale s, the clip prior's concentration.")
    g.add_argument(
        "--bank_concentration", type=positive_float,
        help="κ_b of the text-bank prior's vMF around each text (default: samples at cosine 0.99 to their text, ≈3100 at D = 64).",
    )
    g.add_argument("--bank_top_k", type=positive_int, default=64, help="The text-bank prior's candidates per image (π is the softmax over them).")
    g.add_argument(
        "--posterior_family", default="power_spherical", choices=FAMILIES,
        help="The posterior's family; bank_mixture reweighs the text-bank prior's candidates.",
    )
    g.add_argument("--posterior_hidden_dim", type=positive_int, default=512, help="Width of the posterior MLP.")
    g.add_argument(
        "--posterior_samples", type=positive_int, default=1,
        help="Draws of t per image for the bank_mixture posterior. 1: its weights learn through a straight-through "
        "Gumbel-softmax; S > 1: through the exact score-function gradient with a leave-one-out baseline, the S draws "
        "sharing noise and timestep (the UNet then sees S x --train_batch_size rows per step).",
    )
    g.add_argument(
        "--e_step_at", type=step_or_fraction,
        help="With --prior text-bank: once, after this many steps (or this fraction of the run, if below 1), the UNet (frozen) "
        "weighs each image's candidates by their diffusion loss at the timesteps that decide the layout, and the run draws "
        "its conditions from those weights from then on (an E-step, vdl_diffusion/e_step.py; docs/text_bank.md). Costs "
        "about --e_step_draws × --bank_top_k forward passes per image.",
    )
    g.add_argument("--e_step_beta", type=positive_float, default=0.05, help="β of the E-step's weights w ∝ π exp(-n_latent · L / β).")
    g.add_argument("--e_step_draws", type=positive_int, default=4, help="(timestep, noise) draws per image in the E-step, shared by its candidates.")
    g.add_argument("--e_step_min_timestep", type=non_negative_int, default=800, help="The E-step's draws are at timesteps from this one.")
    g.add_argument(
        "--e_step_balance", type=_number(float, lambda v: 0 < v <= 1, "in (0, 1]"), nargs="?", const=1.0, metavar="STRENGTH",
        help="Scale each bank text's chosen weight, over all images, back towards its total under the prior (all the way without a "
        "value, a fraction of the way with one): the E-step then moves texts to the images they fit without using texts that say "
        "more more often (vdl_diffusion/e_step.py `balance`; docs/text_bank.md).",
    )
    g.add_argument(
        "--bank_choice",
        help="With --prior text-bank: draw the conditions from an E-step's choice from the first step, so a fresh model trains on "
        "a judge's choice (two stages, docs/text_bank.md). A judge run's --output_dir (see --stop_after_e_step) or its "
        "e_step/choice-stepN.npy; the judge must have used the same cache and --bank_top_k.",
    )
    g.add_argument(
        "--stop_after_e_step", action="store_true",
        help="End the run with its E-step (--e_step_at) and export the UNet as it is there: a judge, whose choice a run with "
        "--bank_choice trains a fresh model on.",
    )
    g.add_argument("--beta", type=non_negative_float, default=1.0, help="Weight of the KL term.")
    g.add_argument("--beta_warmup_steps", type=non_negative_int, default=0, help="Linear warm-up of beta from 0 over this many steps.")
    g.add_argument("--caption_weight", type=non_negative_float, default=1.0, help="λ on -log q(t* | x, y) for captioned images.")
    g.add_argument("--p_uncond", type=probability, default=0.1, help="Probability of the null condition (classifier-free guidance).")
    g.add_argument("--learn_null_embedding", action="store_true", help="Learn the null embedding instead of zeros.")
    g.add_argument("--lafite_xi", type=unit_interval, default=0.75, help="Noise level ξ of the lafite baseline.")

    g = p.add_argument_group("optimisation")
    g.add_argument("--train_batch_size", type=positive_int, default=32, help="Batch size per process.")
    g.add_argument("--gradient_accumulation_steps", type=positive_int, default=1, help="Steps to accumulate before an update.")
    g.add_argument(
        "--max_train_steps", type=positive_int,
        help=f"Total optimisation steps; overrides --num_train_epochs, as in diffusers' scripts (default {DEFAULT_MAX_TRAIN_STEPS} if neither is given).",
    )
    g.add_argument("--num_train_epochs", type=positive_int, help="Train for this many epochs, unless --max_train_steps is given.")
    g.add_argument(
        "--learning_rate", type=positive_float,
        help=f"Peak learning rate. Default: the --unet_preset's ({', '.join(f'{k} {v:g}' for k, v in PRESET_LEARNING_RATES.items())}); "
        "set it when fine-tuning a pretrained UNet.",
    )
    g.add_argument("--scale_lr", action="store_true", help="Multiply the learning rate by processes × batch × accumulation.")
    g.add_argument("--lr_scheduler", default="cosine", help="constant, constant_with_warmup, linear, cosine, ...")
    g.add_argument("--lr_warmup_steps", type=non_negative_int, default=100, help="Learning-rate warm-up steps.")
    g.add_argument("--adam_beta1", type=probability, default=0.9, help="AdamW β1.")
    g.add_argument("--adam_beta2", type=probability, default=0.999, help="AdamW β2.")
    g.add_argument("--adam_weight_decay", type=non_negative_float, default=1e-2, help="AdamW weight decay.")
    g.add_argument("--adam_epsilon", type=positive_float, default=1e-8, help="AdamW ε.")
    g.add_argument("--use_8bit_adam", action="store_true", help="bitsandbytes' 8-bit AdamW (pip install vdl-diffusion[bitsandbytes]; GPU).")
    g.add_argument("--max_grad_norm", type=positive_float, default=1.0, help="Gradient clipping norm.")
    g.add_argument("--prediction_type", default="epsilon", choices=["epsilon", "v_prediction"], help="The UNet's target.")
    g.add_argument("--snr_gamma", type=non_negative_float, default=5.0, help="Min-SNR-γ loss weighting (Hang et al. 2023), which converges in far fewer steps; 0 turns it off.")
    g.add_argument("--noise_offset", type=non_negative_float, default=0.0, help="Noise offset (0.05 is common).")
    g.add_argument("--use_ema", action="store_true", help="Keep an EMA of the UNet, used for validation and export.")
    g.add_argument("--ema_decay", type=probability, default=0.999, help="Decay of the UNet's EMA (with --use_ema).")
    g.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], help="Overrides the accelerate config.")
    g.add_argument("--gradient_checkpointing", action="store_true", help="Trade compute for memory in the UNet.")
    g.add_argument("--enable_xformers_memory_efficient_attention", action="store_true", help="xformers attention (pip install vdl-diffusion[xformers]).")
    g.add_argument("--allow_tf32", action="store_true", help="TF32 matmuls on Ampere+ GPUs.")
    g.add_argument("--seed", type=int, default=0, help="Seed for exact reproducibility and resume.")

    g = p.add_argument_group("checkpoints and outputs")
    g.add_argument("--output_dir", default="outputs/vdl-toy", help="Where the pipeline, checkpoints and samples go.")
    g.add_argument("--checkpointing_steps", type=positive_int, default=1000, help="Save a resumable checkpoint every N steps.")
    g.add_argument(
        "--checkpoints_total_limit", type=non_negative_int, default=2,
        help="Keep at most this many checkpoints, the newest (default 2: the last, and one more should it be damaged); 0 keeps every one.",
    )
    g.add_argument("--resume_from_checkpoint", help="'latest' (in --output_dir) or a checkpoint folder.")
    g.add_argument(
        "--validation_prompts", nargs="*",
        help=f"Prompts sampled at each validation; the flag alone: no validation (default: {', '.join(TOY_VALIDATION_PROMPTS)} on the toy world, none on other data).",
    )
    g.add_argument("--validation_steps", type=positive_int, default=1000, help="Sample the validation prompts every N steps.")
    g.add_argument("--validation_epochs", type=positive_int, help="Also sample them at the end of every N-th epoch.")
    g.add_argument("--num_validation_images", type=positive_int, default=4, help="Images per validation prompt.")
    g.add_argument("--guidance_scale", type=non_negative_float, default=3.0, help="Guidance for validation samples.")
    g.add_argument("--logging_steps", type=positive_int, default=10, help="Log (and check the loss is finite) every N steps.")
    g.add_argument("--report_to", help="tensorboard, wandb, all or none (default: tensorboard if installed, else none).")
    g.add_argument("--logging_dir", default="logs", help="Tracker logs, under --output_dir.")
    g.add_argument("--tracker_project_name", default="vdl-diffusion", help="The project name passed to the trackers (e.g. wandb's project).")
    g.add_argument("--push_to_hub", action="store_true", help="Upload the final pipeline and a model card; the repository is created first, before training.")
    g.add_argument("--hub_model_id", help="Hub repository (default: the output folder's name).")
    g.add_argument("--hub_token", help="Hub token (default: the saved login).")
    g.add_argument("--push_checkpoints", action="store_true", help="Also upload checkpoints to the Hub as they are written (a failed upload is retried, then skipped).")
    args = p.parse_args(argv)
    check_args(p, args)
    return args


def check_args(parser, args):
    """Fail before any model loads on flags that cannot work together."""
    if args.max_train_steps is None and args.num_train_epochs is None:
        args.max_train_steps = DEFAULT_MAX_TRAIN_STEPS  # otherwise main() counts it from the epochs, once the data is known
    if args.dataset_name and args.train_data_dir:
        parser.error("Give --dataset_name or --train_data_dir, not both.")
    if args.streaming and args.no_cache:
        parser.error("--streaming reads the stream once, into the embedding cache: drop --no_cache.")
    needs_captions = args.method == "supervised" or args.caption_fraction > 0 or args.prior == "learned"
    toy_world = not (args.dataset_name or args.train_data_dir)
    if args.toy_world_seed is not None and not toy_world:
        parser.error("--toy_world_seed picks the toy world to train on: drop it with --dataset_name or --train_data_dir.")
    if args.toy_world_seed is None:
        args.toy_world_seed = args.seed
    if needs_captions and not args.caption_column:
        if toy_world:
            args.caption_column = "text"  # the toy world's dataset stores its captions there
        else:
            parser.error(f"--method {args.method} / --caption_fraction / --prior learned need captions: pass --caption_column.")
    if args.method == "supervised":
        if args.caption_fraction not in (0, 1):
            parser.error("--method supervised uses every caption: leave --caption_fraction at 0 or set it to 1.")
        args.caption_fraction = 1.0
    if args.prior == "learned" and args.method != "supervised" and args.caption_fraction == 0:
        parser.error("--prior learned is fitted on captioned images: set --caption_fraction > 0.")
    if args.pretrained_unet and args.pretrained_pipeline:
        parser.error("Give --pretrained_unet or --pretrained_pipeline, not both.")
    if args.resolution % 8:
        parser.error(f"--resolution must be a multiple of 8, got {args.resolution}.")
    if args.mixed_precision == "fp16" and not torch.accelerator.is_available():
        parser.error("--mixed_precision fp16 needs a GPU; on the CPU use bf16 or no.")
    for flag in ("pretrained_clip", "pretrained_model_name_or_path", "pretrained_vae", "pretrained_unet", "pretrained_pipeline", "dataset_name"):
        name = getattr(args, flag)
        if name and not Path(name).exists() and _looks_like_a_path(name):
            example = "user/my-images" if flag == "dataset_name" else "openai/clip-vit-large-patch14"
            parser.error(f"--{flag} {name}: no such folder (a Hub {'dataset' if flag == 'dataset_name' else 'model'} is named like '{example}').")
    if args.pretrained_model_name_or_path and args.pretrained_vae:
        parser.error("--pretrained_model_name_or_path supplies only the VAE (its vae/): give it or --pretrained_vae, not both.")
    if args.non_ema_revision and not (args.use_ema and (args.pretrained_unet or args.pretrained_pipeline)):
        parser.error("--non_ema_revision applies to a pretrained UNet trained with an EMA: add --use_ema and --pretrained_unet or --pretrained_pipeline.")
    if args.use_8bit_adam and importlib.util.find_spec("bitsandbytes") is None:
        parser.error("--use_8bit_adam needs bitsandbytes: pip install vdl-diffusion[bitsandbytes] (or pip install bitsandbytes).")
    if args.validation_prompts is None:
        args.validation_prompts = list(TOY_VALIDATION_PROMPTS) if toy_world else []
    if args.train_data_dir and not Path(args.train_data_dir).exists():
        parser.error(f"--train_data_dir {args.train_data_dir}: no such folder.")
    if args.prior_texts and ":" not in args.prior_texts and not Path(args.prior_texts).exists():
        parser.error(f"--prior_texts {args.prior_texts}: no such file (or give DATASET:COLUMN).")
    if args.prior in ("clip-gap", "text-bank") and not toy_world and not args.prior_texts:
        parser.error(f"--prior {args.prior} on your data needs unpaired texts of its domain: pass --prior_texts FILE (one a line) "
                     "or DATASET:COLUMN; the built-in texts describe the toy world.")  # fmt: skip
    if args.method == "vdl" and args.posterior_family == "bank_mixture" and args.prior != "text-bank":
        parser.error("--posterior_family bank_mixture reweighs the text-bank prior's candidates: add --prior text-bank.")
    if args.posterior_samples > 1 and (args.method != "vdl" or args.posterior_family != "bank_mixture"):
        parser.error("--posterior_samples > 1 trains the bank-mixture posterior: use it with --method vdl --posterior_family bank_mixture.")
    if args.method == "vdl" and args.posterior_family == "gaussian" and args.prior == "text-bank":
        parser.error("--posterior_family gaussian lives in R^D, the text-bank prior on the sphere: use power_spherical or bank_mixture.")
    if args.e_step_at and (args.prior != "text-bank" or args.method not in ("vdl", "prior-sample") or args.no_cache):
        parser.error("--e_step_at reweighs the text-bank prior's candidates of each cached image: use it with --prior text-bank, "
                     "--method vdl or prior-sample, and without --no_cache.")  # fmt: skip
    if args.bank_choice and (args.prior != "text-bank" or args.method not in ("vdl", "prior-sample") or args.no_cache or args.e_step_at):
        parser.error("--bank_choice replaces the text-bank prior's weights of each cached image by an E-step's: use it with --prior "
                     "text-bank, --method vdl or prior-sample, without --no_cache, and without --e_step_at (which makes its own).")  # fmt: skip
    if args.stop_after_e_step and not args.e_step_at:
        parser.error("--stop_after_e_step ends the run with its E-step: add --e_step_at STEP.")
    if args.bank_choice:
        args.bank_choice = str(e_step_choice(args.bank_choice, parser))
        if Path(args.output_dir).resolve() in Path(args.bank_choice).resolve().parents:
            parser.error(f"--bank_choice {args.bank_choice} is this run's own --output_dir: it would resume the judge's checkpoint "
                         "and write over the judge. Give the fresh run another --output_dir.")  # fmt: skip
    if args.e_step_balance and not args.e_step_at:
        parser.error("--e_step_balance balances the E-step's choice: add --e_step_at STEP.")
    if args.e_step_at and args.max_train_steps and args.e_step_at >= args.max_train_steps:
        parser.error(f"--e_step_at {args.e_step_at:g} is not before the run's end (--max_train_steps {args.max_train_steps}): choose an earlier step.")
    if args.e_step_min_timestep >= (timesteps := build_noise_scheduler(args.prediction_type).config.num_train_timesteps):
        parser.error(f"--e_step_min_timestep must be below the scheduler's {timesteps} timesteps, got {args.e_step_min_timestep}.")
    if args.resume_from_checkpoint not in (None, "latest") and not is_checkpoint(Path(args.resume_from_checkpoint)):
        parser.error(f"--resume_from_checkpoint {args.resume_from_checkpoint} is not a complete checkpoint (no training_state.json): "
                     "pass a checkpoint-N folder or 'latest'.")  # fmt: skip
    if args.learning_rate is None:
        args.learning_rate = PRESET_LEARNING_RATES[args.unet_preset]
    if args.report_to is None:
        args.report_to = "tensorboard" if importlib.util.find_spec("tensorboard") else "none"
    if args.push_to_hub and args.hub_token and args.report_to in ("wandb", "all"):
        parser.error("--hub_token with --report_to wandb would expose the token: log in with `hf auth login` instead.")


def _looks_like_a_path(name: str) -> bool:
    """A Hub id is ``name`` or ``org/name``; anything else given to a model flag was meant as a folder."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


# The flags that decide what a checkpoint's tensors are: a resumed run must keep them.
MODEL_FLAGS = (
    "method", "prior", "prior_texts", "logit_scale", "bank_concentration", "bank_top_k", "posterior_family",
    "posterior_hidden_dim", "unet_preset", "pretrained_unet", "pretrained_pipeline", "pretrained_clip",
    "pretrained_vae", "pretrained_model_name_or_path", "resolution", "learn_null_embedding", "use_ema",
)


def check_resume_flags(args, checkpoint: Path | None) -> None:
    """Fails before anything loads when ``checkpoint``'s run was trained with other model flags (its
    ``training_args.json``), instead of deep in loading its state or, worse, training on silently."""
    saved = checkpoint.parent / "training_args.json" if checkpoint is not None else None
    if saved is None or not saved.is_file():
        return
    trained = json.loads(saved.read_text())
    changed = [flag for flag in MODEL_FLAGS if flag in trained and trained[flag] != getattr(args, flag, None)]
    if changed:
        was = " ".join(f"--{flag} {trained[flag]}" for flag in changed)
        now = " ".join(f"--{flag} {getattr(args, flag)}" for flag in changed)
        raise SystemExit(
            f"{checkpoint} was trained with {was}; this command asks for {now}. Resume with the run's own flags, "
            f"or train anew: another --output_dir, or without --resume_from_checkpoint."
        )


def public_args(args) -> dict:
    """The run's flags as written to ``training_args.json`` and the trackers: never the Hub token."""
    return {key: value for key, value in vars(args).items() if key != "hub_token"}


def main(args):
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        # Processes started by torchrun (accelerate launch --multi_gpu) on a machine without an accelerator
        # would each train alone; make them a CPU process group (gloo) instead.
        cpu=int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available(),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=output_dir, logging_dir=output_dir / args.logging_dir),
        # The data order depends on (seed, epoch) alone, so a resumed run sees the same batches.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        # A learned prior gets gradients only from captioned images, absent from some batches.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=args.prior == "learned")],
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logger.info(accelerator.state, main_process_only=False)
    if warning := busy_machine_warning(*cpu_load()):
        logger.warning(warning)
    # The Hub repository first: a wrong name or token fails now, not after training.
    repo_id = create_hub_repo(args.hub_model_id or output_dir.name, token=args.hub_token) if args.push_to_hub and accelerator.is_main_process else None
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    # No per-step argument checks in the distributions' hot path: a diverging run is caught by the
    # non-finite loss check below, which names the step and keeps the last good checkpoint.
    torch.distributions.Distribution.set_default_validate_args(False)
    set_seed(args.seed)  # the same on every process: identical initial weights and data order
    checkpoint = find_checkpoint(args.resume_from_checkpoint, output_dir)
    check_resume_flags(args, checkpoint)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "training_args.json").write_text(json.dumps(public_args(args), indent=2))

    # Frozen encoders: CLIP (f_I, f_T) and the VAE. They run once per image to fill the cache.
    encoders = FrozenEncoders.from_pretrained(
        args.pretrained_clip or TOY_CLIP, args.pretrained_vae or args.pretrained_model_name_or_path or TOY_VAE,
        vae_subfolder="vae" if args.pretrained_model_name_or_path else None, **hub_kwargs(args),
    )
    encoders.to(accelerator.device)

    # Data: images (and captions only where the method may see them), encoded once into the cache.
    dataset, skipped = load_image_dataset(
        dataset_name=args.dataset_name or (None if args.train_data_dir else str(toy_train_dataset(accelerator, args))),
        dataset_config_name=args.dataset_config_name,
        train_data_dir=args.train_data_dir,
        image_column=args.image_column,
        caption_column=args.caption_column,
        max_train_samples=args.max_train_samples,
        cache_dir=args.cache_dir,
        streaming=args.streaming,
    )
    train_dataset = build_or_load_cache(
        accelerator, dataset, encoders, args.embedding_cache_dir, resolution=args.resolution, image_column=args.image_column,
        center_crop=args.center_crop, random_flip=args.random_flip, caption_column=args.caption_column,
        caption_fraction=args.caption_fraction, seed=args.seed, num_workers=args.dataloader_num_workers,
        no_cache=args.no_cache, interpolation=args.image_interpolation_mode,
    )
    if args.streaming:  # a stream's images are checked as its cache is built
        skipped = train_dataset.skipped
    logger.info(f"{len(train_dataset)} training images; {len(skipped)} could not be decoded and are skipped.")
    if accelerator.is_main_process:
        write_skipped(skipped, output_dir)
    if args.cache_in_memory and not args.no_cache:
        train_dataset.load_into_memory()  # logs whether the cache fits
    num_captions = train_dataset.num_captions
    if args.caption_fraction > 0:
        logger.info(
            f"Training reads the captions of {num_captions} of {len(train_dataset)} images ({num_captions / len(train_dataset):.1%}; "
            f"--caption_fraction {args.caption_fraction} of those that have one)."
        )

    # The generator p_θ(x | t), the posterior q_φ(t | x, y) and the prior p(t | y).
    unet, posterior, prior = build_models(args, encoders)
    train_dataset = with_bank_candidates(train_dataset, prior, accelerator.device)  # the text-bank prior's top-k per image
    noise_scheduler = build_noise_scheduler(args.prediction_type)
    elbo = ELBO(
        unet, noise_scheduler, method=args.method, posterior=posterior, prior=prior, p_uncond=args.p_uncond,
        learn_null_embedding=args.learn_null_embedding, lafite_xi=args.lafite_xi, caption_weight=args.caption_weight,
        snr_gamma=args.snr_gamma or None, noise_offset=args.noise_offset, captions=num_captions > 0,
        posterior_samples=args.posterior_samples,
    )
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if args.enable_xformers_memory_efficient_attention:
        unet.enable_xformers_memory_efficient_attention()
    ema_unet = EMAModel(unet.parameters(), decay=args.ema_decay, model_cls=UNet2DConditionModel, model_config=unet.config) if args.use_ema else None
    if args.non_ema_revision:  # the EMA holds --revision's weights; the trained UNet starts from these
        unet.load_state_dict(load_pretrained_unet(args, revision=args.non_ema_revision).state_dict())

    total_batch_size = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    if args.scale_lr:
        args.learning_rate *= total_batch_size
    optimizer = adamw(args.use_8bit_adam, accelerator.device)(
        [p for p in elbo.parameters() if p.requires_grad], lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay, eps=args.adam_epsilon,
    )
    train_dataloader = torch.utils.data.DataLoader(
        train_dataset, batch_size=args.train_batch_size, shuffle=True, drop_last=True,
        num_workers=args.dataloader_num_workers, pin_memory=accelerator.device.type == "cuda",
        # Its own generator: starting an epoch's iterator must not draw from the training RNG, or a
        # resumed run (which starts one mid-epoch) would draw different noise from then on.
        generator=torch.Generator().manual_seed(args.seed),
    )
    if len(train_dataloader) == 0:
        raise ValueError(f"{len(train_dataset)} images are fewer than one batch of {args.train_batch_size}: lower --train_batch_size.")
    updates_per_epoch = math.ceil(len(train_dataloader) / accelerator.num_processes / args.gradient_accumulation_steps)
    if args.max_train_steps is None:  # as in diffusers' scripts, steps win over epochs
        args.max_train_steps = args.num_train_epochs * updates_per_epoch
    elif args.num_train_epochs:
        logger.info(f"--max_train_steps {args.max_train_steps} is given, so --num_train_epochs {args.num_train_epochs} is not used.")
    lr_scheduler = get_scheduler(
        args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )
    elbo, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(elbo, optimizer, train_dataloader, lr_scheduler)
    updates_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)  # now per process
    num_epochs = math.ceil(args.max_train_steps / updates_per_epoch)
    e_step_at = args.e_step_at and (round(args.e_step_at * args.max_train_steps) if args.e_step_at < 1 else int(args.e_step_at))
    if e_step_at is not None and not 0 < e_step_at < args.max_train_steps:
        raise ValueError(f"--e_step_at {args.e_step_at:g} is step {e_step_at} of a run of {args.max_train_steps}: choose a step inside the run.")
    if ema_unet is not None:
        ema_unet.to(accelerator.device)
    if accelerator.is_main_process:
        config = {k: str(v) if isinstance(v, list) else v for k, v in public_args(args).items()}
        accelerator.init_trackers(args.tracker_project_name, config={**config, "num_images": len(train_dataset), "num_captions": num_captions})
    set_seed(args.seed, device_specific=True)  # from here on, each process draws its own noise

    global_step, first_epoch, skip_batches, e_step_file = 0, 0, 0, None
    if args.bank_choice:
        train_dataset.use_choice(args.bank_choice, accelerator.device)
        kl = kl_from_prior(train_dataset, train_dataset.chosen_logits.cpu().numpy())
        logger.info(f"Conditions come from the E-step's choice {args.bank_choice} (KL(w || π) = {kl:.3f} nats per image).")
    if checkpoint is not None:
        state = load_checkpoint(accelerator, checkpoint, ema_unet)
        global_step, e_step_file = state["global_step"], state.get("e_step_file")
        if e_step_file:  # the run made its E-step before this checkpoint: its conditions come from that choice
            if not (output_dir / e_step_file).is_file():
                raise FileNotFoundError(
                    f"{checkpoint} was trained on the E-step's choice {output_dir / e_step_file}, which is missing: restore it "
                    "(it is written beside the checkpoints), or resume from a checkpoint before the E-step."
                )
            train_dataset.use_choice(output_dir / e_step_file, accelerator.device)
        if state.get("max_train_steps", args.max_train_steps) != args.max_train_steps and args.lr_scheduler != "constant":
            logger.warning(
                f"{checkpoint} was trained towards {state['max_train_steps']} steps, this run towards {args.max_train_steps}: "
                f"the {args.lr_scheduler} schedule's horizon moves, so the result is not that of a straight run."
            )
        first_epoch = global_step // updates_per_epoch
        skip_batches = (global_step % updates_per_epoch) * args.gradient_accumulation_steps
        logger.info(f"Resumed from {checkpoint} at step {global_step}.")

    logger.info(
        f"Training {args.method} ({args.prior} prior) for {args.max_train_steps} steps: {len(train_dataset)} images, "
        f"batch {args.train_batch_size} × {accelerator.num_processes} processes × {args.gradient_accumulation_steps} "
        f"accumulation = {total_batch_size}."
    )
    progress = tqdm(range(args.max_train_steps), initial=global_step, desc="Steps", disable=not accelerator.is_local_main_process)
    first_nonfinite = torch.tensor(-1, device=accelerator.device)
    window_start, window_steps = time.perf_counter(), 0
    for epoch in range(first_epoch, num_epochs):
        if global_step >= args.max_train_steps or (e_step_file and args.stop_after_e_step):  # resumed at the end: only the export is left
            break
        elbo.train()
        train_dataloader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(train_dataloader, skip_batches) if epoch == first_epoch else train_dataloader
        for batch in batches:
            if global_step == e_step_at and e_step_file is None:
                e_step_file = choose_candidates(args, accelerator, elbo, ema_unet, train_dataset, global_step)
                # A checkpoint that knows the choice: a run killed from here on does not score the candidates again.
                save_checkpoint(accelerator, output_dir, training_state(args, global_step, e_step_file), ema_unet, args.checkpoints_total_limit)
            if e_step_file and args.stop_after_e_step:
                break
            with accelerator.accumulate(elbo):
                batch = train_dataset.prepare_batch(batch, encoders)  # flip choice; encoders run here without a cache
                beta = beta_at(global_step, args.beta, args.beta_warmup_steps)
                loss, logs = elbo(batch, beta=beta)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(elbo.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            # Record the first non-finite loss without a host sync; it is checked when we log or save.
            first_nonfinite = torch.where((first_nonfinite < 0) & ~torch.isfinite(loss.detach()), global_step + 1, first_nonfinite)
            if not accelerator.sync_gradients:
                continue
            global_step += 1
            window_steps += 1
            progress.update(1)
            if ema_unet is not None:
                ema_unet.step(accelerator.unwrap_model(elbo).unet.parameters())

            done = global_step >= args.max_train_steps
            if global_step % args.logging_steps == 0 or done or global_step % args.checkpointing_steps == 0:
                stop_if_nonfinite(accelerator, first_nonfinite, output_dir)
                values = torch.stack([torch.as_tensor(v, device=accelerator.device, dtype=torch.float32) for v in logs.values()])
                logs = dict(zip(logs, accelerator.reduce(values, "mean").tolist()))  # one collective, one sync
                elapsed = time.perf_counter() - window_start
                logs.update(lr=lr_scheduler.get_last_lr()[0], images_per_s=window_steps * total_batch_size / elapsed)
                window_start, window_steps = time.perf_counter(), 0
                progress.set_postfix({k: f"{logs[k]:.4g}" for k in ("loss", "kl", "cos_t_y", "images_per_s") if k in logs})
                accelerator.log(logs, step=global_step)
            if global_step % args.checkpointing_steps == 0 or done:
                saved = save_checkpoint(accelerator, output_dir, training_state(args, global_step, e_step_file), ema_unet, args.checkpoints_total_limit)
                if args.push_to_hub and args.push_checkpoints and accelerator.is_main_process:
                    push_checkpoint_to_hub(saved, repo_id, token=args.hub_token)  # retried, then skipped with a warning
            if args.validation_prompts and (global_step % args.validation_steps == 0 or done) and accelerator.is_main_process:
                validate(args, accelerator, elbo, ema_unet, encoders, global_step)
            if done:
                break
        end_of_epoch_validation = args.validation_epochs and (epoch + 1) % args.validation_epochs == 0
        if end_of_epoch_validation and args.validation_prompts and global_step < args.max_train_steps and accelerator.is_main_process:
            validate(args, accelerator, elbo, ema_unet, encoders, global_step)
    progress.close()  # its last line before the export's log, not after the run's summary

    accelerator.wait_for_everyone()
    check_replicas_in_sync(accelerator, elbo)
    if accelerator.is_main_process:
        export_pipeline(
            accelerator.unwrap_model(elbo), ema_unet, encoders, args, global_step, repo_id=repo_id,
            num_images=len(train_dataset), num_captions=num_captions,
        )
        if args.push_to_hub:
            push_pipeline_to_hub(output_dir, repo_id, token=args.hub_token)
            logger.info(f"Uploaded it to https://huggingface.co/{repo_id}.")
        logger.info(run_summary(args, global_step, e_step_file))
    accelerator.wait_for_everyone()
    accelerator.end_training()


def e_step_choice(given: str, parser) -> Path:
    """--bank_choice's file: itself, or the one choice a judge run's --output_dir holds."""
    if (path := Path(given)).is_file():
        return path
    choices = sorted(path.glob("e_step/choice-step*.npy"))
    if len(choices) != 1:
        found = f"it holds {len(choices)} ({', '.join(c.name for c in choices)})" if choices else "no such folder" if not path.is_dir() else "it holds none"
        parser.error(f"--bank_choice {given}: give a run's e_step/choice-stepN.npy, or the --output_dir of a run with one E-step; {found}.")
    return choices[0]


def training_state(args, global_step: int, e_step_file: str | None) -> dict:
    """What a checkpoint records beside the weights: where the run is, towards what, and the E-step's choice if made."""
    return {"global_step": global_step, "max_train_steps": args.max_train_steps, "e_step_file": e_step_file}


@torch.no_grad()
def choose_candidates(args, accelerator, elbo, ema_unet, train_dataset, step) -> str:
    """The E-step (`vdl_diffusion.e_step`): the UNet as it is now (its EMA, if any) weighs every image's candidates,
    split over the processes; the choice is written to ``e_step/choice-step{step}.npy`` in --output_dir and
    every process's batches take it from the next one on. Returns that path, relative to --output_dir (it goes
    into checkpoints)."""
    model = accelerator.unwrap_model(elbo)
    logger.info(
        f"E-step at step {step}: the UNet scores each of {len(train_dataset)} images' top-{args.bank_top_k} candidates over "
        f"{args.e_step_draws} draws at timesteps ≥ {args.e_step_min_timestep}, β = {args.e_step_beta:g}{f', balanced ({args.e_step_balance:g})' if args.e_step_balance else ''}."
    )
    generator = torch.Generator(accelerator.device).manual_seed(args.seed + accelerator.process_index)
    model.eval()
    with accelerator.split_between_processes(list(range(len(train_dataset)))) as rows, ema_weights(ema_unet, model.unet), accelerator.autocast():
        log_w = e_step(
            model.unet, model.scheduler, train_dataset, model.prior.bank, rows, draws=args.e_step_draws,
            min_timestep=args.e_step_min_timestep, beta=args.e_step_beta, snr_gamma=args.snr_gamma or None,
            generator=generator,
        )
    parts = gather_object([(rows, log_w)])
    name = f"e_step/choice-step{step:06d}.npy"
    if accelerator.is_main_process:
        choice = np.empty_like(log_w, shape=(len(train_dataset), log_w.shape[1]))
        for part_rows, part in parts:
            choice[part_rows] = part
        if args.e_step_balance:
            choice = balance_choice(train_dataset, choice, args.e_step_balance)
        (Path(args.output_dir) / "e_step").mkdir(exist_ok=True)
        write_choice(Path(args.output_dir) / name, train_dataset, choice)
        logger.info(f"E-step done: KL(w || π) = {kl_from_prior(train_dataset, choice):.3f} nats per image; conditions come from {name} from now on.")
    accelerator.wait_for_everyone()
    train_dataset.use_choice(Path(args.output_dir) / name, accelerator.device)
    model.train()
    return name


def export_pipeline(model, ema_unet, encoders, args, step, **card):
    """The VDLPipeline with ``posterior/``, ``prior/`` and a model card (``card``: `save_model_card`'s
    keywords) in --output_dir.

    Assembled in a hidden folder and moved in with ``model_index.json`` last: a kill or a full disk
    leaves the previous export or none that loads, never a mix of the two.
    """
    output_dir = Path(args.output_dir)
    partial = output_dir / ".pipeline.partial"
    shutil.rmtree(partial, ignore_errors=True)
    with ema_weights(ema_unet, model.unet):
        build_pipeline(model, encoders, args).save_pretrained(partial)
    for name, part in (("posterior", model.posterior), ("prior", model.prior)):
        if part is not None:
            part.save_pretrained(partial / name)
    save_model_card(args, output_dir, step, folder=partial, **card)
    previous = output_dir / "model_index.json"
    stale = [k for k in json.loads(previous.read_text()) if not k.startswith("_")] if previous.is_file() else []
    publish_entries(partial, output_dir, "model_index.json", stale=[*stale, "posterior", "prior", "README.md"])


def build_models(args, encoders):
    """UNet, posterior and prior: fresh, or continued from a saved UNet or VDLPipeline."""
    embedding_dim, feature_dim = encoders.embedding_dim, encoders.feature_dim
    source = args.pretrained_pipeline
    if source or args.pretrained_unet:
        unet = load_pretrained_unet(args, args.revision)
    else:
        unet = build_unet(
            args.unet_preset, embedding_dim, latent_channels=encoders.vae.config.latent_channels,
            sample_size=args.resolution // encoders.vae_scale_factor,
        )
    if unet.config.encoder_hid_dim != embedding_dim:
        raise ValueError(
            f"The UNet takes {unet.config.encoder_hid_dim}-wide conditions but the CLIP embeds in {embedding_dim} dimensions: "
            "use a UNet trained with this CLIP, or a fresh one (--unet_preset)."
        )

    prior = None
    if args.method in ("vdl", "prior-sample") or args.prior == "learned":
        if args.prior == "learned":
            prior = saved_part(LearnedPrior, source, "prior", args)
        if prior is None and args.prior == "text-bank":
            texts = load_texts(args.prior_texts) if args.prior_texts else ToyWorld(args.toy_world_seed).text_corpus()
            prior = TextBankPrior.from_texts(
                texts, encoders.encode_text, logit_scale=args.logit_scale, concentration=args.bank_concentration, top_k=args.bank_top_k
            )
            logger.info(f"Text bank of {len(texts)} unpaired texts ({len(prior.bank)} distinct): κ_b = {prior.concentration:.0f}, top-{args.bank_top_k}.")
        if prior is None:
            text_cone = None
            if args.prior == "clip-gap":
                texts = load_texts(args.prior_texts) if args.prior_texts else ToyWorld(args.toy_world_seed).prior_texts()
                text_cone = estimate_text_cone(texts, encoders.tokenizer, encoders.text_encoder)
                logger.info(f"Text cone from {len(texts)} unpaired texts: κ_T = {text_cone[1]:.1f}.")
            prior = build_prior(args.prior, embedding_dim, logit_scale=args.logit_scale, text_cone=text_cone)

    posterior = None
    if args.method == "vdl" and args.posterior_family == "bank_mixture":
        posterior = saved_part(BankMixturePosterior, source, "posterior", args) or BankMixturePosterior(
            embedding_dim, feature_dim, hidden_dim=args.posterior_hidden_dim
        )
    elif args.method == "vdl":
        # κ_φ barely moves in training (Adam steps its softplus by about the learning rate), so it starts at
        # the prior's scale: CLIP's s, or a bank text's κ_b.
        posterior = saved_part(TextEmbeddingPosterior, source, "posterior", args) or TextEmbeddingPosterior(
            embedding_dim, feature_dim, hidden_dim=args.posterior_hidden_dim, family=args.posterior_family,
            init_concentration=prior.concentration if isinstance(prior, TextBankPrior) else args.logit_scale,
        )
    return unet, posterior, prior


def saved_part(cls, source, subfolder, args):
    """``cls`` from ``source/subfolder`` (a folder or Hub repo written by train.py), or None if it holds none."""
    if not source:
        return None
    try:
        saved_class = cls.load_config(source, subfolder=subfolder, revision=args.revision, cache_dir=args.cache_dir).get("_class_name")
    except OSError:
        saved_class = None
    if saved_class != cls.__name__:
        logger.info(f"{source} has no {cls.__name__} in {subfolder}/ (found {saved_class}): starting a fresh one.")
        return None
    return cls.from_pretrained(source, subfolder=subfolder, revision=args.revision, cache_dir=args.cache_dir)


def hub_kwargs(args) -> dict:
    """What every ``from_pretrained`` of a diffusers model takes from the command line."""
    return {"revision": args.revision, "cache_dir": args.cache_dir, "variant": args.variant}


def load_pretrained_unet(args, revision: str | None) -> UNet2DConditionModel:
    """The UNet of --pretrained_pipeline (its unet/) or --pretrained_unet, at ``revision``."""
    source, subfolder = (args.pretrained_pipeline, "unet") if args.pretrained_pipeline else (args.pretrained_unet, None)
    return UNet2DConditionModel.from_pretrained(source, subfolder=subfolder, **{**hub_kwargs(args), "revision": revision})


def adamw(use_8bit_adam: bool, device: torch.device):
    """The AdamW class to build: bitsandbytes' 8-bit one (same arguments, states in 8 bits, its own kernels), or torch's,
    fused where torch has the kernel (CPU, CUDA): one kernel over all parameters and no host read of the step
    counters, 1.05× a tiny UNet's step on the CPU (docs/performance.md)."""
    if use_8bit_adam:
        import bitsandbytes

        return bitsandbytes.optim.AdamW8bit
    if device.type in FUSED_ADAMW_DEVICES:
        return functools.partial(torch.optim.AdamW, fused=True)
    return torch.optim.AdamW


def validate(args, accelerator, elbo, ema_unet, encoders, step):
    """Samples the validation prompts with the current (EMA) weights; see `log_validation`."""
    model = accelerator.unwrap_model(elbo)
    with ema_weights(ema_unet, model.unet):
        log_validation(args, accelerator, build_pipeline(model, encoders, args), step)


def toy_train_dataset(accelerator, args) -> Path:
    """The toy world's training images as a dataset saved to disk (`as_dataset`), built once; returns its folder.

    No captions are read unless a method needs them. The folder is named by the world's fingerprint
    and size; the lock makes a second run that needs it wait for the first one's, not rebuild it.
    """
    world = ToyWorld(args.toy_world_seed)
    folder = Path(args.embedding_cache_dir, f"toy-world-{world.fingerprint()}-{args.toy_train_images}")
    if accelerator.is_main_process:
        with locked(folder):
            if not is_saved_dataset(folder):
                logger.info(f"Drawing the toy world's {args.toy_train_images} training images into {folder} (once).")
                with atomic_folder(folder) as partial:
                    as_dataset(world, args.toy_train_images, split="train").save_to_disk(partial)
    accelerator.wait_for_everyone()
    return folder


def cpu_load() -> tuple[float, int, bool]:
    """The 1-minute load average, the number of cores this process may use and whether OpenMP's waiting is
    set (``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY``): `busy_machine_warning`'s inputs."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return load, cores, "GOMP_SPINCOUNT" in os.environ or "OMP_WAIT_POLICY" in os.environ


def busy_machine_warning(load: float, cores: int, wait_is_set: bool) -> str | None:
    """What to say when other processes compete for the run's cores (a load average above their number); None otherwise.

    Threads that spin long while they wait (libgomp's default) then burn their time slices waiting for a
    descheduled partner at every op's barrier: steps take many times longer (examples/busy_machine.py).
    """
    if load <= cores:
        return None
    advice = "" if wait_is_set else (
        " Launch with GOMP_SPINCOUNT=1000 (the Makefile sets it): waiting OpenMP threads then spin briefly and sleep, "
        "which on a busy machine makes steps several times faster (examples/busy_machine.py)."
    )
    return (
        f"The 1-minute load average is {load:.1f}, above the {cores} cores this run may use: other processes share them, "
        f"so steps are slower than on an idle machine.{advice}"
    )


def run_summary(args, step: int, e_step_file: str | None = None) -> str:
    """The end of the log: where the pipeline, its latest sample grid, the checkpoints and a judge's choice are, and how to
    load the pipeline."""
    folder = Path(args.output_dir).resolve()
    grid, checkpoints = folder / "samples" / "latest.png", list_checkpoints(folder)
    prompt = args.validation_prompts[0] if args.validation_prompts else "a photo of a dog"
    return "\n".join([
        f"Done after {step} steps.",
        f"  pipeline:    {folder}",
        *([f"  samples:     {grid}"] if grid.is_file() else []),
        *([f"  checkpoints: {checkpoints[-1]} (the run resumes from it with --resume_from_checkpoint latest)"] if checkpoints else []),
        *([f"  E-step:      {folder / e_step_file} (a fresh run trains on it with --bank_choice {folder})"] if e_step_file and args.stop_after_e_step else []),
        "Load the pipeline and generate an image:",
        "  from vdl_diffusion import VDLPipeline",
        f"  pipe = VDLPipeline.from_pretrained({str(folder)!r})",
        f"  pipe({prompt!r}).images[0].save('sample.png')",
    ])  # fmt: skip


def stop_if_nonfinite(accelerator, first_nonfinite, output_dir):
    step = accelerator.reduce(first_nonfinite, "max").item()
    if step >= 0:
        done = list_checkpoints(output_dir)
        last = f"the last good checkpoint is {done[-1]}" if done else "no checkpoint was written"
        raise RuntimeError(
            f"The loss became non-finite at step {step}; {last}. Lower --learning_rate, set --max_grad_norm, "
            "or use --mixed_precision bf16 instead of fp16."
        )


def check_replicas_in_sync(accelerator, model):
    """Every process must end with the same weights; a checksum per process shows they do."""
    checksum = sum(p.detach().double().sum() for p in accelerator.unwrap_model(model).parameters())
    checksums = accelerator.gather(checksum.reshape(1).to(accelerator.device)).tolist()
    logger.info(f"Weight checksum per process: {checksums}")
    if accelerator.distributed_type in (DistributedType.MULTI_GPU, DistributedType.MULTI_CPU) and len(set(checksums)) > 1:
        raise RuntimeError(f"Processes ended with different weights (checksums {checksums}); the run is not synchronised.")


@contextmanager
def ema_weights(ema, unet):
    """Within the block, ``unet`` holds the EMA weights (if there is an EMA); restored afterwards."""
    if ema is None:
        yield
        return
    ema.store(unet.parameters())
    ema.copy_to(unet.parameters())
    try:
        yield
    finally:
        ema.restore(unet.parameters())


def build_pipeline(model, encoders, args):
    """A ``VDLPipeline`` around the trained UNet and the frozen CLIP and VAE."""
    null = model.null_embedding.detach().float().cpu().tolist() if args.learn_null_embedding else None
    return VDLPipeline(
        vae=encoders.vae,
        unet=model.unet,
        scheduler=build_sampling_scheduler(model.scheduler),
        tokenizer=encoders.tokenizer,
        text_encoder=encoders.text_encoder,
        image_encoder=encoders.image_encoder,
        feature_extractor=encoders.feature_extractor,
        null_embedding=null,
    )


@torch.no_grad()
def log_validation(args, accelerator, pipeline, step):
    """Sample the validation prompts; save a PNG grid (a row per prompt) and log it to the trackers."""
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator(device=accelerator.device).manual_seed(args.seed)
    images = pipeline(
        args.validation_prompts, num_images_per_prompt=args.num_validation_images, guidance_scale=args.guidance_scale,
        generator=generator, output_type="pil",
    ).images
    grid = make_image_grid(images, rows=len(args.validation_prompts), cols=args.num_validation_images)
    samples = Path(args.output_dir, "samples")
    samples.mkdir(parents=True, exist_ok=True)
    grid.save(samples / f"step-{step:06d}.png")
    grid.save(samples / "latest.png")
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image("validation", np.asarray(grid), step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"validation": [wandb.Image(grid, caption=" | ".join(args.validation_prompts))]}, step=step)


if __name__ == "__main__":
    main(parse_args())
