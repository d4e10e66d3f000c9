#!/usr/bin/env bash
# Issue 13: can a posterior that chooses among the bank's candidates reach supervised's position? A two-stage
# test at the default budget, seeds 0 and 1. Stage 1 is each seed's vdl text-bank run (text_bank/seed{0,1}).
# E-step: python examples/toy_world/choose_candidates.py --run STAGE1_RUN --cache STAGE1_CACHE_FOLDER \
#     --into NEW_CACHE_FOLDER --seed S --keep_mentions                          (the choice, β = 0.05, s ≥ 800)
#   or --beta inf                                                               (the control: the same top 8, no choice)
# where NEW_CACHE_FOLDER was built by one step of train.py with --embedding_cache_dir DIR/cache; then
# M-step: python examples/benchmark_methods.py --seed S --methods prior-sample --caption_fractions \
#     --output_dir DIR --extra_train_args="--prior text-bank"
# And vdl itself on the prior's top 8: python examples/benchmark_methods.py --seed S --methods vdl --caption_fractions \
#     --output_dir DIR --extra_train_args="--prior text-bank --posterior_family bank_mixture --bank_top_k 8"
# Writes choice.md and choice.json beside this script.
cd "$(dirname "$0")/../../.."
R=examples/results
python examples/results_table.py --output $R/text_bank/choice.md \
  "supervised (real captions)=$R/lr4e-3/toy_benchmark.json:supervised" \
  "supervised (real captions)=$R/text_bank/seed1-baselines/results.json:supervised" \
  "vdl, text-bank (stage 1)=$R/text_bank/seed0/results.json:vdl" \
  "vdl, text-bank (stage 1)=$R/text_bank/seed1/results.json:vdl" \
  "vdl, text-bank, the prior's top 8 (--bank_top_k 8)=$R/text_bank/seed0-top8/results.json:vdl" \
  "vdl, text-bank, the prior's top 8 (--bank_top_k 8)=$R/text_bank/seed1-top8/results.json:vdl" \
  "prior-sample, text-bank=$R/text_bank/seed0/results.json:prior-sample" \
  "prior-sample, text-bank=$R/text_bank/seed1/results.json:prior-sample" \
  "prior-sample on the chosen weights (top 8, mention groups kept)=$R/text_bank/seed0-choice/results.json:prior-sample" \
  "prior-sample on the chosen weights (top 8, mention groups kept)=$R/text_bank/seed1-choice/results.json:prior-sample" \
  "prior-sample on the prior's top 8 (the control)=$R/text_bank/seed0-choice-control/results.json:prior-sample" \
  "prior-sample on the prior's top 8 (the control)=$R/text_bank/seed1-choice-control/results.json:prior-sample"
