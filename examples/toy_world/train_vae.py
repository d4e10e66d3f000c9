"""Trains the toy world's VAE: a stock diffusers ``AutoencoderKL`` from 32×32×3 images to 8×8×4 latents.

    python examples/toy_world/train_vae.py                       # writes vdl_diffusion/toy/weights/vae

Three encoder blocks (two downsamplings) give ``vae_scale_factor`` 4. The loss is pixel MSE plus a
small KL, as Stable Diffusion's KL-f8 without its perceptual and adversarial terms (flat-coloured
shapes need neither). After training, ``scaling_factor`` is set to 1 / std of the latents, as SD
did, so scaled latents have unit variance for the diffusion model.
"""

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from tqdm.auto import tqdm

from vdl_diffusion.files import atomic_folder
from vdl_diffusion.toy import TOY_VAE, ToyWorld

VAE_STREAM = 2 * 10**6  # "clip" split streams from here on feed the VAE, apart from CLIP's and the oracle's


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, default=TOY_VAE, help="where save_pretrained writes the VAE")
    parser.add_argument("--seed", type=int, default=0, help="world seed and torch seed")
    parser.add_argument("--steps", type=int, default=2000, help="optimisation steps (each draws a fresh batch)")
    parser.add_argument("--batch_size", type=int, default=32, help="images per step")
    parser.add_argument("--learning_rate", type=float, default=1.5e-3, help="peak AdamW learning rate (one-cycle)")
    parser.add_argument("--kl_weight", type=float, default=1e-6, help="weight of the KL to N(0, I) per latent element")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return parser.parse_args()


def build_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=32,
    )


def pixels_of(images) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    world = ToyWorld(args.seed)
    vae = build_vae()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.learning_rate, total_steps=args.steps)
    progress = tqdm(range(args.steps), desc="vae")
    for step in progress:
        x = pixels_of(world.sample(args.batch_size, "clip", rng=VAE_STREAM + step).images)
        posterior = vae.encode(x).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        mse = F.mse_loss(reconstruction, x)
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        loss = mse + args.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        progress.set_postfix(mse=f"{mse.item():.5f}", kl=f"{kl.item():.1f}")

    with torch.no_grad():
        x = pixels_of(world.sample(1024, "clip", rng=VAE_STREAM - 1).images)
        std = vae.encode(x).latent_dist.sample().std().item()
    vae.register_to_config(scaling_factor=1.0 / std)
    with atomic_folder(args.output_dir) as folder:
        vae.save_pretrained(folder)
    print(f"latent std {std:.4f}, scaling_factor {1.0 / std:.4f}; saved to {args.output_dir}")


if __name__ == "__main__":
    main()
