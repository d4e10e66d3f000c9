"""Which β makes train.py's objective the ELBO? Measured on a trained toy-world pipeline.

    python examples/elbo_scale.py outputs/vdl-toy

train.py minimises ``L_diff + β · KL / n_latent`` (METHOD.md), ``L_diff`` the (Min-SNR weighted) mean
squared error per latent dimension. The ELBO's diffusion term, ``-log p(z0 | t)`` in nats per
dimension, weighs the same errors differently over the timesteps, so β = 1 is the ELBO only where the
two agree. This prints their ratio on the toy world's training images, conditioned on their CLIP
embeddings ``y``, and ``β = 1 / ratio``, the weight at which the KL has its share of the ELBO.
The run's loss weighting and world come from the ``training_args.json`` that train.py writes.
"""

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from vdl_diffusion import VDLPipeline
from vdl_diffusion.encoders import FrozenEncoders
from vdl_diffusion.models import build_noise_scheduler
from vdl_diffusion.objective import elbo_scale
from vdl_diffusion.toy import ToyWorld


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", type=Path, help="A VDLPipeline folder that train.py wrote (its --output_dir).")
    parser.add_argument("--num_images", type=int, default=64, help="Training images of the toy world to average over.")
    args = parser.parse_args(argv)
    if not (args.pipeline / "training_args.json").is_file():
        parser.error(f"{args.pipeline} has no training_args.json: pass the --output_dir of a train.py run.")
    if args.num_images < 1:
        parser.error(f"--num_images must be at least 1, got {args.num_images}.")
    return args


def main(argv=None):
    args = parse_args(argv)
    run = json.loads((args.pipeline / "training_args.json").read_text())
    pipe = VDLPipeline.from_pretrained(args.pipeline)
    encoders = FrozenEncoders(pipe.vae, pipe.image_encoder, pipe.text_encoder, pipe.tokenizer, pipe.feature_extractor)
    images = ToyWorld(run["seed"]).sample(args.num_images, "train", rng=0).images
    encoded = encoders.encode_images(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1)
    scheduler = build_noise_scheduler(run["prediction_type"])
    torch.manual_seed(0)
    scale = elbo_scale(pipe.unet.eval(), scheduler, encoded["latents"], encoded["y"], run["snr_gamma"] or None)
    print(f"{args.pipeline}: the ELBO's diffusion term is {scale:.0f} × L_diff; β = {1 / scale:.4f} gives the KL its ELBO share.")


if __name__ == "__main__":
    main()
