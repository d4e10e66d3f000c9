"""The speed benchmark (examples/benchmark.py) runs end to end at its smallest settings and reports every section."""

import importlib.util
import json
import math
from numbers import Number
from pathlib import Path

import torch

BENCHMARK = Path(__file__).parents[1] / "examples" / "benchmark.py"
SECTIONS = ("peak_matmul", "training", "profile", "sampling", "scaling", "optimisations")
MAY_BE_NEGATIVE = {"overhead_pct"}  # the pipeline minus its parts: noise can put it below zero


def load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark", BENCHMARK)
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

    (cached, uncached) = sorted(results["training"], key=lambda row: not row["cached"])
    assert set(uncached["phases_pct"]) == set(cached["phases_pct"]) | {"encoders"}
    assert math.isclose(sum(cached["phases_pct"].values()), 100.0)
    assert {row["optimisation"] for row in results["optimisations"]} == {"embedding_cache", "batched_cfg", "ema_foreach"}
    assert [row["resolution"] for row in results["scaling"]["resolution"]] == [32]

    table = capsys.readouterr().out
    for section in ("machine", "peak", "training", "profile", "sampling", "scaling", "optimisation"):
        assert f"\n{section} " in table
