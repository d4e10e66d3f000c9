"""GPU benchmark: the ``base`` UNet at 256 px as train.py runs it on real data, in images/s and MFU.

    python examples/benchmark_gpu.py                                  # one CUDA GPU, under 5 minutes
    python examples/benchmark_gpu.py --peak_tflops 989                # a card the peak table lacks
    python examples/benchmark_gpu.py --device cpu --preset tiny --resolution 64 --batch_sizes 2 \\
        --sample_batch_sizes 1 --inference_steps 2 --no_compile --embedding_dim 32 --feature_dim 16 \\
        --vae_channels 32 32 32 32 --threads 1                         # the smoke test (tests/test_benchmark.py)

The workload is that of a real run from the embedding cache: SD-VAE-shaped latents (4×32×32 for
256 px), a ViT-L/14-wide condition (D = 768) and pooled vision feature (1024); the frozen encoders
ran when the cache was built, so a training step is the ELBO (VDL, ``clip`` prior, power spherical
posterior) forward and backward, gradient clipping and AdamW. Everything train.py can switch on for
speed is on: bf16 autocast (``--mixed_precision bf16``), SDPA attention (diffusers' default),
channels-last UNet weights and latents, ``torch.compile`` of the UNet, fused AdamW, TF32. The UNet
is compiled once for training and once for sampling, with a dynamic batch dimension, so that the
sweep fits in five minutes (``--static_shapes``: one compilation per batch size).

- training: a batch sweep; per batch size images/s (median of ``--windows`` timed windows), step
  time, peak memory (``torch.cuda.max_memory_allocated``) and MFU: FLOPs of one step (counted by
  ``FlopCounterMode`` on the eager model, attention included, backward as twice the forward) over
  step time, over the card's dense bf16 peak (``PEAK_BF16_TFLOPS`` by device name; ``--peak_tflops``
  overrides it; on a CPU, a bf16 GEMM timed on the same clock).
- sampling: the pipeline's denoising loop (``VDLPipeline``'s batched classifier-free guidance: one
  UNet call on 2B rows per step, DPM-Solver++) and the decode of an SD-shaped VAE (random weights:
  the same FLOPs as the real one), per batch size: images/s, ms per image, MFU, peak memory.

It prints one table (section | setting | img/s | ms | MFU | peak memory | detail) and with
``--output`` writes the rows as JSON. Compilation happens in the untimed warm-up; its time is reported.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.models.attention_processor import AttnProcessor2_0

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import count_flops, reset_peak_memory, peak_memory_mib, synchronize  # noqa: E402  (a sibling script)

from vdl_diffusion.models import UNET_PRESETS, build_noise_scheduler, build_sampling_scheduler, build_unet  # noqa: E402
from vdl_diffusion.objective import ELBO  # noqa: E402
from vdl_diffusion.posterior import TextEmbeddingPosterior  # noqa: E402
from vdl_diffusion.priors import ClipPrior  # noqa: E402

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s; the first name
# that occurs in torch.cuda.get_device_name() wins, so the more specific names come first.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100", 989.0),
    ("H800", 989.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("RTX 4090", 165.0),
    ("A10", 125.0),
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (a shared CPU: 1, or OpenMP threads wait on each other).")
    p.add_argument("--preset", default="base", choices=sorted(UNET_PRESETS))
    p.add_argument("--resolution", type=int, default=256, help="Image side; latents are resolution/8 (the SD VAE's factor).")
    p.add_argument("--embedding_dim", type=int, default=768, help="D of the condition (ViT-L/14: 768).")
    p.add_argument("--feature_dim", type=int, default=1024, help="Width of h(x), CLIP's pooled vision feature (ViT-L/14: 1024).")
    p.add_argument("--vae_channels", nargs="+", type=int, default=[128, 256, 512, 512], help="The decoder VAE's block widths (SD's).")
    p.add_argument("--batch_sizes", nargs="+", type=int, default=[32, 64, 128], help="Training batch sweep.")
    p.add_argument("--sample_batch_sizes", nargs="+", type=int, default=[1, 16], help="Images per sampling call.")
    p.add_argument("--inference_steps", type=int, default=25)
    p.add_argument("--guidance_scale", type=float, default=4.0)
    p.add_argument("--no_compile", action="store_true", help="Skip torch.compile (it takes minutes on a CPU).")
    p.add_argument("--static_shapes", action="store_true",
                   help="Compile each batch size apart (specialised kernels, one compilation each) instead of once with a dynamic batch.")
    p.add_argument("--no_channels_last", action="store_true")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"], help="Autocast dtype (fp32: none).")
    p.add_argument("--warmup", type=int, default=3, help="Untimed steps (compilation happens here).")
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--window_s", type=float, default=2.0, help="Least duration of a timed window.")
    p.add_argument("--peak_tflops", type=float, help="The card's dense peak in the autocast dtype, TFLOP/s (default: the table).")
    p.add_argument("--output", help="Also write the rows as JSON.")
    args = p.parse_args(argv)
    if min(args.batch_sizes + args.sample_batch_sizes + [args.inference_steps, args.warmup, args.windows]) < 1:
        p.error("Batch sizes, --inference_steps, --warmup and --windows must be at least 1.")
    if args.resolution % 8:
        p.error(f"--resolution must be a multiple of 8 (the VAE's factor), got {args.resolution}.")
    return args


def clock(device: torch.device) -> float:
    """Wall time on a GPU (the device synchronised by the callers), process CPU time on the CPU."""
    return time.perf_counter() if device.type == "cuda" else time.process_time()


def peak_flops(args, device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """The denominator of MFU and where it comes from."""
    if args.peak_tflops:
        return args.peak_tflops * 1e12, "--peak_tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in PEAK_BF16_TFLOPS:
            if key in name:
                return tflops * 1e12 * (1 if dtype == torch.bfloat16 else 0.5), f"data sheet ({key}{'' if dtype == torch.bfloat16 else ', TF32 = half of bf16'})"
        raise SystemExit(f"No known peak for {name!r}: pass --peak_tflops (dense, {dtype}).")
    n = 1024
    a, b = (torch.randn(n, n, dtype=dtype) for _ in range(2))
    a @ b
    times = []
    for _ in range(5):
        start = clock(device)
        a @ b
        times.append(clock(device) - start)
    return 2 * n**3 / statistics.median(times), f"{n}³ {dtype} GEMM, CPU time"


def build_elbo(args, device: torch.device) -> ELBO:
    torch.manual_seed(0)
    unet = build_unet(args.preset, args.embedding_dim, 4, sample_size=args.resolution // 8)
    unet.set_attn_processor(AttnProcessor2_0())
    posterior = TextEmbeddingPosterior(args.embedding_dim, args.feature_dim)
    elbo = ELBO(unet, build_noise_scheduler(), posterior=posterior, prior=ClipPrior(args.embedding_dim), captions=False).to(device)
    if not args.no_channels_last:
        unet.to(memory_format=torch.channels_last)
    return elbo


def cached_batch(args, batch_size: int, device: torch.device) -> dict:
    """What the embedding cache gives a step: latents, unit ``y``, features."""
    side = args.resolution // 8
    latents = torch.randn(batch_size, 4, side, side, device=device)
    if not args.no_channels_last:
        latents = latents.contiguous(memory_format=torch.channels_last)
    return {
        "latents": latents,
        "y": F.normalize(torch.randn(batch_size, args.embedding_dim, device=device), dim=-1),
        "features": torch.randn(batch_size, args.feature_dim, device=device),
    }


def timed(fn, count: int, device: torch.device) -> float:
    synchronize(device)
    start = clock(device)
    for _ in range(count):
        fn()
    synchronize(device)
    return (clock(device) - start) / count


def measure(fn, args, device: torch.device) -> dict:
    """Warm-up (compilation), then ``--windows`` timed windows of at least ``--window_s``: seconds per call."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    first_s = time.perf_counter() - start
    last = timed(fn, max(1, args.warmup - 1), device)
    count = max(1, round(args.window_s / max(last, 1e-6)))
    seconds = [timed(fn, count, device) for _ in range(args.windows)]
    return {"seconds": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds), "warmup_first_s": first_s}


