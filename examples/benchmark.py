"""Speed benchmark: training throughput, MFU, where a step's time goes, sampling latency, scaling, optimisations.

    python examples/benchmark.py                                   # minutes on an idle 2-core CPU
    python examples/benchmark.py --threads 1                       # a CPU shared with other jobs: see below
    python examples/benchmark.py --output results.json             # also write every number as JSON
    python examples/benchmark.py --presets tiny small base --batch_sizes 1 8 64 256 --compile   # a GPU

It runs on CUDA when there is a GPU, else on the CPU with torch's default thread count (where
other processes share the CPU, OpenMP threads wait on each other and steps slow down erratically,
several times over: there ``--threads 1`` gives steadier numbers). Every duration is read from one
clock (``--clock``): on the CPU by default the process's CPU time, which a loaded machine does not
inflate with time spent waiting for a core; on a GPU wall time, the device synchronised. (CPU time
does not count data loader worker processes: compare ``loader_workers`` with ``--clock wall``.) It uses the toy world's shipped
CLIP and VAE (32×32 images, 8×8×4 latents) when they load, else the tiny test components. A training step is what train.py does per batch: fetch the batch
(the embedding cache, or images through the frozen encoders), ELBO forward, backward, clip the
gradient norm, AdamW step, EMA update. It prints one table (section | setting | value | unit |
detail) whose rows are, by section:

- machine: CPU, cores, device, versions, load average (the CPU may be shared: numbers are noisy).
- peak: the matmul rate of a large GEMM in the training dtype, MFU's denominator.
- training: images/s (median over timed windows after warm-up) per UNet preset, batch size and
  cache on/off; FLOPs of one step (``FlopCounterMode``, plus attention on the CPU, which it does not
  count: ``4·B·heads·L·S·d`` per call forward, twice that backward), achieved FLOP/s, peak memory,
  and MFU: each timed window follows a GEMM timed on the same clock and threads, so every round
  gives one MFU; the median and [min–max] over rounds are reported. Then the share of a step in each
  phase (timed apart, the device synchronised around each timer).
- profile: for the focus setting (the last preset, largest batch, cached), how much time the
  matmuls/convolutions take and at what rate, and the heaviest ops: what bounds MFU.
- sampling: ``VDLPipeline`` latency against the sum of its parts timed alone, i.e. the pipeline's own
  overhead, and one batched CFG call per step against two unbatched calls.
- scaling: step time and peak memory against batch size and against resolution.
- optimisations: each against train.py's defaults at the focus setting, in the same run, their
  timed windows taken in a round robin so that a change in the machine's load hits all: channels-last, foreach and
  for-loop AdamW (train.py's is fused), foreach EMA, bf16 autocast, data loader workers (and pinned memory on a GPU), SDPA
  against the classic attention processor, the cache held in memory, and ``torch.compile`` with ``--compile``.
- diffusers (``--sections diffusers``): train.py's step on the cache against a re-creation of
  diffusers' Kandinsky 2.2 decoder training loop (VAE and CLIP image encoder in every step) and
  against that loop on latents and embeddings precomputed in memory, at the same UNet and batch;
  train.py's step also with the cache in RAM, and with ``--method image`` (the UNet on ``y``, no
  posterior: the same work as diffusers' loop, so the ratio is the loop's own cost)
  (``--diffusers_presets``, ``--diffusers_batch_size``): their timed windows in a round robin, the
  ratio per round, median [min–max]. ``python examples/benchmark.py --sections diffusers --threads 1``.

On a GPU, ``examples/benchmark_gpu.py`` measures the ``base`` preset at 256 px (bf16, SDPA,
channels-last, ``torch.compile``, a batch sweep, sampling) against the card's bf16 peak.
"""

import argparse
import io
import json
import os
import platform
import re
import resource
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets
import diffusers
import PIL.Image
import torch
from accelerate import Accelerator
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from diffusers.training_utils import EMAModel
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from vdl_diffusion import VDLPipeline
from vdl_diffusion.cache import CachedEmbeddingDataset, build_or_load_cache
from vdl_diffusion.data import ImageDataset, ImageTransform
from vdl_diffusion.encoders import FrozenEncoders
from vdl_diffusion.models import UNET_PRESETS, build_noise_scheduler, build_sampling_scheduler, build_unet
from vdl_diffusion.objective import ELBO
from vdl_diffusion.posterior import TextEmbeddingPosterior
from vdl_diffusion.priors import build_prior
from vdl_diffusion.testing_utils import tiny_clip_components, tiny_vae
from vdl_diffusion.toy import TOY_CLIP, TOY_VAE, ToyWorld

PROMPT = "a red circle"
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
_clock = time.perf_counter  # set by run(): every duration of the benchmark is read from this one clock


def now() -> float:
    return _clock()
# Ops whose FLOPs FlopCounterMode counts, as the profiler names them: the compute-bound share of a step.
MATMUL_OPS = re.compile(r"::(mm|addmm|bmm|baddbmm|matmul|linear)$|conv|scaled_dot_product")


SECTIONS = ("training", "sampling", "scaling", "optimisations", "diffusers")

