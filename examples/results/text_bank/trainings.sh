#!/usr/bin/env bash
# Issue 13: each setting over all its trainings at one budget (6000 steps × 32), per world: a single training's
# FD moves by up to ~15 on retraining, so a setting is judged on the mean over its trainings. The ± is the
# standard error of that mean over trainings (their spread over sqrt(n): training and evaluation noise both).
# Each row is a benchmark report already in this folder (e_step.md lists how each was trained).
# Writes trainings.md beside this script.
cd "$(dirname "$0")"
python - <<'PY' | tee trainings.md
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path.cwd().parents[1]))
from results_table import COLUMNS as REPORT_COLUMNS, read_row

SETTINGS = {  # label: reports (RUN:METHOD), any world; each report's seed is its world
    "supervised (real captions)": ["../lr4e-3/toy_benchmark.json:supervised", "world0-seed20-supervised:supervised", "seed1-baselines:supervised"],
    "prior-sample, the prior's top 8": ["seed0-choice-control:prior-sample", "world0-seed10-top8-prior-sample:prior-sample", "seed1-choice-control:prior-sample"],
    "vdl, top 8, no E-step": ["seed0-top8:vdl", "world0-seed10-top8-vdl:vdl", "seed1-top8:vdl"],
    "vdl, top 8, E-step among all 8 (make toy until 2026-12-01)": ["seed0-e-step-no-groups:vdl", "world0-seed10-e-step:vdl", "../make_toy/2026-11-30_e_step_all8_eval.json:evaluate", "seed1-e-step-no-groups:vdl", "world1-seed11-e-step:vdl"],
    "the same, --e_step_balance 0.75 (make toy earlier on 2026-12-01)": ["seed0-e-step-balanced-0.75:vdl"] + [f"world{w}-seed{t}-e-step-balanced-0.75:vdl" for w, t in ((0, 20), (0, 21), (0, 22), (0, 23), (1, 20), (1, 21))] + ["seed1-e-step-balanced-0.75:vdl"],
    "the same, --e_step_balance 0.5 (make toy)": [f"world{w}-seed{t}-e-step-balanced-0.5:vdl" for w, t in [(0, t) for t in range(20, 30)] + [(1, 20), (1, 21), (1, 22)]] + ["../make_toy/2026-12-01_e_step_balanced_0.5_eval.json:evaluate"],
}
# A report ending ":evaluate" is an `evaluate.py` report of a `make toy` from a fresh clone (the benchmark's captions
# and noise, no 40-pairs figure): a training like the others, counted in every column but 40 pairs.
# Settings trained with the same training seeds on the same world, compared training by training: the difference
# B − A per (world, training seed), its mean ± standard error over those pairs.
PAIRED = {  # label: (report A, report B, the (world, training seed) pairs)
    "--e_step_balance 0.5 − 0.75": ("world{w}-seed{t}-e-step-balanced-0.75:vdl", "world{w}-seed{t}-e-step-balanced-0.5:vdl", ((0, 20), (0, 21), (0, 22), (0, 23), (1, 20), (1, 21))),
}
COLUMNS = {"captions": "captions: all mentioned right", "position": "position", "40 pairs": "40 pairs", "oracle FD": "oracle FD ↓"}

def read(report: str):
    """(world, figures) of one report, or None while its training is still running."""
    path, _, run = report.rpartition(":")
    path = path if path.endswith(".json") else f"{path}/results.json"
    if not Path(path).is_file():
        return None
    if run == "evaluate":
        data = json.loads(Path(path).read_text())
        return data["settings"]["world_seed"], {heading: data["metrics"].get(key) if part == "metrics" else None for heading, (part, key) in REPORT_COLUMNS}
    _, world, figures = read_row(f"row={path}:{run}")
    return world, figures


def summary(values: list[float], digits: int, sign: str = "") -> str:
    """Mean, and with more than one value its standard error and range."""
    number = lambda value: f"{value:{sign}.{digits}f}"
    text = number(statistics.mean(values))
    if len(values) > 1:
        low, high = number(min(values)), number(max(values))
        text += f" ± {statistics.stdev(values) / len(values) ** 0.5:.{digits}f} ({low}{' to ' if sign else '–'}{high})"
    return text


def digits(heading: str) -> int:
    return 1 if heading.startswith("oracle FD") else 3


print("| setting | world | trainings | " + " | ".join(COLUMNS) + " |")
print("|---|---|---|" + "---|" * len(COLUMNS))
for label, reports in SETTINGS.items():
    by_world = {}
    for world, figures in filter(None, map(read, reports)):
        by_world.setdefault(world, []).append(figures)
    for world, trainings in sorted(by_world.items()):
        cells = [summary([figures[heading]["value"] for figures in trainings if figures[heading]], digits(heading)) for heading in COLUMNS.values()]
        print(f"| {label} | {world} | {len(trainings)} | " + " | ".join(cells) + " |")

print("\n| difference, the same trainings | world | pairs | " + " | ".join(COLUMNS) + " |")
print("|---|---|---|" + "---|" * len(COLUMNS))
for label, (report_a, report_b, trainings) in PAIRED.items():
    by_world = {}
    for w, t in trainings:
        a, b = read(report_a.format(w=w, t=t)), read(report_b.format(w=w, t=t))
        if a and b:
            by_world.setdefault(w, []).append((a[1], b[1]))
    for world, pairs in sorted(by_world.items()):
        cells = [summary([b[heading]["value"] - a[heading]["value"] for a, b in pairs], digits(heading), "+") for heading in COLUMNS.values()]
        print(f"| {label} | {world} | {len(pairs)} | " + " | ".join(cells) + " |")
PY
