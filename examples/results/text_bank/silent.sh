#!/usr/bin/env bash
# Issue 13: what the generated images show where the caption is silent (evaluate_toy's {attribute}_silent_tv),
# beside the oracle FD. Each silent/NAME.json comes from a finished run of the benchmark (RUN = its
# runs/<method> folder), evaluated on the benchmark's captions and noise:
#   python examples/evaluate.py RUN --world_seed S --seeds 0 1 --num_samples 256 --output silent/NAME.json
# (The balanced, retrained, λ = 0.5, prior-sample E-step, fresh two-stage and constrained-choice runs' files are their runs/<method>/benchmark_metrics.json: the benchmark made the same evaluation.)
# Writes silent.md beside this script from the JSON files.
cd "$(dirname "$0")"
python - <<'PY' | tee silent.md
import json
import statistics
from pathlib import Path

ROWS = [  # (label, file stem; {seed} is the world), in table order
    ("supervised (real captions)", "seed{seed}-supervised"),
    ("supervised, retrained (training seed 20)", "world{seed}-seed20-supervised"),
    ("vdl, top 8, no E-step", "seed{seed}-top8"),
    ("prior-sample on the prior's top 8", "seed{seed}-choice-control"),
    ("vdl, top 8, no E-step, retrained (world 0, training seed 10)", "world{seed}-seed10-top8-vdl"),
    ("prior-sample on the prior's top 8, retrained (world 0, training seed 10)", "world{seed}-seed10-top8-prior-sample"),
    ("vdl, top 8, no E-step, without gradient clipping", "world{seed}-top8-vdl-noclip"),
    ("prior-sample on the prior's top 8, without gradient clipping", "world{seed}-top8-prior-sample-noclip"),
    ("the same with the E-step at 0.5", "seed{seed}-prior-sample-e-step"),
    ("vdl, top 8, E-step among all 8 (make toy until 2026-12-01)", "seed{seed}-e-step-no-groups"),
    ("the same, balanced (--e_step_balance)", "seed{seed}-e-step-balanced"),
    ("the same, balanced to λ = 0.75 (--e_step_balance 0.75)", "seed{seed}-e-step-balanced-0.75"),
    ("the same, retrained (training seed 20)", "world{seed}-seed20-e-step-balanced-0.75"),
    ("the same, retrained (training seed 21)", "world{seed}-seed21-e-step-balanced-0.75"),
    ("the same, retrained (training seed 22)", "world{seed}-seed22-e-step-balanced-0.75"),
    ("the same, retrained (training seed 23)", "world{seed}-seed23-e-step-balanced-0.75"),
    *[(f"balanced to λ = 0.5 (--e_step_balance 0.5), training seed {t}", f"world{{seed}}-seed{t}-e-step-balanced-0.5") for t in range(20, 30)],
    ("the same with --use_ema", "seed{seed}-e-step-ema"),
    ("the same retrained (training seed 10 / 11)", "seed{seed}-e-step-retrained"),
    ("two stages: prior-sample on a finished run's choice", "seed{seed}-choice"),
    ("vdl, fresh, on the same choice", "seed{seed}-choice-vdl"),
    ("two stages in train.py: vdl, fresh, on the balanced choice", "seed{seed}-restart-balanced"),
    ("prior-sample, fresh, on the balanced choice", "seed{seed}-restart-balanced-prior-sample"),
    ("vdl, fresh, on the choice among all 8", "seed{seed}-restart-unbalanced"),
    ("vdl, fresh, on that choice balanced to λ = 0.5", "seed{seed}-balanced-0.5-vdl"),
    ("vdl, fresh, on that choice balanced to λ = 0.75", "seed{seed}-balanced-0.75-vdl"),
    ("vdl, fresh, on that choice within groups naming the same attributes (toy parser)", "seed{seed}-same-attributes-vdl"),
    ("vdl, fresh, on that choice within groups naming the same attributes but the position (toy parser)", "seed{seed}-same-attributes-but-position-vdl"),
    ("the same choice balanced to λ = 0.75, retrained (world 0, training seed 10)", "world{seed}-seed10-balanced-0.75-vdl"),
    ("the same choice balanced (λ = 1), retrained (world 0, training seed 10)", "world{seed}-seed10-balanced-1-vdl"),
    ("the same choice within mention patterns, retrained (world 0, training seed 10)", "world{seed}-seed10-same-attributes-vdl"),
    ("the same choice within mention patterns but the position, retrained (world 0, training seed 10)", "world{seed}-seed10-same-attributes-but-position-vdl"),
]
ATTRIBUTES = ("shape", "colour", "size", "position", "background")
evaluations = []
print("| run | seed | oracle FD ↓ | silent colour TV ↓ | silent position TV ↓ | silent background TV ↓ |")
print("|---|---|---|---|---|---|")
for label, stem in ROWS:
    for seed in (0, 1):
        path = Path("silent") / f"{stem.format(seed=seed)}.json"
        if path.is_file():
            m = json.loads(path.read_text())["metrics"]
            cells = [f"{m['oracle_fd']['value']:.0f} ± {m['oracle_fd']['se']:.0f}"]
            cells += [f"{m[f'{a}_silent_tv']['value']:.2f} ± {m[f'{a}_silent_tv']['se']:.2f} (n = {m[f'{a}_silent_tv']['n']})" for a in ("colour", "position", "background")]
            print(f"| {label} | {seed} | " + " | ".join(cells) + " |")
            evaluations.append(m)

# Which silent attribute the FD goes with, over every evaluation above (trainings of all settings, both worlds).
print(f"\nPearson correlation of the oracle FD with each silent TV over these {len(evaluations)} evaluations:\n")
print("| " + " | ".join(ATTRIBUTES) + " |\n" + "|---" * len(ATTRIBUTES) + "|")
fd = [m["oracle_fd"]["value"] for m in evaluations]
print("| " + " | ".join(f"{statistics.correlation([m[f'{a}_silent_tv']['value'] for m in evaluations], fd):+.2f}" for a in ATTRIBUTES) + " |")
PY
