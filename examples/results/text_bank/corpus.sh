#!/usr/bin/env bash
# Issue 13: vdl + text-bank (bank mixture, β = 1) at the default budget, seeds 0 and 1, with the bank built from other
# corpora (examples/toy_world/write_corpus.py), beside the default corpus and the clip prior.
# Each corpus run: python examples/toy_world/write_corpus.py --kind KIND --n N --seed S > corpus.txt, then
#   python examples/benchmark_methods.py --seed S --methods vdl --caption_fractions --output_dir DIR \
#       --extra_train_args="--prior text-bank --posterior_family bank_mixture --prior_texts corpus.txt"
# Writes corpus.md and corpus.json beside this script.
cd "$(dirname "$0")/../../.."
R=examples/results
python examples/results_table.py --output $R/text_bank/corpus.md \
  "text-bank, 4000 CLIP-split captions (the default)=$R/text_bank/seed0/results.json:vdl" \
  "text-bank, 4000 CLIP-split captions (the default)=$R/text_bank/seed1/results.json:vdl" \
  "text-bank, 100 captions=$R/text_bank/seed0-corpus100/results.json:vdl" \
  "text-bank, 100 captions=$R/text_bank/seed1-corpus100/results.json:vdl" \
  "text-bank, 10 000 captions=$R/text_bank/seed0-corpus10000/results.json:vdl" \
  "text-bank, 10 000 captions=$R/text_bank/seed1-corpus10000/results.json:vdl" \
  "text-bank, 4000 mismatched (other mention rates, 3 templates withheld)=$R/text_bank/seed0-mismatched/results.json:vdl" \
  "text-bank, 4000 mismatched (other mention rates, 3 templates withheld)=$R/text_bank/seed1-mismatched/results.json:vdl" \
  "text-bank, the 90 generic prompts=$R/text_bank/seed0-generic/results.json:vdl" \
  "text-bank, the 90 generic prompts=$R/text_bank/seed1-generic/results.json:vdl" \
  "clip prior (no texts)=$R/lr4e-3/toy_benchmark.json:vdl" \
  "clip prior (no texts)=$R/text_bank/seed1-clip/results.json:vdl"
