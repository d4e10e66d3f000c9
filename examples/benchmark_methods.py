"""The toy-world benchmark: does VDL draw what captions ask for, having never seen a caption?

Trains every method of METHOD.md with the same budget, seed and UNet (``accelerate launch
train.py``, one run after another), evaluates each on the toy world's evaluation captions, and
writes ``results.md`` (the tables), ``results.json`` (every number) and ``samples.png`` (the same
prompts for each method, a row per method) to ``--output_dir``:

    python examples/benchmark_methods.py                                   # the full benchmark
    python examples/benchmark_methods.py --max_train_steps 20 --methods image vdl \\
        --caption_fractions --seeds 0 --num_samples 64 --output_dir /tmp/bench     # a smoke test
    python examples/benchmark_methods.py --extra_train_args "--prior clip-gap --beta 0.5"

Methods: ``supervised`` (trained on real captions: the upper bound), ``image`` (conditioned on
the image embedding y), ``lafite`` (y with noise), ``prior-sample`` (t ~ p(t | y)) and ``vdl``
(t ~ q(t | x, y)); then the semi-supervised setting: ``vdl`` that may see a fraction of the
captions (``--caption_fractions``; 0 is the ``vdl`` run itself).

Each run lives in ``--output_dir/runs/<name>``; a run whose pipeline is saved is not trained
again, one whose metrics are saved is not evaluated again, and a training that was stopped resumes
from its last checkpoint: rerun the same command to continue a long benchmark.
"""

import argparse
import json
import math
import os
import shlex
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from PIL import Image, ImageDraw

from vdl_diffusion import VDLPipeline
from vdl_diffusion.conditioning import METHODS
from vdl_diffusion.evaluation import ClipScorer, evaluate_pairs, evaluate_toy, generate, pairs_table, pool_estimates
from vdl_diffusion.toy import ATTRIBUTE_NAMES, TOY_ORACLE, ToyOracle, ToyWorld

TRAIN_SCRIPT = Path(__file__).resolve().parents[1] / "train.py"
DEFAULT_METHODS = ["supervised", "image", "lafite", "prior-sample", "vdl"]
DESCRIPTIONS = {
    "supervised": "real captions (upper bound)",
    "image": "image embedding y",
    "lafite": "y + noise (LAFITE)",
    "prior-sample": "t ~ p(t \\| y)",  # "\\|": a "|" that does not end the Markdown table cell
    "vdl": "t ~ q(t \\| x, y) (VDL)",
}
GRID_PROMPTS = [
    "a red circle",
    "a blue square",
    "a small green triangle in the top left",
    "a large yellow ring on a black background",
    "a purple cross against white",
]
GRID_SCALE = 3  # 32×32 samples are upscaled (nearest) for the PNG


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = parser.add_argument_group("what to compare")
    g.add_argument("--methods", nargs="*", default=DEFAULT_METHODS, choices=METHODS, help="Methods to train, in table order.")
    g.add_argument("--caption_fractions", nargs="*", type=float, default=[0.0, 0.01, 0.1], help="Caption fractions of the semi-supervised vdl runs (none: skip them).")
    g.add_argument("--output_dir", type=Path, default=Path("outputs/benchmark"), help="Runs, tables and samples go here.")

    g = parser.add_argument_group("training budget (the same for every run)")
    g.add_argument("--max_train_steps", type=int, default=6000, help="Optimisation steps per run.")
    g.add_argument("--train_batch_size", type=int, default=32, help="Batch size per run.")
    g.add_argument("--unet_preset", default="tiny", help="UNet size (vdl_diffusion.models.UNET_PRESETS).")
    g.add_argument("--seed", type=int, default=0, help="Training seed, which is also the toy world's seed.")
    g.add_argument("--extra_train_args", default="", help='More train.py flags for every run, e.g. "--beta 0.5 --prior clip-gap".')

    g = parser.add_argument_group("evaluation")
    g.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="Sampling seeds; each draws its own captions and noise.")
    g.add_argument("--num_samples", type=int, default=256, help="Captions (one image each) per sampling seed.")
    g.add_argument("--pair_samples", type=int, default=16, help="Images of each 'a {colour} {shape}' prompt per sampling seed.")
    g.add_argument("--batch_size", type=int, default=64, help="Images per pipeline call.")
    g.add_argument("--guidance_scale", type=float, default=3.0, help="Classifier-free guidance weight.")
    g.add_argument("--num_inference_steps", type=int, default=25, help="Denoising steps.")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="Where evaluation runs.")
    args = parser.parse_args(argv)
    if any(not 0 <= f < 1 for f in args.caption_fractions):
        parser.error(f"--caption_fractions must lie in [0, 1), got {args.caption_fractions}.")
    if args.pair_samples < 1:
        parser.error(f"--pair_samples must be at least 1, got {args.pair_samples}.")
    return args


