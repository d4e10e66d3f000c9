"""Peak memory of an embedding-cache build against the number of images: bounded by one shard, not the dataset.

    python examples/cache_scale.py                             # 5 000 and 50 000 images, this tree's cache
    python examples/cache_scale.py --sizes 5000 50000 --layouts current head   # and the last commit's cache.py

Each build runs in its own Python process (``--child``), which reports its peak resident set
(``VmHWM``: what the process ever held, file-backed pages included) after building the cache of
``n`` images with the tiny test encoders (a 2-layer CLIP, a tiny VAE; 32×32 images, flips on, so
two 8×8×4 latents, ``y``, ``t*`` and features per image: 2.3 KB). The images are 8×8 PNGs (a few
hundred bytes each) in a dataset saved to disk and memory-mapped, so what grows with ``n`` is the
cache, not the input. ``--layouts head`` runs ``git show HEAD:vdl_diffusion/cache.py`` in place of
this tree's, for the before/after. It prints one table (layout | images | peak RSS | build time | shards).
"""

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", type=int, default=[5000, 50000], help="Numbers of images to cache.")
    p.add_argument("--layouts", nargs="+", default=["current"], choices=["current", "head"],
                   help="current: this tree's cache.py; head: the last commit's (git show HEAD:vdl_diffusion/cache.py).")
    p.add_argument("--shard_rows", type=int, help="Override cache.SHARD_ROWS (current layout only).")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch threads in each build.")
    p.add_argument("--output", help="Also write the rows as JSON here.")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--layout", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--models", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def write_images(folder: Path, n: int) -> None:
    """``n`` random 8×8 PNGs as an undecoded image column, written to disk in chunks (bounded memory)."""
    import datasets
    import numpy as np
    import PIL.Image

    def rows():
        rng = np.random.default_rng(0)
        for _ in range(n):
            buffer = io.BytesIO()
            PIL.Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buffer, format="PNG")
            yield {"image": {"bytes": buffer.getvalue(), "path": None}}

    features = datasets.Features({"image": datasets.Image(decode=False)})
    with tempfile.TemporaryDirectory() as cache_dir:
        datasets.Dataset.from_generator(rows, features=features, cache_dir=cache_dir).save_to_disk(str(folder))


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_cache_module(layout: str):
    """vdl_diffusion.cache as in this tree, or as in the last commit (its source run as a module of the package)."""
    import importlib.util

    import vdl_diffusion.cache

    if layout == "current":
        return vdl_diffusion.cache
    source = subprocess.run(["git", "show", "HEAD:vdl_diffusion/cache.py"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    spec = importlib.util.spec_from_loader("vdl_diffusion.cache_head", loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "vdl_diffusion"
    exec(compile(source, "HEAD:vdl_diffusion/cache.py", "exec"), module.__dict__)
    return module


def child(args) -> None:
    import datasets
    import torch
    from accelerate import Accelerator

    from vdl_diffusion.encoders import FrozenEncoders

    torch.set_num_threads(args.threads)
    cache = load_cache_module(args.layout)
    if args.shard_rows and hasattr(cache, "SHARD_ROWS"):
        cache.SHARD_ROWS = args.shard_rows
    images = datasets.load_from_disk(args.data)
    images = images.select(range(args.size)) if args.size < len(images) else images
    encoders = FrozenEncoders.from_pretrained(str(Path(args.models, "clip")), str(Path(args.models, "vae")))
    with tempfile.TemporaryDirectory() as cache_dir:
        start = time.perf_counter()
        built = cache.build_or_load_cache(
            Accelerator(cpu=True), images, encoders, cache_dir, resolution=32, random_flip=True, batch_size=args.batch_size
        )
        seconds = time.perf_counter() - start
        print(json.dumps({"layout": args.layout, "images": len(built), "peak_rss_mib": peak_rss_mib(), "build_s": seconds,
                          "shards": len(built.shards), "shard_rows": getattr(cache, "SHARD_ROWS", None)}))


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.child:
        return child(args)
    from vdl_diffusion.testing_utils import save_tiny_clip, save_tiny_vae

    rows = []
    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        save_tiny_clip(root / "models" / "clip")
        save_tiny_vae(root / "models" / "vae")
        write_images(root / "images", max(args.sizes))
        for layout in args.layouts:
            for size in args.sizes:
                command = [sys.executable, __file__, "--child", "--size", str(size), "--layout", layout, "--data", str(root / "images"),
                           "--models", str(root / "models"), "--batch_size", str(args.batch_size), "--threads", str(args.threads)]
                if args.shard_rows:
                    command += ["--shard_rows", str(args.shard_rows)]
                print(f"[cache_scale] {layout}: {size} images", file=sys.stderr, flush=True)
                done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
                if done.returncode:
                    raise RuntimeError(f"The build of {size} images failed:\n{done.stderr[-4000:]}")
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"load average {' / '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("layout  | images | peak RSS (MiB) | build (s) | shards")
    for row in rows:
        print(f"{row['layout']:<7} | {row['images']:>6} | {row['peak_rss_mib']:>14.1f} | {row['build_s']:>9.1f} | {row['shards']}")
    if args.output:
        Path(args.output).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
