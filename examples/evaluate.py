"""Evaluate a VDLPipeline trained on the toy world: does it draw what the prompt asks for?

    python examples/evaluate.py outputs/vdl-toy                          # 512 captions, seed 0
    python examples/evaluate.py outputs/vdl-toy --seeds 0 1 2 3 --output metrics.json
    python examples/evaluate.py outputs/vdl-toy --prompt "a red circle" --num_samples 64
    python examples/evaluate.py outputs/vdl-toy --pairs --seeds 0 1             # 40 prompts × 16 × 2

For each seed it generates one image per evaluation caption of the toy world (the captions, their
reference images and the sampling noise are fixed by the seed), reads the attributes off each
image with the world's oracle and prints, with standard errors: the accuracy per attribute (over
captions that mention it), the share of images with every mentioned attribute right (overall,
and for shape–colour pairs seen in training or held out of it), the Fréchet distance to the
reference images in the oracle's feature space, and the CLIP score. Results of several seeds are
pooled. ``--world_seed`` must be the ``--seed`` the model was trained with.

With ``--prompt`` it draws that one prompt ``--num_samples`` times instead and reports, for each
attribute the prompt names, the share of images the oracle reads as asked. With ``--pairs`` it
asks for every "a {colour} {shape}" ``--num_samples`` times (16 by default) and prints, for each pair,
the share drawn with both right, as a shape × colour table (pairs held out of training marked *).
"""

import argparse
import json
import os
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from vdl_diffusion import VDLPipeline
from vdl_diffusion.evaluation import ClipScorer, evaluate_pairs, evaluate_prompt, evaluate_toy, pairs_table, pool_estimates
from vdl_diffusion.toy import TOY_CLIP, TOY_ORACLE, ToyOracle, ToyWorld


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", help="A saved VDLPipeline folder (train.py --output_dir).")
    parser.add_argument("--world_seed", type=int, default=0, help="The toy world the model was trained on (train.py --seed).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="Sampling seeds; each draws its own captions and noise.")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--prompt", help="Evaluate this prompt alone (e.g. 'a red circle') instead of the evaluation captions.")
    what.add_argument("--pairs", action="store_true", help="Evaluate every 'a {colour} {shape}' prompt instead of the evaluation captions.")
    parser.add_argument(
        "--num_samples", type=int,
        help="Captions (one image each) per seed, 512 by default; with --prompt, images per seed (512); with --pairs, images per pair and seed (16).",
    )  # fmt: skip
    parser.add_argument("--batch_size", type=int, default=64, help="Images per pipeline call.")
    parser.add_argument("--guidance_scale", type=float, default=3.0, help="Classifier-free guidance weight.")
    parser.add_argument("--num_inference_steps", type=int, default=25, help="Denoising steps.")
    parser.add_argument("--oracle", default=str(TOY_ORACLE), help="The toy world's oracle (ToyOracle folder).")
    parser.add_argument("--clip", default=str(TOY_CLIP), help="The CLIP of the CLIP score (default: the toy CLIP).")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", type=Path, help="Also write the metrics here as JSON.")
    args = parser.parse_args(argv)
    if args.num_samples is None:
        args.num_samples = 16 if args.pairs else 512
    if args.num_samples < (1 if args.pairs or args.prompt is not None else 2):
        parser.error(f"--num_samples is too small ({args.num_samples}): at least 2 captions (a Fréchet distance needs them), or 1 image per prompt.")
    return args


def evaluate(args) -> dict:
    """The pooled metrics over ``args.seeds``, as plain dicts (value, se, n) ready for JSON."""
    pipeline = VDLPipeline.from_pretrained(args.pipeline).to(args.device)
    oracle = ToyOracle.from_pretrained(args.oracle).to(args.device)
    sampling = dict(
        num_samples=args.num_samples, batch_size=args.batch_size, guidance_scale=args.guidance_scale,
        num_inference_steps=args.num_inference_steps,
    )  # fmt: skip
    if args.prompt is not None:
        runs = [evaluate_prompt(pipeline, oracle, args.prompt, seed=seed, **sampling) for seed in args.seeds]
    elif args.pairs:
        runs = [evaluate_pairs(pipeline, ToyWorld(args.world_seed), oracle, seed=seed, **sampling) for seed in args.seeds]
    else:
        clip = ClipScorer.from_pretrained(args.clip, device=args.device)
        world = ToyWorld(args.world_seed)
        runs = [evaluate_toy(pipeline, world, oracle, clip, seed=seed, **sampling) for seed in args.seeds]
    return {name: asdict(estimate) for name, estimate in pool_estimates(runs).items()}


def main(argv=None):
    args = parse_args(argv)
    metrics = evaluate(args)
    what = f"images of {args.prompt!r}" if args.prompt is not None else "images of each pair" if args.pairs else "captions"
    print(f"\n{args.pipeline}: {len(args.seeds)} seed(s) × {args.num_samples} {what}")
    if args.pairs:
        print(pairs_table({name: m["value"] for name, m in metrics.items()}, ToyWorld(args.world_seed)))
    for name, m in metrics.items():
        if name.endswith("_accuracy") or not args.pairs:
            print(f"  {name:<28s} {m['value']:8.4f} ± {m['se']:.4f}   (n = {m['n']})")
    if args.output:
        settings = {k: v for k, v in vars(args).items() if k != "output"}
        args.output.write_text(json.dumps({"settings": settings, "metrics": metrics}, indent=2))
        print(f"Wrote {args.output}")


if __name__ == "__main__":
    main()
