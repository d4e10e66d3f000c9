"""Trains the toy world's oracle, the attribute classifier used only for evaluation.

    python examples/toy_world/train_oracle.py                    # writes vdl_diffusion/toy/weights/oracle

Batches are drawn fresh from the world (all shape–colour combinations, so unseen ones are read
too). Noise and blur augmentations keep it accurate on VAE reconstructions and generated images.
"""

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from vdl_diffusion.files import atomic_folder
from vdl_diffusion.toy import ATTRIBUTE_NAMES, TOY_ORACLE, ToyOracle, ToyWorld

ORACLE_STREAM = 10**6  # "clip" split streams from here on feed the oracle, apart from CLIP's own steps


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, default=TOY_ORACLE, help="where save_pretrained writes the oracle")
    parser.add_argument("--seed", type=int, default=0, help="world seed and torch seed")
    parser.add_argument("--steps", type=int, default=600, help="optimisation steps (each draws a fresh batch)")
    parser.add_argument("--batch_size", type=int, default=128, help="images per step")
    parser.add_argument("--learning_rate", type=float, default=2e-3, help="peak AdamW learning rate (one-cycle)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return parser.parse_args()


def augment(pixels: torch.Tensor) -> torch.Tensor:
    """Random blur and Gaussian noise, the kinds of error a VAE or a diffusion model makes."""
    n = len(pixels)
    blurred = F.avg_pool2d(F.pad(pixels, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    mix = torch.rand(n, 1, 1, 1) * (torch.rand(n, 1, 1, 1) < 0.5)
    pixels = (1 - mix) * pixels + mix * blurred
    return pixels + torch.randn_like(pixels) * torch.rand(n, 1, 1, 1) * 0.1


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    world = ToyWorld(args.seed)
    oracle = ToyOracle()
    optimizer = torch.optim.AdamW(oracle.parameters(), lr=args.learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.learning_rate, total_steps=args.steps)
    progress = tqdm(range(args.steps), desc="oracle")
    for step in progress:
        batch = world.sample(args.batch_size, "clip", rng=ORACLE_STREAM + step)
        logits = oracle(augment(ToyOracle.to_pixels(batch.images)))
        loss = sum(F.cross_entropy(logits[a], torch.from_numpy(batch.labels[a])) for a in ATTRIBUTE_NAMES)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        progress.set_postfix(loss=f"{loss.item():.4f}")
    with atomic_folder(args.output_dir) as folder:
        oracle.save_pretrained(folder)
    print(f"saved to {args.output_dir}")


if __name__ == "__main__":
    main()