def plan_runs(args) -> dict[str, list[str]]:
    """Run name -> the train.py flags that make it differ from the others."""
    runs = {}
    for method in args.methods:
        runs[method] = ["--method", method] + (["--caption_column", "text"] if method == "supervised" else [])
    for fraction in args.caption_fractions:
        if fraction == 0:
            runs.setdefault("vdl", ["--method", "vdl"])
        else:
            runs[semi_supervised_name(fraction)] = ["--method", "vdl", "--caption_column", "text", "--caption_fraction", str(fraction)]
    return runs


def semi_supervised_name(fraction: float) -> str:
    return "vdl" if fraction == 0 else f"vdl-captions-{fraction:g}"


def train(args, name: str, flags: list[str]) -> float:
    """Runs train.py for one run unless its pipeline exists; returns (or recalls) the training time in seconds."""
    run_dir = args.output_dir / "runs" / name
    record = run_dir / "benchmark_training.json"
    if (run_dir / "model_index.json").is_file():
        seconds = json.loads(record.read_text())["seconds"] if record.is_file() else float("nan")
        print(f"[{name}] already trained ({seconds:.0f} s), skipping")
        return seconds
    command = [
        "accelerate", "launch", str(TRAIN_SCRIPT), *flags,
        "--max_train_steps", str(args.max_train_steps),
        "--train_batch_size", str(args.train_batch_size),
        "--unet_preset", args.unet_preset,
        "--seed", str(args.seed),
        "--output_dir", str(run_dir),
        "--embedding_cache_dir", str(args.output_dir / "cache"),  # shared: the frozen encoders run once per setting
        "--checkpoints_total_limit", "1",
        "--resume_from_checkpoint", "latest",  # continues a stopped run, starts a new one otherwise
        *shlex.split(args.extra_train_args),
    ]
    print(f"[{name}] {shlex.join(command)}", flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - start
    record.write_text(json.dumps({"command": command, "seconds": seconds}, indent=2))
    print(f"[{name}] trained in {seconds:.0f} s", flush=True)
    return seconds


def evaluate(args, name: str, world: ToyWorld, oracle: ToyOracle, clip: ClipScorer) -> dict:
    """Metrics of one run pooled over the sampling seeds, and its row of the sample grid (cached in the run).

    ``metrics`` come from the evaluation captions, ``pairs`` from every "a {colour} {shape}" prompt;
    a run evaluated before ``pairs`` existed gets them added.
    """
    run_dir = args.output_dir / "runs" / name
    path = run_dir / "benchmark_metrics.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    if "metrics" in result and "pairs" in result:
        print(f"[{name}] already evaluated, skipping")
        return result
    start = time.perf_counter()
    pipeline = VDLPipeline.from_pretrained(run_dir).to(args.device)
    sampling = dict(batch_size=args.batch_size, guidance_scale=args.guidance_scale, num_inference_steps=args.num_inference_steps)
    if "metrics" not in result:
        runs = [evaluate_toy(pipeline, world, oracle, clip, num_samples=args.num_samples, seed=seed, **sampling) for seed in args.seeds]
        result["metrics"] = {k: asdict(v) for k, v in pool_estimates(runs).items()}
        row = generate(pipeline, grid_prompts(world), seed=args.seed, **sampling)
        Image.fromarray(np.concatenate(list(row), axis=1)).save(run_dir / "benchmark_samples.png")
    pairs = [evaluate_pairs(pipeline, world, oracle, num_samples=args.pair_samples, seed=seed, **sampling) for seed in args.seeds]
    result["pairs"] = {k: asdict(v) for k, v in pool_estimates(pairs).items()}
    result["evaluation_seconds"] = result.get("evaluation_seconds", 0.0) + time.perf_counter() - start
    path.write_text(json.dumps(result, indent=2))
    accuracy = result["metrics"]["all_mentioned_accuracy"]["value"]
    print(f"[{name}] evaluated in {result['evaluation_seconds']:.0f} s: all mentioned attributes right {accuracy:.3f}", flush=True)
    return result


def grid_prompts(world: ToyWorld) -> list[str]:
    """Fixed prompts plus the first three (shape, colour) pairs held out of training."""
    shapes, colours = world.value_names("shape"), world.value_names("colour")
    heldout = [f"{'an' if colours[c][0] in 'aeiou' else 'a'} {colours[c]} {shapes[s]}" for s, c in np.argwhere(world.heldout)[:3]]
    return GRID_PROMPTS + heldout


def write_grid(path: Path, rows: dict[str, Path]):
    """Stacks the runs' sample rows under one another, each labelled with its run name."""
    images = {name: Image.open(row) for name, row in rows.items()}
    width, height = next(iter(images.values())).size
    label_width = 120
    grid = Image.new("RGB", (label_width + width * GRID_SCALE, height * GRID_SCALE * len(images)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (name, image) in enumerate(images.items()):
        top = i * height * GRID_SCALE
        grid.paste(image.resize((width * GRID_SCALE, height * GRID_SCALE), Image.NEAREST), (label_width, top))
        draw.text((4, top + height * GRID_SCALE // 2 - 6), name, fill="black")
    grid.save(path)


def cell(metric: dict, digits: int = 3, with_n: bool = False) -> str:
    if metric["n"] == 0:
        return "–"
    return f"{metric['value']:.{digits}f} ± {metric['se']:.{digits}f}" + (f" (n = {metric['n']})" if with_n else "")


def minutes(seconds: float) -> str:
    return "–" if math.isnan(seconds) else f"{seconds / 60:.1f} min"


def methods_table(results: dict, names: list[str]) -> str:
    columns = [
        "method", "condition in training", "all mentioned attributes right", *ATTRIBUTE_NAMES,
        "held-out shape–colour pairs", "seen pairs", "oracle FD ↓", "CLIP score ↑", "training time",
    ]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for name in names:
        m = results[name]["metrics"]
        cells = [
            f"`{name}`", DESCRIPTIONS[name], cell(m["all_mentioned_accuracy"]),
            *[cell(m[f"{a}_accuracy"]) for a in ATTRIBUTE_NAMES],
            cell(m["heldout_pairs_accuracy"], with_n=True), cell(m["seen_pairs_accuracy"]),
            cell(m["oracle_fd"], 1), cell(m["clip_score"], 1), minutes(results[name]["training_seconds"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pairs_summary_table(results: dict, names: list[str]) -> str:
    columns = ["run", "all pairs", "seen pairs", "held-out pairs", '"a red circle"']
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for name in names:
        m = results[name]["pairs"]
        cells = [f"`{name}`", cell(m["pairs_accuracy"]), cell(m["seen_pairs_accuracy"]), cell(m["heldout_pairs_accuracy"]), cell(m["red circle"], 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def semi_supervised_table(results: dict, fractions: list[float]) -> str:
    columns = ["captions seen", "all mentioned attributes right", "held-out shape–colour pairs", "oracle FD ↓", "CLIP score ↑", "training time"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for fraction in fractions:
        run = results[semi_supervised_name(fraction)]
        m = run["metrics"]
        cells = [
            f"{fraction:.0%}", cell(m["all_mentioned_accuracy"]), cell(m["heldout_pairs_accuracy"], with_n=True),
            cell(m["oracle_fd"], 1), cell(m["clip_score"], 1), minutes(run["training_seconds"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(args, results: dict, world: ToyWorld):
    samples = len(args.seeds) * args.num_samples
    report = f"""# Toy-world benchmark

Every run: {args.max_train_steps} steps × batch {args.train_batch_size}, UNet `{args.unet_preset}`, seed {args.seed}{f", `{args.extra_train_args}`" if args.extra_train_args else ""}.
Evaluation: {samples} captions of the evaluation split per run (seeds {args.seeds}), one image each,
guidance {args.guidance_scale}, {args.num_inference_steps} steps.

Accuracy is the share of generated images in which the toy world's oracle reads what the caption
asks for, counting only the attributes the caption mentions; **all mentioned attributes right**
asks for every one of them. *Held-out pairs* are captions naming a (shape, colour) pair that never
occurs in the training images, *seen pairs* those naming one that does. **Oracle FD** is the
Fréchet distance between generated and reference images in the oracle's feature space (an offline
FID; lower is better); **CLIP score** is 100 × cosine of the image and its caption in the toy CLIP.
± is one standard error.
"""
    if args.methods:
        report += f"\n## Methods\n\n{methods_table(results, args.methods)}\n"
    if args.caption_fractions:
        report += f"\n## Semi-supervised: `vdl` that sees a fraction of the captions\n\n{semi_supervised_table(results, args.caption_fractions)}\n"
    samples_per_pair = len(args.seeds) * args.pair_samples
    report += f"""
## Prompts "a {{colour}} {{shape}}"

Every (shape, colour) pair as a prompt, {samples_per_pair} images each; a pair counts as right where the
oracle reads both. One prompt says little on its own: each model draws some pairs well and others badly.

{pairs_summary_table(results, list(results))}
"""
    for name in results:
        report += f"\n`{name}` (* held out of training):\n\n{pairs_table({k: m['value'] for k, m in results[name]['pairs'].items()}, world)}\n"
    report += "\n## Samples\n\nRows: " + ", ".join(f"`{n}`" for n in results) + ". Columns: " + "; ".join(f'"{p}"' for p in grid_prompts(world))
    report += " (the last ones are held-out pairs).\n\n![samples](samples.png)\n"
    (args.output_dir / "results.md").write_text(report)


def main(argv=None):
    args = parse_args(argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    runs = plan_runs(args)
    training_seconds = {name: train(args, name, flags) for name, flags in runs.items()}

    world = ToyWorld(args.seed)
    oracle = ToyOracle.from_pretrained(TOY_ORACLE).to(args.device)
    clip = ClipScorer.from_pretrained(device=args.device)
    results = {}
    for name in runs:
        results[name] = {**evaluate(args, name, world, oracle, clip), "training_seconds": training_seconds[name]}
    write_grid(args.output_dir / "samples.png", {name: args.output_dir / "runs" / name / "benchmark_samples.png" for name in runs})
    (args.output_dir / "results.json").write_text(json.dumps({"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "runs": results}, indent=2))
    write_report(args, results, world)
    print(f"\nWrote {args.output_dir / 'results.md'}\n")
    print((args.output_dir / "results.md").read_text())
    print("time per run:")
    for name, r in results.items():
        print(f"  {name:<22s} training {r['training_seconds']:7.0f} s   evaluation {r['evaluation_seconds']:6.0f} s")


if __name__ == "__main__":
    main()
