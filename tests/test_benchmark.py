"""The speed benchmark (examples/benchmark.py) runs end to end at its smallest settings and reports every section."""

import importlib.util
import json
import math
from numbers import Number
from pathlib import Path

import pytest
import torch

BENCHMARK = Path(__file__).parents[1] / "examples" / "benchmark.py"
GPU_BENCHMARK = BENCHMARK.with_name("benchmark_gpu.py")
SECTIONS = ("peak_matmul", "training", "profile", "sampling", "scaling", "optimisations")
MAY_BE_NEGATIVE = {"overhead_pct"}  # the pipeline minus its parts: noise can put it below zero


def load_benchmark(path=BENCHMARK):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def numbers(tree, key=None):
    """(key, value) for every number in a JSON tree (booleans are flags, not measurements)."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from numbers(v, k)
    elif isinstance(tree, list):
        for v in tree:
            yield from numbers(v, key)
    elif isinstance(tree, Number) and not isinstance(tree, bool):
        yield key, tree


def test_smallest_benchmark_reports_every_section(tmp_path, capsys):
    output = tmp_path / "results.json"
    threads = torch.get_num_threads()
    benchmark = load_benchmark()
    benchmark.main([
        "--presets", "tiny", "--batch_sizes", "2", "--windows", "2", "--warmup", "1", "--window_s", "0",
        "--phase_steps", "1", "--gemm_size", "64", "--gemm_repeats", "2", "--sample_batch_sizes", "1",
        "--inference_steps", "2", "--sample_repeats", "1", "--resolutions", "32", "--resolution_batch_size", "2",
        "--optimisations", "ema_foreach", "--threads", "1", "--output", str(output),
    ])
    results = json.loads(output.read_text())

    assert torch.get_num_threads() == threads  # --threads is undone when main returns
    assert results["machine"]["cores"] > 0 and results["machine"]["encoders"]
    for section in SECTIONS:
        values = list(numbers(results[section]))
        assert values, f"section {section} has no numbers"
        for key, value in values:
            assert math.isfinite(value), (section, key, value)
            assert key in MAY_BE_NEGATIVE or value > 0, (section, key, value)

    assert results["machine"]["clock"] == "cpu"  # the GEMM and the steps on one clock: process CPU time
    for row in results["training"]:
        assert row["mfu_min"] <= row["mfu"] <= row["mfu_max"]
    (cached, uncached) = sorted(results["training"], key=lambda row: not row["cached"])
    assert set(uncached["phases_pct"]) == set(cached["phases_pct"]) | {"encoders"}
    assert math.isclose(sum(cached["phases_pct"].values()), 100.0)
    assert {row["optimisation"] for row in results["optimisations"]} == {"embedding_cache", "batched_cfg", "ema_foreach"}
    assert [row["resolution"] for row in results["scaling"]["resolution"]] == [32]

    table = capsys.readouterr().out
    for section in ("machine", "peak", "training", "profile", "sampling", "scaling", "optimisation"):
        assert f"\n{section} " in table


def test_attention_is_counted_on_the_cpu_as_model_flops():
    """FlopCounterMode misses the CPU's SDPA kernels: QKᵀ and AV, 4·B·heads·L·S·d forward, twice that backward."""
    benchmark = load_benchmark()
    B, heads, L, S, d = 2, 4, 64, 16, 8
    q = torch.randn(B, heads, L, d, requires_grad=True)
    k, v = (torch.randn(B, heads, S, d, requires_grad=True) for _ in range(2))
    flops = benchmark.count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v).sum().backward())
    assert flops == 3 * 4 * B * heads * L * S * d


@pytest.mark.slow  # about 20 s on a loaded 2-core CPU: the toy encoders, a cache and four training loops
def test_the_comparison_with_diffusers_loop_reports_ratios_with_their_spread(tmp_path, capsys):
    benchmark = load_benchmark()
    results = benchmark.main([
        "--sections", "diffusers", "--diffusers_presets", "tiny", "--diffusers_batch_size", "2", "--diffusers_rounds", "2",
        "--warmup", "1", "--window_s", "0", "--gemm_size", "64", "--gemm_repeats", "1", "--threads", "1",
        "--output", str(tmp_path / "results.json"),
    ])
    rows = {row["variant"]: row for row in results["diffusers"]}
    assert set(rows) == {
        "train.py", "train.py, --cache_in_memory", "train.py, --method image", "diffusers' loop", "diffusers' loop, precomputed"
    }
    assert rows["train.py"]["train_py_speedup"] == 1.0
    assert rows["train.py, --method image"]["same_work_speedup"] > 0  # the loop alone: the same work as diffusers' loop
    for row in rows.values():
        assert 0 < row["train_py_speedup_min"] <= row["train_py_speedup"] <= row["train_py_speedup_max"]
        assert row["images_per_s"] > 0
    assert "\ndiffusers " in capsys.readouterr().out


def test_the_gpu_benchmark_runs_on_the_cpu_at_a_tiny_size(tmp_path, capsys):
    rows = load_benchmark(GPU_BENCHMARK).main([
        "--device", "cpu", "--preset", "tiny", "--resolution", "64", "--batch_sizes", "2", "--sample_batch_sizes", "1",
        "--inference_steps", "2", "--no_compile", "--embedding_dim", "32", "--feature_dim", "16", "--vae_channels", "32", "32", "32", "32",
        "--warmup", "1", "--windows", "2", "--window_s", "0", "--threads", "1", "--output", str(tmp_path / "gpu.json"),
    ])
    assert [row["section"] for row in rows] == ["training", "sampling"]
    for row in rows:
        assert row["images_per_s"] > 0 and row["tflop"] > 0 and 0 < row["mfu_min"] <= row["mfu"] <= row["mfu_max"]
    table = capsys.readouterr().out
    assert "training | tiny 64px b=2" in table and "sampling | 1 image(s)" in table
    assert json.loads((tmp_path / "gpu.json").read_text())["rows"] == rows


def test_the_gpu_benchmark_knows_the_bf16_peak_of_the_cards_by_name():
    benchmark_gpu = load_benchmark(GPU_BENCHMARK)
    peak = lambda name: next(tflops for key, tflops in benchmark_gpu.PEAK_BF16_TFLOPS if key in name)
    assert peak("NVIDIA H200") == peak("NVIDIA H100 80GB HBM3") == 989.0
    assert peak("NVIDIA H100 PCIe") == 756.0 and peak("NVIDIA A100-SXM4-80GB") == 312.0 and peak("NVIDIA L40S") == 362.0