def benchmark_training(args, device, dtype, peak) -> list[dict]:
    rows = []
    elbo = build_elbo(args, device)
    parameters = [p for p in elbo.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-4, fused=device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def step(batch, model):
        with autocast:
            loss, _ = model(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    eager_unet = elbo.unet
    compiled_unet = eager_unet if args.no_compile else torch.compile(eager_unet, dynamic=not args.static_shapes)
    for batch_size in args.batch_sizes:
        batch = cached_batch(args, batch_size, device)
        flops = count_flops(lambda: step(batch, elbo))  # on the eager model: the same math, countable
        elbo.unet = compiled_unet
        reset_peak_memory(device)
        log(f"training: {args.preset}, batch {batch_size}")
        timing = measure(lambda: step(batch, elbo), args, device)
        elbo.unet = eager_unet
        rows.append(row("training", f"{args.preset} {args.resolution}px b={batch_size}", batch_size, timing, flops, peak, device))
    return rows


def sd_shaped_vae(args) -> AutoencoderKL:
    blocks = len(args.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=tuple(args.vae_channels), layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks,
        sample_size=args.resolution, norm_num_groups=min(32, min(args.vae_channels)),
    )


@torch.no_grad()
def benchmark_sampling(args, device, dtype, peak) -> list[dict]:
    rows = []
    elbo = build_elbo(args, device).eval()
    unet = elbo.unet
    vae = sd_shaped_vae(args).to(device).eval()
    if not args.no_channels_last:
        vae.to(memory_format=torch.channels_last)
    scheduler = build_sampling_scheduler(elbo.scheduler)
    compiled = unet if args.no_compile else torch.compile(unet, dynamic=not args.static_shapes)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def sample(batch_size: int, model) -> torch.Tensor:
        """The pipeline's loop: batched guidance (conditional and null rows in one call), then the decode."""
        side = args.resolution // 8
        z = torch.randn(batch_size, 4, side, side, device=device)
        t = F.normalize(torch.randn(batch_size, args.embedding_dim, device=device), dim=-1)
        condition = torch.cat([t, torch.zeros_like(t)])
        scheduler.set_timesteps(args.inference_steps, device=device)
        with autocast:
            for s in scheduler.timesteps:
                eps = model(torch.cat([z, z]), s, encoder_hidden_states=None, added_cond_kwargs={"image_embeds": condition}).sample
                cond, uncond = eps.float().chunk(2)
                z = scheduler.step(uncond + args.guidance_scale * (cond - uncond), s, z).prev_sample
            return vae.decode(z / vae.config.scaling_factor).sample

    for batch_size in args.sample_batch_sizes:
        flops = count_flops(lambda: sample(batch_size, unet))
        reset_peak_memory(device)
        log(f"sampling: {batch_size} image(s), {args.inference_steps} steps")
        timing = measure(lambda: sample(batch_size, compiled), args, device)
        rows.append(row("sampling", f"{batch_size} image(s), {args.inference_steps} steps, CFG, VAE decode", batch_size, timing, flops, peak, device))
    return rows


def row(section, setting, images, timing, flops, peak, device) -> dict:
    s = timing["seconds"]
    return {
        "section": section, "setting": setting, "images_per_s": images / s, "ms": 1e3 * s, "ms_per_image": 1e3 * s / images,
        "tflop": flops / 1e12, "mfu": flops / s / peak, "mfu_min": flops / timing["max_s"] / peak, "mfu_max": flops / timing["min_s"] / peak,
        "peak_memory_gib": peak_memory_mib(device) / 1024, "first_call_s": timing["warmup_first_s"],
    }


def format_table(rows, header) -> str:
    cells = [("section", "setting", "img/s", "ms", "MFU [min–max]", "peak mem", "detail")]
    for r in rows:
        cells.append((
            r["section"], r["setting"], f"{r['images_per_s']:.1f}", f"{r['ms']:.1f}",
            f"{100 * r['mfu']:.1f}% [{100 * r['mfu_min']:.1f}–{100 * r['mfu_max']:.1f}]", f"{r['peak_memory_gib']:.2f} GiB",
            f"{1e3 * r['tflop']:.1f} GFLOP per call; first call {r['first_call_s']:.1f} s (with compilation)",
        ))
    widths = [max(len(row[i]) for row in cells) for i in range(6)]
    return "\n".join([header] + [" | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " | " + row[6] for row in cells])


def log(message: str) -> None:
    print(f"[benchmark_gpu] {message}", file=sys.stderr, flush=True)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    threads, validate = torch.get_num_threads(), torch.distributions.Distribution._validate_args
    torch.set_num_threads(args.threads or threads)
    torch.distributions.Distribution.set_default_validate_args(False)  # as train.py
    try:
        return run(args)
    finally:  # main() may be called from other code (the tests): leave its settings as they were
        torch.set_num_threads(threads)
        torch.distributions.Distribution.set_default_validate_args(validate)


def run(args) -> list[dict]:
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    started = time.perf_counter()
    peak, source = peak_flops(args, device, dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    header = (
        f"{name}; torch {torch.__version__}; {args.dtype} autocast, SDPA, channels-last {not args.no_channels_last}, "
        f"compile {not args.no_compile}; peak {peak / 1e12:.1f} TFLOP/s ({source}); load average {os.getloadavg()[0]:.1f}"
    )
    rows = benchmark_training(args, device, dtype, peak) + benchmark_sampling(args, device, dtype, peak)
    print(format_table(rows, header + f"; {time.perf_counter() - started:.0f} s in all"))
    if args.output:
        Path(args.output).write_text(json.dumps({"header": header, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
