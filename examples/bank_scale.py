"""Time and peak memory of the text-bank prior's top-k precompute on synthetic banks.

    python examples/bank_scale.py                                            # D = 64 (toy), banks of 10^4 and 10^5
    python examples/bank_scale.py --sizes 10000 100000 1000000 --dim 768 --device cuda

The top-k entries of every training image are found once, after the embedding cache is built
(`vdl_diffusion.text_bank.build_top_k`): images in chunks of ``--image_chunk``, the bank in chunks
that keep 2^25 scores (128 MiB) per matmul (`vdl_diffusion.priors.bank_top_k`). This times that
kernel on ``--images`` random unit vectors against a random bank and extrapolates linearly to 10^6
images (the cost is images × bank × D). Peak memory, the bank included: CUDA's max allocated, or on
the CPU the resident set's peak above where it was before the bank (sampled every millisecond). Also printed: the
sizes of the saved prior (the bank, N × D float32) and of the top-k file (10^6 images × k × 8 bytes).
"""

import argparse
import os
import threading
import time

import torch
import torch.nn.functional as F

from vdl_diffusion.priors import bank_top_k


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="bank sizes N")
    parser.add_argument("--dim", type=int, default=64, help="embedding width D (64: toy CLIP, 768: ViT-L/14)")
    parser.add_argument("--images", type=int, default=4096, help="images timed (the rest is extrapolated)")
    parser.add_argument("--image_chunk", type=int, default=4096, help="images per top-k call, as build_top_k")
    parser.add_argument("--top_k", type=int, default=64, help="k, as --bank_top_k")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return parser.parse_args()


class PeakMemory:
    """Peak memory above the level at entry: CUDA's allocator statistics, or the sampled resident set (Linux)."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.start, self.running = self._resident(), True
            self.sampler = threading.Thread(target=self._sample, daemon=True)
            self.sampler.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.start
        else:
            self.running = False
            self.sampler.join()
            self.peak -= self.start

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self._resident())
            time.sleep(0.001)

    @staticmethod
    def _resident() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    generator = torch.Generator(device).manual_seed(0)
    y = F.normalize(torch.randn(args.images, args.dim, device=device, generator=generator), dim=-1)
    print(f"top-{args.top_k} of {args.images} images (D = {args.dim}, {device}), extrapolated to 10^6 images")
    print(f"{'bank N':>10} {'s / 10^4 images':>16} {'h / 10^6 images':>16} {'peak memory':>12} {'prior file':>11} {'top-k file':>11}")
    for size in args.sizes:
        with PeakMemory(device) as memory:
            bank = torch.randn(size, args.dim, device=device, generator=generator)
            bank /= bank.norm(dim=-1, keepdim=True)  # in place: the peak is the bank plus the top-k's working memory
            log_count = torch.zeros(size, device=device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            for i in range(0, args.images, args.image_chunk):
                logits, index = bank_top_k(y[i : i + args.image_chunk], bank, log_count, 100.0, args.top_k)
                index.cpu()  # as build_top_k: the result goes to the file
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
            del bank, log_count, logits, index
        print(
            f"{size:>10} {seconds * 1e4 / args.images:>16.2f} {seconds * 1e6 / args.images / 3600:>16.3f} "
            f"{memory.peak / 2**20:>8.0f} MiB {size * (args.dim + 1) * 4 / 2**20:>7.0f} MiB {1e6 * args.top_k * 8 / 2**20:>7.0f} MiB"
        )


if __name__ == "__main__":
    main()
