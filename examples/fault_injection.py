"""Kill train.py with SIGKILL at random moments, resume it, and count what survived.

Each trial starts a tiny run (tiny CLIP, VAE and UNet built in code, 64 toy images; half the trials
with a fresh embedding cache, so kills land in the cache build too) and kills it: half the trials
after a random delay drawn over the length of an uninterrupted run, the other half inside a write
(as soon as a checkpoint, export or cache write's partial file appears). It looks
at what the kill left, then runs the same command with ``--resume_from_checkpoint latest`` to the
end. It reports:

- where the kill landed: inside a checkpoint, export, cache or toy-image write, or elsewhere;
- the output folder right after the kill: a pipeline that loads, none, or a broken one (the defect);
- whether the resume exited 0 with no manual cleanup, and ended bitwise equal to the uninterrupted run.

    python examples/fault_injection.py --trials 20 --output fault_injection.json
"""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import load_file

from vdl_diffusion import VDLPipeline
from vdl_diffusion.testing_utils import save_tiny_clip, save_tiny_vae
from vdl_diffusion.toy import ToyWorld, write_imagefolder

ROOT = Path(__file__).resolve().parents[1]
WRITES = {  # what a partial file or folder left by the kill says was being written: (in the run or the cache, pattern)
    "checkpoint": ("run", ".checkpoint-*.partial"),
    "export": ("run", ".pipeline.partial"),
    "cache": ("cache", "*/.*.tmp"),
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=20, help="Kill-and-resume trials.")
    p.add_argument("--steps", type=int, default=40, help="Training steps of each run.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the kill times and cache choices.")
    p.add_argument("--output", help="Write the counts and every trial as JSON here.")
    return p.parse_args()


def command(root: Path, output_dir: Path, cache_dir: Path, steps: int, *extra: str) -> list[str]:
    return [
        sys.executable, str(ROOT / "train.py"), "--pretrained_clip", str(root / "clip"), "--pretrained_vae", str(root / "vae"),
        "--train_data_dir", str(root / "images"), "--embedding_cache_dir", str(cache_dir), "--output_dir", str(output_dir),
        "--unet_preset", "tiny", "--train_batch_size", "8", "--max_train_steps", str(steps), "--checkpointing_steps", "3",
        "--checkpoints_total_limit", "2", "--use_ema", "--random_flip", "--validation_prompts", "--report_to", "none", *extra,
    ]  # fmt: skip


def final_weights(output_dir: Path) -> dict:
    return {name: load_file(output_dir / name / "diffusion_pytorch_model.safetensors") for name in ("unet", "posterior")}


def export_state(output_dir: Path) -> str:
    """'complete' if the folder loads as a pipeline, 'none' if it is no pipeline, 'broken' if it claims to be one and fails."""
    if not (output_dir / "model_index.json").is_file():
        return "none"
    try:
        VDLPipeline.from_pretrained(output_dir)
        return "complete"
    except Exception:
        return "broken"


def main(args):
    rng = random.Random(args.seed)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        save_tiny_clip(root / "clip")
        save_tiny_vae(root / "vae")
        write_imagefolder(ToyWorld(0), root / "images", 64, split="train")
        start = time.perf_counter()
        subprocess.run(command(root, root / "reference", root / "cache", args.steps), env=env, check=True, capture_output=True)
        duration = time.perf_counter() - start
        reference = final_weights(root / "reference")
        print(f"uninterrupted run: {duration:.1f} s; killing at uniform(0, {duration:.1f}) s", flush=True)

        trials = []
        for trial in range(args.trials):
            run, cache = root / f"run-{trial}", root / ("cache" if rng.random() < 0.5 else f"cache-{trial}")
            folders = {"run": run, "cache": cache}
            target = rng.choice([None, *WRITES]) if trial % 2 else None  # None: a random moment
            if target == "cache" and cache.name == "cache":
                target = None  # a reused cache is not written
            delay = rng.uniform(0, duration) if target is None else 0.0
            process = subprocess.Popen(command(root, run, cache, args.steps), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            start = time.perf_counter()
            if target is not None:
                folder, pattern = WRITES[target]
                while process.poll() is None and not list(folders[folder].glob(pattern)):
                    time.sleep(0.002)
            time.sleep(delay)
            process.send_signal(signal.SIGKILL)
            process.wait()
            killed_at = time.perf_counter() - start
            inside = [kind for kind, (folder, pattern) in WRITES.items() if list(folders[folder].glob(pattern))]
            after_kill = export_state(run)
            resumed = subprocess.run(command(root, run, cache, args.steps, "--resume_from_checkpoint", "latest"), env=env, capture_output=True, text=True)
            equal = resumed.returncode == 0 and all(
                torch.equal(final_weights(run)[name][key], reference[name][key]) for name in reference for key in reference[name]
            )
            record = {"trial": trial, "aimed_at": target or "random moment", "killed_at_s": round(killed_at, 2), "fresh_cache": cache.name != "cache", "inside": inside or ["elsewhere"],
                      "export_after_kill": after_kill, "resume_rc": resumed.returncode, "bitwise_equal": equal}  # fmt: skip
            if resumed.returncode:
                record["error"] = resumed.stderr[-600:]
            trials.append(record)
            print(json.dumps(record), flush=True)
            shutil.rmtree(run, ignore_errors=True)

    counts = {
        "trials": len(trials),
        "aimed_at": dict(Counter(t["aimed_at"] for t in trials)),
        "kill_inside": dict(Counter(kind for t in trials for kind in t["inside"])),
        "export_after_kill": dict(Counter(t["export_after_kill"] for t in trials)),
        "resumed_rc0": sum(t["resume_rc"] == 0 for t in trials),
        "bitwise_equal": sum(t["bitwise_equal"] for t in trials),
        "uninterrupted_run_s": round(duration, 1),
    }
    print(json.dumps(counts, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps({"counts": counts, "trials": trials}, indent=2))


if __name__ == "__main__":
    main(parse_args())
