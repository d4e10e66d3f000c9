#!/usr/bin/env bash
# Issue 13: what would the E-step's choice be worth if it kept the caption writers' mention habit? The make-toy
# choice (E-step among all 8, RUN = the run of e_step.sh's "among all 8" row, CACHE = its cache folder with
# bank-top8-*.npy) fixes position mostly by moving mass to texts that name more, and names some attributes more
# for some of their values. From the same losses (log w − log π = −n_latent · L / β + const per image) this writes
# the choice under each constraint, and its ground truth:
#   - balanced to λ of the way from the choice's use of each bank text to the prior's (balance(strength=λ), as
#     train.py --e_step_balance λ makes it; λ = 1: --e_step_balance);
#   - within groups of candidates naming as many attributes (choose_candidates.py --keep_mentions);
#   - within groups naming the same attributes (toy only: the toy world's caption parser reads each text):
#     per image, each mention pattern keeps its prior mass, so only the values named can change; and the same
#     knowing the truth (each group's mass on its candidates entirely true of the image, where it has any): the
#     most such a choice could fix; and within groups naming the same attributes but the position, which may then
#     be named more or less often (toy parser);
#   - without a parser, within groups of near texts: an image's candidates joined where their bank embeddings'
#     cosine exceeds τ (and so on, transitively), each group keeping its prior mass.
#   bash examples/results/text_bank/constrain.sh SEED RUN CACHE OUT   (choices in OUT/NAME.npy, for train.py
#                                                                      --bank_choice; writes constrain/seedS.json)
# then, with both seeds done, constrain.md:   bash examples/results/text_bank/constrain.sh table
set -e
cd "$(dirname "$0")"
mkdir -p constrain
if [ "$1" != table ]; then
  seed=$1 run=$2 cache=$3 out=$4
  mkdir -p "$out"
  python - "$seed" "$run" "$cache" "$out" <<'PY'
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path.cwd().parents[1] / "toy_world"))
from choose_candidates import image_order
from posterior_report import load_run

from vdl_diffusion.e_step import balance, choose
from vdl_diffusion.toy import ATTRIBUTE_NAMES, ToyWorld

seed, (run, cache, out) = int(sys.argv[1]), map(Path, sys.argv[2:])
(choice_file,) = (run / "e_step").glob("choice-step*.npy")
(prior_file,) = cache.glob("bank-top8-*.npy")
choice, prior = np.load(choice_file), np.load(prior_file)
assert np.array_equal(choice["index"], prior["index"]), "the choice was not made on this cache's candidates"
entries = torch.from_numpy(choice["index"].astype(np.int64))
log_w = torch.from_numpy(choice["logit"].copy()).double()
log_pi = torch.log_softmax(torch.from_numpy(prior["logit"].copy()).double(), -1)
_, prior_model, texts = load_run(run, seed)
read = [ToyWorld.read_caption(text) for text in texts]
count = torch.tensor([len(values) for values in read])
pattern, but_position = (
    torch.tensor([sum(1 << i for i, a in enumerate(ATTRIBUTE_NAMES) if a in values and a not in free) for values in read]) for free in ((), ("position",))
)
# choose() weighs π by exp(-n_latent L / β): the choice's own score, with n_latent = β = 1.
losses = -(log_w - log_pi)
choices = {"none": log_w}  # make toy's choice
choices |= {f"balanced-{lam:g}": balance(log_w, log_pi, entries, strength=lam) for lam in (0.5, 0.75, 1)}
choices["as-many"] = choose(log_pi, losses, 1, 1.0, count[entries])
choices["same-attributes"] = choose(log_pi, losses, 1, 1.0, pattern[entries])
choices["same-attributes-but-position"] = choose(log_pi, losses, 1, 1.0, but_position[entries])
images = image_order(cache)
labels = ToyWorld(seed).sample_labels(len(images), "train")
true = torch.tensor([[all(labels[a][image] == v for a, v in read[j].items()) for j in row] for image, row in zip(images, entries.tolist())])
choices["same-attributes-truth"] = choose(log_pi, 1e4 * (~true).double(), 1, 1.0, pattern[entries])
bank = torch.nn.functional.normalize(prior_model.bank.double(), dim=-1)[entries]
for tau in (0.9, 0.94, 0.97):
    joined = (bank @ bank.transpose(1, 2) > tau).double()
    for _ in range(3):  # transitive closure over 8 candidates
        joined = (joined @ joined > 0).double()
    first_member = torch.where(joined > 0, torch.arange(entries.shape[1], dtype=torch.float64), torch.inf).amin(-1)
    choices[f"near-{tau:g}"] = choose(log_pi, losses, 1, 1.0, first_member.long())
for name, log_v in choices.items():
    rows = choice.copy()
    rows["logit"] = log_v.clamp(min=-1e4).float().numpy()
    np.save(out / f"{name}.npy", rows)
PY
  for f in "$out"/*.npy; do
    python ../../toy_world/choose_candidates.py --run "$run" --cache "$cache" --seed "$seed" --truth_of "$f" 2>/dev/null \
      | python -c "import json, sys; t = sys.stdin.read(); print(json.dumps({'$(basename "$f" .npy)': json.loads(t[t.index('{'):])}))"
  done | python -c "import json, sys; d = {}; [d.update(json.loads(l)) for l in sys.stdin]; json.dump(d, open('constrain/seed$seed.json', 'w'), indent=1)"
  exit
fi
python - <<'PY' | tee constrain.md
import json
from pathlib import Path

LABELS = {
    "none": "E-step among all 8 (make toy)",
    "balanced-0.5": "balanced, λ = 0.5",
    "balanced-0.75": "balanced, λ = 0.75",
    "balanced-1": "balanced (--e_step_balance)",
    "as-many": "within groups naming as many attributes",
    "same-attributes": "within groups naming the same attributes (toy parser)",
    "same-attributes-truth": "the same, knowing which candidates are true (a bound)",
    "same-attributes-but-position": "within groups naming the same attributes but the position (toy parser)",
    "near-0.9": "within groups of near texts, cosine > 0.9",
    "near-0.94": "within groups of near texts, cosine > 0.94",
    "near-0.97": "within groups of near texts, cosine > 0.97",
}
print("| choice | seed | position right | attributes named | silent colour TV | silent background TV | silent position TV |")
print("|---|---|---|---|---|---|---|")
for seed in (0, 1):
    report = json.loads(Path(f"constrain/seed{seed}.json").read_text())
    rows = [("the prior's top 8", next(iter(report.values()))["prior"])] + [(LABELS[name], report[name]["chosen"]) for name in LABELS]
    for name, c in rows:
        tv = [f"{c[f'unnamed {a}: TV from data']:.3f}" for a in ("colour", "background", "position")]
        print(f"| {name} | {seed} | {c['position']:.3f} | {c['attributes named']:.2f} | " + " | ".join(tv) + " |")
PY