OPTIMISATIONS = {  # name: (what changes against train.py's defaults, TrainingStep options, data loader options)
    "channels_last": ("UNet weights and latents in channels_last", {"channels_last": True}, {}),
    "adamw_foreach": ("AdamW(foreach=True) instead of train.py's fused AdamW", {"adamw": {"fused": False, "foreach": True}}, {}),
    "adamw_for_loop": ("AdamW's for-loop (torch's default on the CPU) instead of train.py's fused AdamW", {"adamw": {"fused": False}}, {}),
    "ema_foreach": ("EMAModel(foreach=True)", {"ema_foreach": True}, {}),
    "bf16_autocast": ("autocast to bfloat16", {"autocast": torch.bfloat16}, {}),
    "loader_workers": ("data loader workers (--num_workers)", {}, {"num_workers": None}),
    "cache_in_memory": ("the cache held in RAM (--cache_in_memory)", {}, {"in_memory": True}),
    "pin_memory": ("pin_memory=True (GPU only)", {}, {"pin_memory": True}),
    "classic_attention": ("AttnProcessor instead of the default SDPA AttnProcessor2_0", {"attention": "classic"}, {}),
    "compile": ("unet.compile() (with --compile)", {"compile": True}, {}),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", help="Write the results as JSON to this file.")
    p.add_argument("--device", help="cuda, cpu, ... (default: cuda if available, else cpu).")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own choice).")
    p.add_argument("--clock", choices=sorted(CLOCKS), help="cpu: process CPU time (default on the CPU); wall: wall time (default on a GPU).")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=[s for s in SECTIONS if s != "diffusers"],
                   help="What to measure (default: all but diffusers).")
    g = p.add_argument_group("training")
    g.add_argument("--presets", nargs="+", default=["tiny", "small"], choices=sorted(UNET_PRESETS),
                   help="UNet presets, each at its native resolution (base is slow on a CPU).")
    g.add_argument("--batch_sizes", nargs="+", type=int, default=[1, 8, 64], help="Training batch sizes.")
    g.add_argument("--no_uncached", action="store_true", help="Skip the runs with the encoders in the loop.")
    g.add_argument("--warmup", type=int, default=2, help="Untimed steps before the windows (at least 1).")
    g.add_argument("--windows", type=int, default=3, help="Timed windows; throughput is their median.")
    g.add_argument("--window_s", type=float, default=1.0, help="Least duration of a window (steps are added to reach it).")
    g.add_argument("--phase_steps", type=int, default=3, help="Steps timed phase by phase (median per phase), and profiled.")
    g.add_argument("--gemm_size", type=int, default=2048, help="n of the n×n×n GEMM that measures peak FLOP/s.")
    g.add_argument("--gemm_repeats", type=int, default=5)
    g = p.add_argument_group("sampling")
    g.add_argument("--sample_batch_sizes", nargs="+", type=int, default=[1, 8], help="Images per pipeline call.")
    g.add_argument("--inference_steps", type=int, default=25)
    g.add_argument("--guidance_scale", type=float, default=4.0)
    g.add_argument("--sample_repeats", type=int, default=5, help="Timed pipeline calls (median), each beside its parts.")
    g = p.add_argument_group("focus: the setting of the profile, sampling, resolution sweep and optimisations")
    g.add_argument("--focus_preset", help="Default: the last of --presets.")
    g.add_argument("--focus_batch_size", type=int, help="Default: the largest of --batch_sizes.")
    g.add_argument("--resolutions", nargs="+", type=int, default=[32, 64], help="Image sizes of the resolution sweep.")
    g.add_argument("--resolution_batch_size", type=int, default=8)
    g.add_argument("--optimisations", nargs="*", choices=sorted(OPTIMISATIONS),
                   help="Which to compare (default: all that apply: pin_memory on a GPU, compile with --compile).")
    g.add_argument("--num_workers", type=int, default=2, help="Data loader workers of the loader_workers comparison.")
    g.add_argument("--compile", action="store_true", help="Also compare torch.compile (slow to compile on a CPU).")
    g = p.add_argument_group("diffusers: train.py's step against diffusers' Kandinsky 2.2 decoder loop")
    g.add_argument("--diffusers_presets", nargs="+", default=["tiny", "small"], choices=sorted(UNET_PRESETS))
    g.add_argument("--diffusers_batch_size", type=int, default=32)
    g.add_argument("--diffusers_rounds", type=int, default=7, help="Rounds of the round robin; ratios are per round.")
    args = p.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.clock = args.clock or ("cpu" if args.device == "cpu" else "wall")
    if args.optimisations is None:
        args.optimisations = [n for n in OPTIMISATIONS if n not in ("pin_memory", "compile")]
        args.optimisations += ["pin_memory"] if args.device.startswith("cuda") else []
        args.optimisations += ["compile"] if args.compile else []
    args.focus_preset = args.focus_preset or args.presets[-1]
    args.focus_batch_size = args.focus_batch_size or max(args.batch_sizes)
    if min(args.batch_sizes + [args.focus_batch_size, args.resolution_batch_size]) < 1:
        p.error("Batch sizes must be positive.")
    if min(args.warmup, args.windows, args.phase_steps, args.sample_repeats, args.diffusers_rounds) < 1:
        p.error("--warmup, --windows, --phase_steps, --sample_repeats and --diffusers_rounds must be at least 1.")
    return args


# --------------------------------------------------------------------------------------------------
# Device helpers: the same calls on a GPU and on the CPU


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif Path("/proc/self/clear_refs").exists():
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets the peak RSS (VmHWM)


def peak_memory_mib(device: torch.device) -> float:
    """GPU: the most memory torch allocated. CPU: the process's peak resident set (RSS)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    status = Path("/proc/self/status")
    if status.exists():
        kib = next(line.split()[1] for line in status.read_text().splitlines() if line.startswith("VmHWM"))
        return int(kib) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # never reset: the whole run's peak


def machine_info(device: torch.device, encoders_name: str) -> dict:
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").exists():
        cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), cpu)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "cores": cores,
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({cpu})",
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "encoders": encoders_name,
        "load_average_start": list(os.getloadavg()),
    }


# --------------------------------------------------------------------------------------------------
# Workload: frozen encoders, the toy world's images, and their embedding cache


def load_encoders(device: torch.device) -> tuple[FrozenEncoders, str]:
    """The toy world's CLIP and VAE if they load, else the tiny test components; and which it is."""
    if (TOY_CLIP / "config.json").is_file() and (TOY_VAE / "config.json").is_file():
        try:
            return FrozenEncoders.from_pretrained(str(TOY_CLIP), str(TOY_VAE), device=device), "toy world CLIP + VAE"
        except (OSError, ValueError, RuntimeError) as error:  # e.g. weights being rewritten while we read
            reason = f"the toy world's CLIP and VAE did not load: {str(error).splitlines()[0]}"
    else:
        reason = "the toy world's CLIP and VAE are not installed"
    parts = tiny_clip_components()
    encoders = FrozenEncoders(
        tiny_vae(), parts["image_encoder"], parts["text_encoder"], parts["tokenizer"], parts["feature_extractor"]
    )
    return encoders.to(device), f"tiny test components ({reason})"


