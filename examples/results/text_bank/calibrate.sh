#!/usr/bin/env bash
# Issue 13: is the prior's silent-position bias (a condition that names no position comes with a top-left or
# bottom-right image far more often than the data's half) a calibration error of CLIP's conditional, one that a
# bias per bank text would fix? This fits that bias: the prior over the whole bank, balanced (vdl_diffusion.e_step
# .balance, Sinkhorn's iterations) so that each text's total use over the training images is its share of the
# corpus, as the true posterior's would be; then reads the ground truth of its top 8 beside the prior's.
#   bash examples/results/text_bank/calibrate.sh SEED RUN CACHE   (RUN: any text-bank run of that world, for its
#                                                                  prior and texts; CACHE: its cache folder)
# then, with both seeds done, calibrate.md:   bash examples/results/text_bank/calibrate.sh table
set -e
cd "$(dirname "$0")"
mkdir -p calibrate
if [ "$1" != table ]; then
  python - "$@" <<'PY'
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

sys.path.insert(0, str(Path.cwd().parents[1] / "toy_world"))
from choose_candidates import image_order, truth
from posterior_report import load_run

from vdl_diffusion.e_step import balance
from vdl_diffusion.toy import ToyWorld

seed, run, cache = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
_, prior, texts = load_run(run, seed)
shards = json.loads((cache / "metadata.json").read_text())["shards"]
y = torch.cat([safe_open(cache / shard, "pt").get_tensor("y") for shard in shards]).float()
logits = torch.addmm(prior.log_count.float(), y, prior.bank.float().T, alpha=prior.config.logit_scale)  # (N, texts)
(top_k_file,) = cache.glob("bank-top8-*.npy")
same = np.sort(logits.topk(8, -1).indices.numpy(), 1) == np.sort(np.load(top_k_file)["index"], 1)  # ties may swap places
assert same.all(), "not this cache's prior"
entries = torch.arange(len(texts)).expand_as(logits)
corpus = torch.log_softmax(prior.log_count.double(), 0).expand_as(logits)  # every row the corpus's shares
calibrated = balance(logits, corpus, entries, iterations=60)
images, read = image_order(cache), [ToyWorld.read_caption(text) for text in texts]
labels = ToyWorld(seed).sample_labels(len(images), "train")
position = torch.from_numpy(labels["position"][images])
names_position = torch.tensor(["position" in values for values in read], dtype=torch.float64)
data = torch.bincount(position, minlength=4) / len(position)
report = {}
for name, log_weights in (("prior", logits), ("calibrated", calibrated)):
    top = log_weights.topk(8, -1)
    report[name] = truth(top.values.numpy(), top.indices.numpy(), images, labels, read)
    # the same two position figures over all texts, before the top 8 truncates the distribution
    named = torch.softmax(log_weights.double(), -1) @ names_position
    silent = torch.zeros(4, dtype=torch.float64).index_add_(0, position, 1 - named)
    report[name]["all texts"] = {
        "names position, by the image's position": [round(named[position == p].mean().item(), 3) for p in range(4)],
        "unnamed position: TV from data": (0.5 * (silent / silent.sum() - data).abs().sum()).item(),
    }
report["calibrated"]["largest error in a text's total use (log)"] = float(
    (torch.logsumexp(calibrated, 0) - torch.logsumexp(corpus, 0)).abs().max()
)
Path(f"calibrate/seed{seed}.json").write_text(json.dumps(report, indent=1))
PY
  exit
fi
python - <<'PY' | tee calibrate.md
import json
from pathlib import Path

print("| top 8 of | seed | position right | names a position, by the image's position (TL / TR / BL / BR) | silent position TV | silent colour TV | silent background TV | before the top 8: names a position (TL / TR / BL / BR) | before the top 8: silent position TV |")
print("|---|---|---|---|---|---|---|---|---|")
for seed in (0, 1):
    report = json.loads(Path(f"calibrate/seed{seed}.json").read_text())
    for name, label in (("prior", "the prior"), ("calibrated", "the prior calibrated to the corpus's shares")):
        c = report[name]
        named = " / ".join(f"{v:.2f}" for v in c["names position, by the image's position"].values())
        tv = " | ".join(f"{c[f'unnamed {a}: TV from data']:.3f}" for a in ("position", "colour", "background"))
        every = c["all texts"]
        before = " / ".join(f"{v:.2f}" for v in every["names position, by the image's position"])
        print(f"| {label} | {seed} | {c['position']:.3f} | {named} | {tv} | {before} | {every['unnamed position: TV from data']:.3f} |")
PY
