#!/usr/bin/env bash
# Issue 13's table: every run at the default budget (6000 steps × 32, learning rate 4e-3), both seeds where
# measured, from the benchmark reports in this folder. Writes table.md and table.json beside this script.
cd "$(dirname "$0")/../../.."
R=examples/results
python examples/results_table.py --output $R/text_bank/table.md \
  "supervised (real captions)=$R/lr4e-3/toy_benchmark.json:supervised" \
  "supervised (real captions)=$R/text_bank/seed1-baselines/results.json:supervised" \
  "vdl, text-bank, bank mixture, β = 1=$R/text_bank/seed0/results.json:vdl" \
  "vdl, text-bank, bank mixture, β = 1=$R/text_bank/seed1/results.json:vdl" \
  "vdl, text-bank, top 8, E-step half-way, balanced to λ = 0.5 (make toy; training seed 20)=$R/text_bank/world0-seed20-e-step-balanced-0.5/results.json:vdl" \
  "vdl, text-bank, top 8, E-step half-way, balanced to λ = 0.5 (make toy; training seed 20)=$R/text_bank/world1-seed20-e-step-balanced-0.5/results.json:vdl" \
  "vdl, text-bank, top 8, E-step half-way, balanced to λ = 0.75 (make toy earlier on 2026-12-01)=$R/text_bank/seed0-e-step-balanced-0.75/results.json:vdl" \
  "vdl, text-bank, top 8, E-step half-way, balanced to λ = 0.75 (make toy earlier on 2026-12-01)=$R/text_bank/seed1-e-step-balanced-0.75/results.json:vdl" \
  "vdl, text-bank, top 8, E-step half-way, unbalanced (make toy until 2026-12-01)=$R/text_bank/seed0-e-step-no-groups/results.json:vdl" \
  "vdl, text-bank, top 8, E-step half-way, unbalanced (make toy until 2026-12-01)=$R/text_bank/seed1-e-step-no-groups/results.json:vdl" \
  "vdl, text-bank, top 8, E-step within mention groups=$R/text_bank/seed0-e-step/results.json:vdl" \
  "vdl, text-bank, top 8, E-step within mention groups=$R/text_bank/seed1-e-step/results.json:vdl" \
  "vdl, text-bank, top 8=$R/text_bank/seed0-top8/results.json:vdl" \
  "vdl, text-bank, top 8=$R/text_bank/seed1-top8/results.json:vdl" \
  "prior-sample, text-bank, top 8=$R/text_bank/seed0-choice-control/results.json:prior-sample" \
  "prior-sample, text-bank, top 8=$R/text_bank/seed1-choice-control/results.json:prior-sample" \
  "vdl, text-bank, RLOO from s ≥ 800, β = 0.007=$R/text_bank/seed0-band/results.json:vdl" \
  "vdl, text-bank, RLOO from s ≥ 800, β = 0.007=$R/text_bank/seed1-band/results.json:vdl" \
  "vdl, text-bank, RLOO, β = 0.007=$R/text_bank/seed0-rloo/results.json:vdl" \
  "prior-sample, text-bank=$R/text_bank/seed0/results.json:prior-sample" \
  "prior-sample, text-bank=$R/text_bank/seed1/results.json:prior-sample" \
  "vdl, clip=$R/lr4e-3/toy_benchmark.json:vdl" \
  "vdl, clip=$R/text_bank/seed1-clip/results.json:vdl" \
  "prior-sample, clip=$R/lr4e-3/toy_benchmark.json:prior-sample" \
  "prior-sample, clip=$R/text_bank/seed1-baselines/results.json:prior-sample" \
  "image=$R/text_bank/seed0-baselines/results.json:image" \
  "image=$R/text_bank/seed1-baselines/results.json:image" \
  "lafite=$R/text_bank/seed0-baselines/results.json:lafite" \
  "lafite=$R/text_bank/seed1-baselines/results.json:lafite" \
  "vdl, text-bank, 1 % of captions=$R/text_bank/seed0-semi/results.json:vdl-captions-0.01" \
  "vdl, text-bank, 1 % of captions=$R/text_bank/seed1-semi/results.json:vdl-captions-0.01" \
  "vdl, text-bank, 10 % of captions=$R/text_bank/seed0-semi/results.json:vdl-captions-0.1" \
  "vdl, text-bank, 10 % of captions=$R/text_bank/seed1-semi/results.json:vdl-captions-0.1"