def toy_images(n: int) -> datasets.Dataset:
    """``n`` toy-world images as PNG bytes, the undecoded form `load_image_dataset` gives."""
    rows = []
    for image in ToyWorld(seed=0).sample(n, "train").images:
        buffer = io.BytesIO()
        PIL.Image.fromarray(image).save(buffer, format="PNG")
        rows.append({"bytes": buffer.getvalue(), "path": None})
    return datasets.Dataset.from_dict({"image": rows}, features=datasets.Features({"image": datasets.Image(decode=False)}))


class Workload:
    """The data of every measurement: toy images, through their embedding cache (one per resolution) or raw."""

    def __init__(self, encoders: FrozenEncoders, num_images: int, cache_dir: str, device: torch.device):
        self.encoders, self.cache_dir, self.device = encoders, cache_dir, device
        self.images = toy_images(num_images)
        self.accelerator = Accelerator(cpu=device.type == "cpu")

    def batches(self, resolution: int, cached: bool, batch_size: int, num_workers: int = 0, pin_memory: bool = False, in_memory: bool = False):
        dataset = build_or_load_cache(
            self.accelerator, self.images, self.encoders, self.cache_dir, resolution=resolution, no_cache=not cached
        )
        if in_memory:
            dataset.load_into_memory()
        return Batches(dataset, self.encoders, batch_size, self.device, num_workers, pin_memory)


