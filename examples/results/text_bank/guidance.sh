#!/usr/bin/env bash
# Issue 13: does classifier-free guidance amplify the images' silent background? (the test fixed in advance
# in docs/text_bank.md). Each pipeline of make toy's setting is evaluated at guidance 3.0 by the benchmark
# (silent/NAME.json) and again at 1.0 on the same captions and noise:
#   python examples/evaluate.py RUN --world_seed 0 --seeds 0 1 --num_samples 256 --guidance_scale 1.0 \
#       --output guidance/NAME.json
# Reading: amplified if the mean over pipelines of TV(3.0) − TV(1.0) exceeds 0 by more than 2 s.e.;
# not if the mean is ≤ 0; cannot tell otherwise. Writes guidance.md beside this script.
cd "$(dirname "$0")"
python - <<'PY' | tee guidance.md
import json
import statistics
from pathlib import Path

NAMES = [f"world0-seed{t}-e-step-balanced-0.5" for t in (27, 28, 29)]
COLUMNS = ("background_silent_tv", "colour_silent_tv", "position_silent_tv", "oracle_fd", "all_mentioned_accuracy", "position_accuracy")


def cell(metric):
    return f"{metric['value']:.3f} ± {metric['se']:.3f}"


print("| pipeline | guidance | " + " | ".join(COLUMNS) + " |")
print("|---|---|" + "---|" * len(COLUMNS))
differences = {column: [] for column in COLUMNS}
for name in NAMES:
    paths = {3.0: Path("silent") / f"{name}.json", 1.0: Path("guidance") / f"{name}.json"}
    if not all(path.is_file() for path in paths.values()):
        continue
    metrics = {scale: json.loads(path.read_text())["metrics"] for scale, path in paths.items()}
    for scale, m in metrics.items():
        print(f"| {name} | {scale} | " + " | ".join(cell(m[column]) for column in COLUMNS) + " |")
    for column in COLUMNS:
        differences[column].append(metrics[3.0][column]["value"] - metrics[1.0][column]["value"])

n = len(differences["background_silent_tv"])
print(f"\nGuidance 3.0 − 1.0, mean ± s.e. over the {n} pipelines:\n")
print("| " + " | ".join(COLUMNS) + " |\n" + "|---" * len(COLUMNS) + "|")
if n >= 2:
    print("| " + " | ".join(f"{statistics.mean(d):+.3f} ± {statistics.stdev(d) / n ** 0.5:.3f}" for d in differences.values()) + " |")
    d = differences["background_silent_tv"]
    mean, se = statistics.mean(d), statistics.stdev(d) / n ** 0.5
    verdict = "amplified" if mean - 2 * se > 0 else "not amplified" if mean <= 0 else "cannot tell"
    print(f"\nSilent background, the reading fixed in advance: {verdict} ({mean:+.3f} ± {se:.3f}).")
PY
