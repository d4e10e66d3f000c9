#!/usr/bin/env bash
# Issue 13: is the E-step's β the lever between its position gain and its mention bias? The weights of one
# E-step at another β follow from the same losses: log w' = log π + (0.05 / β') (log w − log π) + const, for
# the choice w made at β = 0.05. For each seed's make-toy choice (E-step among all 8 at step 3125,
# RUN = the run of e_step.sh's "among all 8" row, CACHE = its cache folder with bank-top8-*.npy), writes the
# choices at β' = 0.05, 0.1, 0.2, unbalanced and balanced (vdl_diffusion.e_step.balance), and their ground truth:
#   bash examples/results/text_bank/temper.sh SEED RUN CACHE      (writes temper/seedS.json)
# then, with both seeds done, temper.md:   bash examples/results/text_bank/temper.sh table
set -e
cd "$(dirname "$0")"
mkdir -p temper
if [ "$1" != table ]; then
  seed=$1 run=$2 cache=$3 tmp=$(mktemp -d)
  python - "$run" "$cache" "$tmp" <<'PY'
import sys
from pathlib import Path

import numpy as np
import torch

from vdl_diffusion.e_step import balance

run, cache, out = map(Path, sys.argv[1:])
(choice_file,) = (run / "e_step").glob("choice-step*.npy")
(prior_file,) = cache.glob("bank-top8-*.npy")
choice, prior = np.load(choice_file), np.load(prior_file)
assert np.array_equal(choice["index"], prior["index"]), "the choice was not made on this cache's candidates"
log_w = torch.from_numpy(choice["logit"].copy()).double()
log_pi = torch.log_softmax(torch.from_numpy(prior["logit"].copy()).double(), -1)
for beta in (0.05, 0.1, 0.2):
    tempered = torch.log_softmax(log_pi + (0.05 / beta) * (log_w - log_pi), -1)
    for name, log_v in ((f"{beta:g}", tempered), (f"{beta:g} balanced", balance(tempered, log_pi, torch.from_numpy(choice["index"].astype(np.int64))))):
        rows = choice.copy()
        rows["logit"] = log_v.float().numpy()
        np.save(out / f"{name}.npy", rows)
PY
  for f in "$tmp"/*.npy; do
    name=$(basename "$f" .npy)
    python ../../toy_world/choose_candidates.py --run "$run" --cache "$cache" --seed "$seed" --truth_of "$f" 2>/dev/null \
      | python -c "import json, sys; t = sys.stdin.read(); print(json.dumps({'$name': json.loads(t[t.index('{'):])}))"
  done | python -c "import json, sys; d = {}; [d.update(json.loads(l)) for l in sys.stdin]; json.dump(d, open('temper/seed$seed.json', 'w'), indent=1)"
  rm -r "$tmp"
  exit
fi
python - <<'PY' | tee temper.md
import json
from pathlib import Path

print("| E-step's β | seed | position right | attributes named | silent colour TV | silent background TV | silent position TV |")
print("|---|---|---|---|---|---|---|")
for seed in (0, 1):
    report = json.loads(Path(f"temper/seed{seed}.json").read_text())
    first = next(iter(report.values()))["prior"]
    rows = [("the prior's top 8", first)] + [(name, r["chosen"]) for name, r in sorted(report.items(), key=lambda kv: (float(kv[0].split()[0]), kv[0]))]
    for name, c in rows:
        tv = [f"{c[f'unnamed {a}: TV from data']:.3f}" for a in ("colour", "background", "position")]
        print(f"| {name} | {seed} | {c['position']:.3f} | {c['attributes named']:.2f} | " + " | ".join(tv) + " |")
PY