class Batches:
    """Training batches without end, as train.py gets them: its dataloader, then ``prepare_batch``.

    ``prepare_batch`` runs the frozen encoders (VAE encode + CLIP vision) when the dataset is raw
    images and does nothing more on a cache.
    """

    def __init__(self, dataset, encoders, batch_size, device, num_workers=0, pin_memory=False):
        self.dataset, self.encoders, self.device = dataset, encoders, device
        self.encodes = not isinstance(dataset, CachedEmbeddingDataset)
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=True, drop_last=True,
            num_workers=num_workers, persistent_workers=num_workers > 0, pin_memory=pin_memory,
        )
        self._batches = self._forever()

    def _forever(self):
        while True:
            yield from self.loader

    def load(self) -> dict:
        batch = next(self._batches)
        return {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def prepare(self, batch: dict) -> dict:
        return self.dataset.prepare_batch(batch, self.encoders)


# --------------------------------------------------------------------------------------------------
# One training step, and timers


class PhaseTimer:
    """Wall time per phase of a step; the device is synchronised at every mark."""

    def __init__(self, device: torch.device):
        self.device, self.steps = device, []

    def start(self):
        synchronize(self.device)
        self.current, self.last = {}, now()

    def mark(self, phase: str):
        synchronize(self.device)
        mark = now()
        self.current[phase] = self.current.get(phase, 0.0) + mark - self.last
        self.last = mark

    def stop(self):
        self.steps.append(self.current)

    def median_ms(self) -> dict[str, float]:
        return {phase: 1e3 * statistics.median(step[phase] for step in self.steps) for phase in self.steps[0]}


class _NoTimer:
    def start(self): ...
    def mark(self, phase): ...
    def stop(self): ...


class TrainingStep:
    """train.py's step on a fresh ELBO (vdl method, power spherical posterior, clip prior; or another ``method``), with options.

    Options are the optimisations under test: ``autocast`` dtype, ``channels_last``, AdamW's
    ``foreach``/``fused``, ``ema_foreach``, the attention processor and ``torch.compile``.
    """

    def __init__(
        self, encoders: FrozenEncoders, preset: str, resolution: int, device: torch.device, *,
        autocast: torch.dtype | None = None, channels_last: bool = False, adamw: dict | None = None,
        ema_foreach: bool = False, attention: str = "sdpa", compile: bool = False, seed: int = 0, method: str = "vdl",
    ):
        torch.manual_seed(seed)
        unet = build_unet(
            preset, encoders.embedding_dim, encoders.latent_channels, sample_size=resolution // encoders.vae_scale_factor
        )
        unet.set_attn_processor(AttnProcessor2_0() if attention == "sdpa" else AttnProcessor())
        posterior = TextEmbeddingPosterior(encoders.embedding_dim, encoders.feature_dim) if method == "vdl" else None
        prior = build_prior("clip", encoders.embedding_dim) if method == "vdl" else None
        scheduler = build_noise_scheduler()
        self.elbo = ELBO(unet, scheduler, method=method, posterior=posterior, prior=prior, captions=False).to(device).train()
        if channels_last:
            unet.to(memory_format=torch.channels_last)
        self.parameters = [p for p in self.elbo.parameters() if p.requires_grad]
        # Fused, as train.py's AdamW on the CPU and CUDA (its `adamw`).
        self.optimizer = torch.optim.AdamW(self.parameters, lr=3e-4, weight_decay=1e-2, **{"fused": True, **(adamw or {})})
        self.ema = EMAModel(unet.parameters(), decay=0.999, foreach=ema_foreach)
        self.ema.to(device)
        if compile:
            unet.compile()
        self.unet, self.device = unet, device
        self.autocast, self.channels_last = autocast, channels_last

    def __call__(self, batches: Batches, timer=_NoTimer()):
        timer.start()
        batch = batches.load()
        timer.mark("data wait")
        batch = batches.prepare(batch)
        if batches.encodes:
            timer.mark("encoders")
        if self.channels_last:
            batch["latents"] = batch["latents"].contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast(self.device.type, dtype=self.autocast) if self.autocast else nullcontext()
        with autocast:
            loss, _ = self.elbo(batch)  # the UNet's hooks mark "posterior + KL" and "UNet forward"
        timer.mark("loss")
        loss.backward()
        timer.mark("backward")
        torch.nn.utils.clip_grad_norm_(self.parameters, 1.0)
        timer.mark("clip grad")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        timer.mark("optimizer")
        self.ema.step(self.unet.parameters())
        timer.mark("EMA")
        timer.stop()

    @contextmanager
    def phases(self, timer: PhaseTimer):
        """Marks the UNet's forward apart from the ELBO around it (conditioning, KL, noising before it)."""
        handles = [
            self.unet.register_forward_pre_hook(lambda *_: timer.mark("posterior + KL")),
            self.unet.register_forward_hook(lambda *_: timer.mark("UNet forward")),
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


def timed_steps(step: TrainingStep, batches, count: int, device: torch.device) -> float:
    """Seconds per step over ``count`` steps, the device synchronised only at the ends."""
    synchronize(device)
    start = now()
    for _ in range(count):
        step(batches)
    synchronize(device)
    return (now() - start) / count


def warm_up(step, batches, args, device) -> tuple[int, float]:
    """Runs the warm-up steps; returns steps per window (to last ``--window_s``) and the first step's time."""
    first = timed_steps(step, batches, 1, device)
    last = timed_steps(step, batches, max(args.warmup - 1, 1), device)
    return max(1, round(args.window_s / last)), first


def _attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """QKᵀ and AV of one attention call: ``2·B·heads·L·S·(d + d_v)``."""
    return sdpa_flop_count(query, key, value)


def _attention_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    """Twice the forward (the gradients of both matmuls' inputs), as model FLOPs count it: no recomputation."""
    return 2 * sdpa_flop_count(query, key, value)


# FlopCounterMode counts the GPU attention kernels but not the CPU's (torch 2.13): these fill the gap, and
# count every backward as twice its forward, so that the CPU and the GPU count the same model FLOPs.
ATTENTION_FLOPS = {
    op: formula
    for name, formula in [
        ("_scaled_dot_product_flash_attention_for_cpu", _attention_flops),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", _attention_backward_flops),
        ("_scaled_dot_product_flash_attention_backward", _attention_backward_flops),
        ("_scaled_dot_product_efficient_attention_backward", _attention_backward_flops),
        ("_scaled_dot_product_cudnn_attention_backward", _attention_backward_flops),
    ]
    if (op := getattr(torch.ops.aten, name, None)) is not None
}


def count_flops(fn) -> float:
    """FLOPs of ``fn()``: FlopCounterMode's, with attention counted on every device."""
    counter = FlopCounterMode(display=False, custom_mapping=ATTENTION_FLOPS)
    with counter:
        fn()
    return float(counter.get_total_flops())


def flops_per_step(step: TrainingStep, batches) -> float:
    return count_flops(lambda: step(batches))


class Gemm:
    """An n×n×n GEMM whose rate is MFU's denominator, timed on the same clock and threads as the steps."""

    def __init__(self, n: int, dtype: torch.dtype, device: torch.device):
        self.n, self.device = n, device
        self.a, self.b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        self.a @ self.b  # warm-up

    def flops_per_s(self, repeats: int) -> float:
        """The median rate over ``repeats`` GEMMs."""
        times = []
        for _ in range(repeats):
            synchronize(self.device)
            start = now()
            self.a @ self.b
            synchronize(self.device)
            times.append(now() - start)
        return 2 * self.n**3 / statistics.median(times)


def peak_matmul_flops(n: int, dtype: torch.dtype, device: torch.device, repeats: int) -> float:
    """FLOP/s of an n×n×n GEMM, median of ``repeats`` after one warm-up."""
    return Gemm(n, dtype, device).flops_per_s(repeats)


# --------------------------------------------------------------------------------------------------
# Sections


def benchmark_training(args, encoders, workload, device) -> tuple[list[dict], dict]:
    """A row per preset × cache on/off × batch size; and the profile of the focus setting."""
    rows, profile = [], None
    for preset in args.presets:
        resolution = native_resolution(preset, encoders)
        for cached in (True,) if args.no_uncached else (True, False):
            for batch_size in args.batch_sizes:
                log(f"training: {preset}, batch {batch_size}, {'cached' if cached else 'encoders in the loop'}")
                focus = cached and (preset, batch_size) == (args.focus_preset, args.focus_batch_size)
                rows.append(measure_training(args, encoders, workload, device, preset, resolution, cached, batch_size, focus))
                profile = rows[-1].pop("profile", profile)
    return rows, profile


def native_resolution(preset: str, encoders: FrozenEncoders) -> int:
    return UNET_PRESETS[preset]["sample_size"] * encoders.vae_scale_factor


def measure_training(args, encoders, workload, device, preset, resolution, cached, batch_size, profile=False):
    """Throughput over timed windows, FLOPs of one step, peak memory, the time per phase; optionally a profile."""
    batches = workload.batches(resolution, cached, batch_size)
    step = TrainingStep(encoders, preset, resolution, device)
    gemm = Gemm(args.gemm_size, torch.float32, device)
    reset_peak_memory(device)
    steps_per_window, _ = warm_up(step, batches, args, device)
    # MFU round by round: a GEMM, then a window of steps, on one clock; a change in load hits both.
    peaks, seconds = [], []
    for _ in range(args.windows):
        peaks.append(gemm.flops_per_s(args.gemm_repeats))
        seconds.append(timed_steps(step, batches, steps_per_window, device))
    del gemm
    step_s = statistics.median(seconds)
    memory = peak_memory_mib(device)
    flops = flops_per_step(step, batches)
    mfus = [flops / s / peak for s, peak in zip(seconds, peaks)]
    timer = PhaseTimer(device)
    with step.phases(timer):
        for _ in range(args.phase_steps):
            step(batches, timer)
    phases_ms = timer.median_ms()
    total = sum(phases_ms.values())
    row = {
        "preset": preset, "resolution": resolution, "cached": cached, "batch_size": batch_size,
        "images_per_s": batch_size / step_s, "step_ms": 1e3 * step_s, "steps_timed": args.windows * steps_per_window,
        "gflop_per_step": flops / 1e9, "achieved_gflops": flops / step_s / 1e9,
        "mfu": statistics.median(mfus), "mfu_min": min(mfus), "mfu_max": max(mfus), "peak_gflops_in_rounds": statistics.median(peaks) / 1e9,
        "peak_memory_mib": memory,
        "phases_ms": phases_ms, "phases_pct": {phase: 100 * ms / total for phase, ms in phases_ms.items()},
    }
    if profile:
        row["profile"] = {"preset": preset, "batch_size": batch_size, **profile_steps(step, batches, args.phase_steps, flops, device)}
    return row


def profile_steps(step, batches, count, flops, device) -> dict:
    """torch.profiler over ``count`` steps: the share of op time in matmuls/convolutions, their rate, the top ops."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profiler:
        for _ in range(count):
            step(batches)
        synchronize(device)
    attribute = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [(event.key, getattr(event, attribute) / 1e3 / count) for event in profiler.key_averages()]
    events = sorted([(name, ms) for name, ms in events if ms > 0], key=lambda event: -event[1])
    total_ms = sum(ms for _, ms in events)
    matmul_ms = sum(ms for name, ms in events if MATMUL_OPS.search(name))
    return {
        "op_time_ms_per_step": total_ms,
        "matmul_conv_pct": 100 * matmul_ms / total_ms,
        "matmul_conv_gflops": flops / (matmul_ms / 1e3) / 1e9,
        "top_ops": [{"op": name, "ms_per_step": ms, "pct": 100 * ms / total_ms} for name, ms in events[:8]],
    }


def build_pipeline(encoders, preset, device) -> VDLPipeline:
    torch.manual_seed(0)
    unet = build_unet(preset, encoders.embedding_dim, encoders.latent_channels).to(device).eval()
    scheduler = build_sampling_scheduler(build_noise_scheduler())
    pipeline = VDLPipeline(
        vae=encoders.vae, unet=unet, scheduler=scheduler, tokenizer=encoders.tokenizer,
        text_encoder=encoders.text_encoder, image_encoder=encoders.image_encoder, feature_extractor=encoders.feature_extractor,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@torch.no_grad()
def benchmark_sampling(args, pipeline, device):
    unet, vae, scheduler = pipeline.unet, pipeline.vae, pipeline.scheduler
    side = unet.config.sample_size
    D = unet.config.encoder_hid_dim

    def timed(fn) -> float:
        synchronize(device)
        start = now()
        fn()
        synchronize(device)
        return now() - start

    def unet_calls(z, t, calls_per_step):
        for s in scheduler.timesteps:
            for _ in range(calls_per_step):
                unet(z, s, encoder_hidden_states=None, added_cond_kwargs={"image_embeds": t}, return_dict=False)

    def scheduler_steps(eps, z):
        scheduler.set_timesteps(args.inference_steps, device=device)
        for s in scheduler.timesteps:
            z = scheduler.step(eps, s, z, return_dict=False)[0]

    rows = []
    for batch_size in args.sample_batch_sizes:
        log(f"sampling: {batch_size} image(s), {args.inference_steps} steps")
        call = lambda: pipeline(PROMPT, num_images_per_prompt=batch_size, num_inference_steps=args.inference_steps,
                                guidance_scale=args.guidance_scale, generator=torch.Generator(device).manual_seed(0))
        z = torch.randn(batch_size, unet.config.in_channels, side, side, device=device)
        t = torch.nn.functional.normalize(torch.randn(batch_size, D, device=device), dim=-1)
        parts = {
            "text encoder": lambda: pipeline.encode_prompt(PROMPT, device),
            "UNet (batched CFG)": lambda: unet_calls(torch.cat([z, z]), torch.cat([t, t]), 1),
            "scheduler": lambda: scheduler_steps(z, z),
            "VAE decode": lambda: vae.decode(z / vae.config.scaling_factor, return_dict=False),
        }
        unbatched = lambda: unet_calls(z, t, 2)
        scheduler.set_timesteps(args.inference_steps, device=device)
        call(), unbatched(), [part() for part in parts.values()]  # warm-up
        times = {"pipeline": [], "UNet (unbatched CFG)": [], **{name: [] for name in parts}}
        for _ in range(args.sample_repeats):  # interleaved, so that load changes hit the pipeline and its parts alike
            times["pipeline"].append(timed(call))
            for name, part in parts.items():
                times[name].append(timed(part))
            times["UNet (unbatched CFG)"].append(timed(unbatched))
        ms = {name: 1e3 * statistics.median(values) for name, values in times.items()}
        parts_ms = sum(ms[name] for name in parts)
        rows.append({
            "batch_size": batch_size, "inference_steps": args.inference_steps, "guidance_scale": args.guidance_scale,
            "pipeline_ms": ms["pipeline"], "parts_ms": {name: ms[name] for name in parts}, "sum_of_parts_ms": parts_ms,
            "overhead_pct": 100 * (ms["pipeline"] - parts_ms) / ms["pipeline"],
            "unet_unbatched_cfg_ms": ms["UNet (unbatched CFG)"],
            "batched_cfg_speedup": ms["UNet (unbatched CFG)"] / ms["UNet (batched CFG)"],
        })
    return rows


def benchmark_scaling(args, encoders, workload, device, training_rows):
    by_batch = [
        {k: r[k] for k in ("preset", "cached", "batch_size", "step_ms", "images_per_s", "peak_memory_mib")}
        for r in training_rows
    ]
    by_resolution = []
    for resolution in args.resolutions:
        log(f"scaling: {args.focus_preset}, batch {args.resolution_batch_size}, {resolution}×{resolution}")
        row = measure_training(args, encoders, workload, device, args.focus_preset, resolution, True, args.resolution_batch_size)
        by_resolution.append({k: row[k] for k in ("preset", "resolution", "batch_size", "step_ms", "images_per_s", "gflop_per_step", "mfu", "mfu_min", "mfu_max", "peak_memory_mib")})
        by_resolution[-1]["latent_side"] = resolution // encoders.vae_scale_factor
    return {"batch_size": by_batch, "resolution": by_resolution}


def benchmark_optimisations(args, encoders, workload, device, peaks, training_rows, sampling_rows) -> list[dict]:
    """Each optimisation against train.py's defaults at the focus setting, in one round robin of timed windows.

    The cache and batched CFG were measured by the training and sampling sections.
    """
    preset, batch_size = args.focus_preset, args.focus_batch_size
    where = f"{preset}, batch {batch_size}"
    rows = []
    by_cache = {r["cached"]: r for r in training_rows if (r["preset"], r["batch_size"]) == (preset, batch_size)}
    if len(by_cache) == 2:
        rows.append(optimisation_row("embedding_cache", "cached latents, y, features", where,
                                     by_cache[False]["images_per_s"], by_cache[True]["images_per_s"], "img/s"))
    for r in sampling_rows:
        rows.append(optimisation_row("batched_cfg", "1 UNet call on 2B rows per step, not 2 calls on B", f"sampling, {r['batch_size']} image(s)",
                                     r["unet_unbatched_cfg_ms"], r["unet_unbatched_cfg_ms"] / r["batched_cfg_speedup"], "ms UNet", lower_is_better=True))

    names = args.optimisations
    resolution = native_resolution(preset, encoders)
    runs = {}
    for name in ["baseline", *names]:
        log(f"optimisations: warming up {name} ({where})")
        description, step_options, loader_options = OPTIMISATIONS.get(name, ("train.py's defaults", {}, {}))
        if loader_options.get("num_workers", 0) is None:
            loader_options = {**loader_options, "num_workers": args.num_workers}
        step = TrainingStep(encoders, preset, resolution, device, **step_options)
        batches = workload.batches(resolution, True, batch_size, **loader_options)
        steps_per_window, first_s = warm_up(step, batches, args, device)
        runs[name] = {"step": step, "batches": batches, "steps_per_window": steps_per_window, "first_s": first_s, "seconds": []}
    log(f"optimisations: {args.windows} round(s) of windows")
    for _ in range(args.windows):  # a round robin: a change in the machine's load hits every variant alike
        for run in runs.values():
            run["seconds"].append(timed_steps(run["step"], run["batches"], run["steps_per_window"], device))
    baseline = batch_size / statistics.median(runs["baseline"]["seconds"])
    for name in names:
        run = runs[name]
        step_s = statistics.median(run["seconds"])
        row = optimisation_row(name, OPTIMISATIONS[name][0], where, baseline, batch_size / step_s, "img/s")
        if name == "loader_workers":
            row["variant"] = f"{args.num_workers} data loader workers"
        if name == "compile":
            row["compile_s"] = run["first_s"] - step_s  # the first step compiles forward and backward
        if name == "bf16_autocast":
            row["mfu_vs_bf16_peak"] = flops_per_step(run["step"], run["batches"]) / step_s / peaks["bfloat16"]
        rows.append(row)
    return rows


class KandinskyDecoderStep:
    """A re-creation of the step of diffusers' Kandinsky 2.2 decoder training script
    (``examples/kandinsky2_2/text_to_image/train_text_to_image_decoder.py``, with ``--use_ema``), on
    train.py's UNet, optimiser and batch, so that only the loop differs.

    Per batch, as the script does: its data loader's pixels, the VAE's latents and the CLIP image
    encoder's ``image_embeds`` (no gradient), noise, a uniform timestep, ``add_noise``, the UNet on
    ``added_cond_kwargs={"image_embeds": ...}``, the MSE to the noise, ``loss.item()`` for the running
    log, backward, gradient clipping, AdamW, EMA. ``precomputed``: the same loop on latents and
    embeddings encoded once and held in memory, batches by indexing them, what one writes by hand.
    """

    def __init__(self, encoders: FrozenEncoders, images: datasets.Dataset, preset: str, resolution: int, batch_size: int,
                 device: torch.device, precomputed: bool = False, seed: int = 0):
        torch.manual_seed(seed)
        self.unet = build_unet(preset, encoders.embedding_dim, encoders.latent_channels, sample_size=resolution // encoders.vae_scale_factor)
        self.unet.to(device).train()
        self.scheduler = build_noise_scheduler()
        self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=3e-4, weight_decay=1e-2)
        self.ema = EMAModel(self.unet.parameters(), decay=0.999)
        self.ema.to(device)
        self.encoders, self.batch_size, self.device, self.train_loss = encoders, batch_size, device, 0.0
        transform = ImageTransform(resolution)
        self.loader = torch.utils.data.DataLoader(ImageDataset(images, transform), batch_size=batch_size, shuffle=True, drop_last=True)
        self._batches = self._forever()
        self.precomputed = None
        if precomputed:
            with torch.no_grad():
                encoded = [self.encode(batch["pixel_values"].to(device)) for batch in self.loader]
            self.precomputed = tuple(torch.cat(column) for column in zip(*encoded))

    def _forever(self):
        while True:
            yield from self.loader

    @torch.no_grad()
    def encode(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vae, image_encoder = self.encoders.vae, self.encoders.image_encoder
        latents = vae.encode(pixel_values).latent_dist.sample() * vae.config.scaling_factor
        return latents, image_encoder(pixel_values=self.encoders.clip_pixels(pixel_values)).image_embeds

    def __call__(self, _=None):
        if self.precomputed is None:
            latents, image_embeds = self.encode(next(self._batches)["pixel_values"].to(self.device, non_blocking=True))
        else:
            index = torch.randint(len(self.precomputed[0]), (self.batch_size,), device=self.device)
            latents, image_embeds = (tensor[index] for tensor in self.precomputed)
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device).long()
        noisy_latents = self.scheduler.add_noise(latents, noise, timesteps)
        prediction = self.unet(noisy_latents, timesteps, None, added_cond_kwargs={"image_embeds": image_embeds}).sample
        loss = torch.nn.functional.mse_loss(prediction.float(), noise.float(), reduction="mean")
        self.train_loss += loss.item()  # the script's running log: a host sync every step
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.step(self.unet.parameters())


def benchmark_against_diffusers(args, encoders, workload, device) -> list[dict]:
    """train.py's step (cache memory-mapped, and held in RAM; VDL, and the ``image`` method that does the
    loop's work) against diffusers' Kandinsky 2.2 decoder loop, with its encoders in the step and with
    their outputs precomputed: windows in a round robin, ratios per round."""
    batch_size, rows = args.diffusers_batch_size, []
    for preset in args.diffusers_presets:
        resolution = native_resolution(preset, encoders)
        where = f"{preset}, batch {batch_size}"
        variants = {
            "train.py": (TrainingStep(encoders, preset, resolution, device), workload.batches(resolution, True, batch_size)),
            "train.py, --cache_in_memory": (TrainingStep(encoders, preset, resolution, device), workload.batches(resolution, True, batch_size, in_memory=True)),
            # The same work as diffusers' loop (the UNet on y, no posterior): what the loop itself costs.
            "train.py, --method image": (TrainingStep(encoders, preset, resolution, device, method="image"), workload.batches(resolution, True, batch_size)),
            "diffusers' loop": (KandinskyDecoderStep(encoders, workload.images, preset, resolution, batch_size, device), None),
            "diffusers' loop, precomputed": (KandinskyDecoderStep(encoders, workload.images, preset, resolution, batch_size, device, precomputed=True), None),
        }
        runs = {}
        for name, (step, batches) in variants.items():
            log(f"diffusers: warming up {name} ({where})")
            runs[name] = {"step": step, "batches": batches, "steps_per_window": warm_up(step, batches, args, device)[0], "seconds": []}
        log(f"diffusers: {args.diffusers_rounds} round(s) of windows ({where})")
        for _ in range(args.diffusers_rounds):
            for run in runs.values():
                run["seconds"].append(timed_steps(run["step"], run["batches"], run["steps_per_window"], device))
        ours = runs["train.py"]["seconds"]
        for name, run in runs.items():
            speedups = [theirs / mine for theirs, mine in zip(run["seconds"], ours)]  # > 1: train.py is faster
            rows.append({
                "preset": preset, "batch_size": batch_size, "variant": name, "step_ms": 1e3 * statistics.median(run["seconds"]),
                "images_per_s": batch_size / statistics.median(run["seconds"]), "round_ms": [1e3 * s for s in run["seconds"]],
                "train_py_speedup": statistics.median(speedups), "train_py_speedup_min": min(speedups), "train_py_speedup_max": max(speedups),
            })
        # The loop alone: train.py doing diffusers' work (--method image) against the hand-written loop on precomputed tensors.
        same_work = [theirs / mine for theirs, mine in zip(runs["diffusers' loop, precomputed"]["seconds"], runs["train.py, --method image"]["seconds"])]
        image_row = next(row for row in rows[-len(runs):] if row["variant"] == "train.py, --method image")
        image_row.update(same_work_speedup=statistics.median(same_work), same_work_speedup_min=min(same_work), same_work_speedup_max=max(same_work))
    return rows


def optimisation_row(name, variant, where, baseline, value, unit, lower_is_better=False) -> dict:
    return {"optimisation": name, "variant": variant, "setting": where, "baseline_value": baseline, "variant_value": value,
            "unit": unit, "speedup": baseline / value if lower_is_better else value / baseline}


# --------------------------------------------------------------------------------------------------
# The table


def table_rows(results: dict) -> list[tuple[str, str, str, str, str]]:
    m = results["machine"]
    rows = [
        ("machine", "device", m["device"], "", f"{m['cores']} cores, {m['torch_threads']} torch threads"),
        ("machine", "software", f"torch {m['torch']}", "", f"diffusers {m['diffusers']}, python {m['python']}"),
        ("machine", "encoders", m["encoders"], "", ""),
        ("machine", "load average", " / ".join(f"{x:.1f}" for x in m["load_average_start"]), "1/5/15 min",
         "at the end: " + " / ".join(f"{x:.1f}" for x in m["load_average_end"])),
    ]
    rows.append(("machine", "clock", m["clock"], "", "process CPU time" if m["clock"] == "cpu" else "wall time, device synchronised"))
    for dtype, peak in results["peak_matmul"].items():
        rows.append(("peak", f"{dtype} GEMM {peak['size']}³", f"{peak['gflops']:.1f}", "GFLOP/s", "median of repeats"))
    for r in results.get("training", []):
        setting = f"{r['preset']} b={r['batch_size']} {'cached' if r['cached'] else 'uncached'}"
        rows.append(("training", setting, f"{r['images_per_s']:.1f}", "img/s",
                     f"step {r['step_ms']:.1f} ms, {r['gflop_per_step']:.2f} GFLOP, {r['achieved_gflops']:.1f} GFLOP/s, "
                     f"MFU {100 * r['mfu']:.1f}% [{100 * r['mfu_min']:.1f}–{100 * r['mfu_max']:.1f}] of {r['peak_gflops_in_rounds']:.1f} GFLOP/s, "
                     f"peak {r['peak_memory_mib']:.0f} MiB"))
        feed = r["phases_pct"]["data wait"] + r["phases_pct"].get("encoders", 0.0)
        rows.append(("training", "  time split", f"{feed:.1f}", "% data+enc",
                     ", ".join(f"{phase} {pct:.0f}%" for phase, pct in r["phases_pct"].items())))
    p = results.get("profile")
    if p:
        rows.append(("profile", f"{p['preset']} b={p['batch_size']} cached", f"{p['matmul_conv_pct']:.1f}", "% in mm/conv",
                     f"{p['matmul_conv_gflops']:.1f} GFLOP/s inside mm/conv ops; op time {p['op_time_ms_per_step']:.0f} ms/step"))
        rows.append(("profile", "  top ops", "", "", ", ".join(f"{o['op']} {o['pct']:.0f}%" for o in p["top_ops"])))
    for r in results.get("sampling", []):
        parts = ", ".join(f"{name} {ms:.1f}" for name, ms in r["parts_ms"].items())
        rows.append(("sampling", f"{r['batch_size']} image(s), {r['inference_steps']} steps, CFG", f"{r['pipeline_ms']:.1f}", "ms",
                     f"sum of parts {r['sum_of_parts_ms']:.1f} ms ({parts}); overhead {r['overhead_pct']:.1f}%"))
        rows.append(("sampling", "  unbatched CFG", f"{r['unet_unbatched_cfg_ms']:.1f}", "ms UNet",
                     f"batched CFG is {r['batched_cfg_speedup']:.2f}× faster"))
    for r in results.get("scaling", {}).get("resolution", []):
        rows.append(("scaling", f"{r['preset']} b={r['batch_size']} {r['resolution']}px (latent {r['latent_side']})",
                     f"{r['step_ms']:.1f}", "ms/step",
                     f"{r['images_per_s']:.1f} img/s, {r['gflop_per_step']:.2f} GFLOP, MFU {100 * r['mfu']:.1f}% "
                     f"[{100 * r['mfu_min']:.1f}–{100 * r['mfu_max']:.1f}], peak {r['peak_memory_mib']:.0f} MiB"))
    for r in results.get("optimisations", []):
        detail = f"{r['variant']}: {r['baseline_value']:.2f} → {r['variant_value']:.2f} {r['unit']} ({r['setting']})"
        if "compile_s" in r:
            detail += f"; compile {r['compile_s']:.1f} s"
        if "mfu_vs_bf16_peak" in r:
            detail += f"; MFU against the bf16 peak {100 * r['mfu_vs_bf16_peak']:.1f}%"
        rows.append(("optimisation", r["optimisation"], f"{r['speedup']:.2f}", "× speed", detail))
    for r in results.get("diffusers", []):
        ratio = f"{r['train_py_speedup']:.2f}" if r["variant"] != "train.py" else "1"
        detail = f"[{r['train_py_speedup_min']:.2f}–{r['train_py_speedup_max']:.2f}] over rounds; {r['step_ms']:.1f} ms/step, {r['images_per_s']:.1f} img/s"
        if "same_work_speedup" in r:
            detail += (f"; against diffusers' loop on precomputed tensors (the same work): {r['same_work_speedup']:.2f}× "
                       f"[{r['same_work_speedup_min']:.2f}–{r['same_work_speedup_max']:.2f}] faster")
        rows.append(("diffusers", f"{r['preset']} b={r['batch_size']}: {r['variant']}", ratio, "× (train.py faster if > 1)", detail))
    return rows


def format_table(rows) -> str:
    header = ("section", "setting", "value", "unit", "detail")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(4)]
    lines = [" | ".join(str(cell).ljust(width) for cell, width in zip(row[:4], widths)) + " | " + row[4] for row in [header, *rows]]
    lines.insert(1, "-" * min(max(map(len, lines)), 160))
    return "\n".join(lines)


def log(message: str) -> None:
    print(f"[benchmark] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    args = parse_args(argv)
    threads, validate = torch.get_num_threads(), torch.distributions.Distribution._validate_args
    torch.set_num_threads(args.threads or threads)
    torch.distributions.Distribution.set_default_validate_args(False)  # as train.py
    try:
        return run(args)
    finally:  # main() may be called from other code (the tests): leave its settings as they were
        torch.set_num_threads(threads)
        torch.distributions.Distribution.set_default_validate_args(validate)


def run(args) -> dict:
    global _clock
    device = torch.device(args.device)
    _clock = CLOCKS[args.clock]
    torch.manual_seed(0)
    encoders, encoders_name = load_encoders(device)
    results = {"machine": {**machine_info(device, encoders_name), "clock": args.clock}, "arguments": vars(args)}
    log(f"{results['machine']['device']}; encoders: {encoders_name}")

    dtypes = [torch.float32] + ([torch.bfloat16] if "bf16_autocast" in args.optimisations else [])
    peaks = {str(dtype).removeprefix("torch."): peak_matmul_flops(args.gemm_size, dtype, device, args.gemm_repeats) for dtype in dtypes}
    results["peak_matmul"] = {dtype: {"size": args.gemm_size, "gflops": flops / 1e9} for dtype, flops in peaks.items()}
    num_images = 2 * max(args.batch_sizes + [args.focus_batch_size, args.resolution_batch_size, args.diffusers_batch_size])
    with tempfile.TemporaryDirectory() as cache_dir:
        workload = Workload(encoders, num_images, cache_dir, device)
        if "training" in args.sections:
            results["training"], results["profile"] = benchmark_training(args, encoders, workload, device)
        if "sampling" in args.sections:
            results["sampling"] = benchmark_sampling(args, build_pipeline(encoders, args.focus_preset, device), device)
        if "scaling" in args.sections:
            results["scaling"] = benchmark_scaling(args, encoders, workload, device, results.get("training", []))
        if "optimisations" in args.sections:
            results["optimisations"] = benchmark_optimisations(
                args, encoders, workload, device, peaks, results.get("training", []), results.get("sampling", [])
            )
        if "diffusers" in args.sections:
            results["diffusers"] = benchmark_against_diffusers(args, encoders, workload, device)
    results["machine"]["load_average_end"] = list(os.getloadavg())

    print(format_table(table_rows(results)))
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2))
        log(f"wrote {args.output}")
    return results


if __name__ == "__main__":
    main()
