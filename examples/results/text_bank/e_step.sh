#!/usr/bin/env bash
# Issue 13: the E-step inside train.py (--e_step_at). make toy's settings (text-bank, bank-mixture posterior, the
# prior's top 8) with one E-step at step 3000 (it falls at 3125, an epoch boundary), seeds 0 and 1:
#   python examples/benchmark_methods.py --seed S --methods vdl --caption_fractions --output_dir DIR \
#       --extra_train_args="--prior text-bank --posterior_family bank_mixture --bank_top_k 8 --e_step_at 3000"
#   and the same with --e_step_draws 2, or with the bank given as a file (--prior_texts FILE, written by
#   examples/toy_world/write_corpus.py --seed S: the same bank, but no mention groups, as on a user's texts),
#   each resuming the first run's checkpoint-3000 (the steps before the E-step are the same); train.py's E-step
#   among all 8 at 0.5 (make toy's TOY_ARGS) with --e_step_balance (resuming the same checkpoint), and with
#   --use_ema (from the start); and make toy's setting retrained from the start with training seed 10 / 11 on
#   worlds 0 / 1 (--extra_train_args "... --seed 1S --toy_world_seed S"), to see what retraining alone moves;
#   and prior-sample (no posterior network) with the same E-step (--methods prior-sample, "--prior text-bank
#   --bank_top_k 8 --e_step_at 0.5"); and in two stages inside train.py, a fresh run from the first step on a judge's
#   choice (--bank_choice JUDGE/e_step/choice-stepN.npy; a judge is a run with --e_step_at 0.5 --stop_after_e_step):
#   vdl on the balanced run's choice (its E-step at 3000) and on the "among all 8" run's (at 3125), prior-sample
#   (--methods prior-sample, "--prior text-bank --bank_top_k 8 --bank_choice ...") on the balanced one, and vdl on
#   the two-stage test's choice (choice.sh: the M-step's cache, whose top-64 file holds the chosen weights, with
#   "--prior text-bank --posterior_family bank_mixture"); and vdl and prior-sample on the prior's top 8 (no E-step)
#   retrained on world 0 with training seed 10 (--seed 0, "... --bank_top_k 8 --seed 10 --toy_world_seed 0"), and the
#   same two at seed 0 without gradient clipping ("... --bank_top_k 8 --max_grad_norm 1e6"); and vdl, fresh, on the
#   "among all 8" choice under constraints (constrain.sh writes them: --bank_choice OUT/balanced-0.75.npy, -0.5, and
#   OUT/same-attributes.npy, OUT/same-attributes-but-position.npy), and the same on world 0's choices retrained with
#   training seed 10 ("... --bank_choice OUT/NAME.npy --seed 10 --toy_world_seed 0": the toy cache does not depend on
#   the training seed, so the choice still fits it);
#   and make toy's setting with --e_step_balance 0.75 in one run (resuming the first run's checkpoint-3000), and
#   the same retrained from the start with training seeds 20, 21 (both worlds), 22, 23 (world 0) ("... --e_step_balance 0.75 --seed T --toy_world_seed S");
#   and the same balanced to λ = 0.5, from the start with training seeds 20, 21, 22 (both worlds), 23–26 (world 0)
#   ("... --e_step_balance 0.5 --seed T --toy_world_seed S");
#   and supervised retrained on world 0 (--methods supervised, --extra_train_args "--seed 20 --toy_world_seed 0"):
#   the spread of the FD target's own reference;
# what each choice trains on (the ground truth; seed{0,1}-e-step*/e_step_truth.json):
#   python examples/toy_world/choose_candidates.py --run DIR/runs/vdl --cache DIR/cache/<folder> --seed S \
#       --truth_of DIR/runs/vdl/e_step/choice-step003125.npy
# Writes e_step.md and e_step.json beside this script.
cd "$(dirname "$0")/../../.."
R=examples/results
python examples/results_table.py --output $R/text_bank/e_step.md \
  "supervised (real captions)=$R/lr4e-3/toy_benchmark.json:supervised" \
  "supervised (real captions)=$R/text_bank/seed1-baselines/results.json:supervised" \
  "supervised, retrained (world 0, training seed 20)=$R/text_bank/world0-seed20-supervised/results.json:supervised" \
  "vdl, top 8 (make toy before the E-step)=$R/text_bank/seed0-top8/results.json:vdl" \
  "vdl, top 8 (make toy before the E-step)=$R/text_bank/seed1-top8/results.json:vdl" \
  "prior-sample on the prior's top 8=$R/text_bank/seed0-choice-control/results.json:prior-sample" \
  "prior-sample on the prior's top 8=$R/text_bank/seed1-choice-control/results.json:prior-sample" \
  "vdl, top 8, no E-step, retrained (world 0, training seed 10)=$R/text_bank/world0-seed10-top8-vdl/results.json:vdl" \
  "prior-sample on the prior's top 8, retrained (world 0, training seed 10)=$R/text_bank/world0-seed10-top8-prior-sample/results.json:prior-sample" \
  "vdl, top 8, no E-step, without gradient clipping=$R/text_bank/world0-top8-vdl-noclip/results.json:vdl" \
  "prior-sample on the prior's top 8, without gradient clipping=$R/text_bank/world0-top8-prior-sample-noclip/results.json:prior-sample" \
  "vdl, top 8, E-step at 3000, within mention groups=$R/text_bank/seed0-e-step/results.json:vdl" \
  "vdl, top 8, E-step at 3000, within mention groups=$R/text_bank/seed1-e-step/results.json:vdl" \
  "the same, 2 draws per image=$R/text_bank/seed0-e-step-2draws/results.json:vdl" \
  "the same, 2 draws per image=$R/text_bank/seed1-e-step-2draws/results.json:vdl" \
  "vdl, top 8, E-step at 3000, among all 8 (make toy until 2026-12-01)=$R/text_bank/seed0-e-step-no-groups/results.json:vdl" \
  "vdl, top 8, E-step at 3000, among all 8 (make toy until 2026-12-01)=$R/text_bank/seed1-e-step-no-groups/results.json:vdl" \
  "the same, balanced (--e_step_balance)=$R/text_bank/seed0-e-step-balanced/results.json:vdl" \
  "the same, balanced (--e_step_balance)=$R/text_bank/seed1-e-step-balanced/results.json:vdl" \
  "the same, balanced to λ = 0.75 (--e_step_balance 0.75)=$R/text_bank/seed0-e-step-balanced-0.75/results.json:vdl" \
  "the same, balanced to λ = 0.75 (--e_step_balance 0.75)=$R/text_bank/seed1-e-step-balanced-0.75/results.json:vdl" \
  "the same, retrained (training seed 20)=$R/text_bank/world0-seed20-e-step-balanced-0.75/results.json:vdl" \
  "the same, retrained (training seed 20)=$R/text_bank/world1-seed20-e-step-balanced-0.75/results.json:vdl" \
  "the same, retrained (training seed 21)=$R/text_bank/world0-seed21-e-step-balanced-0.75/results.json:vdl" \
  "the same, retrained (training seed 21)=$R/text_bank/world1-seed21-e-step-balanced-0.75/results.json:vdl" \
  "the same, retrained (training seed 22)=$R/text_bank/world0-seed22-e-step-balanced-0.75/results.json:vdl" \
  "the same, retrained (training seed 23)=$R/text_bank/world0-seed23-e-step-balanced-0.75/results.json:vdl" \
  "balanced to λ = 0.5 (--e_step_balance 0.5), training seed 20=$R/text_bank/world0-seed20-e-step-balanced-0.5/results.json:vdl" \
  "balanced to λ = 0.5 (--e_step_balance 0.5), training seed 20=$R/text_bank/world1-seed20-e-step-balanced-0.5/results.json:vdl" \
  "balanced to λ = 0.5 (--e_step_balance 0.5), training seed 21=$R/text_bank/world0-seed21-e-step-balanced-0.5/results.json:vdl" \
  "balanced to λ = 0.5 (--e_step_balance 0.5), training seed 21=$R/text_bank/world1-seed21-e-step-balanced-0.5/results.json:vdl" \
  "balanced to λ = 0.5 (--e_step_balance 0.5), training seed 22=$R/text_bank/world0-seed22-e-step-balanced-0.5/results.json:vdl" \
  "balanced to λ = 0.5 (--e_step_balance 0.5), training seed 22=$R/text_bank/world1-seed22-e-step-balanced-0.5/results.json:vdl" \
  "balanced to λ = 0.5 (--e_step_balance 0.5), training seed 23=$R/text_bank/world0-seed23-e-step-balanced-0.5/results.json:vdl" \
  "balanced to λ = 0.5 (--e_step_balance 0.5), training seed 24=$R/text_bank/world0-seed24-e-step-balanced-0.5/results.json:vdl" \
  "balanced to λ = 0.5 (--e_step_balance 0.5), training seed 25=$R/text_bank/world0-seed25-e-step-balanced-0.5/results.json:vdl" \
  "balanced to λ = 0.5 (--e_step_balance 0.5), training seed 26=$R/text_bank/world0-seed26-e-step-balanced-0.5/results.json:vdl" \
  "balanced to λ = 0.5 (--e_step_balance 0.5), training seed 27=$R/text_bank/world0-seed27-e-step-balanced-0.5/results.json:vdl" \
  "balanced to λ = 0.5 (--e_step_balance 0.5), training seed 28=$R/text_bank/world0-seed28-e-step-balanced-0.5/results.json:vdl" \
  "balanced to λ = 0.5 (--e_step_balance 0.5), training seed 29=$R/text_bank/world0-seed29-e-step-balanced-0.5/results.json:vdl" \
  "the same with --use_ema=$R/text_bank/seed0-e-step-ema/results.json:vdl" \
  "the same with --use_ema=$R/text_bank/seed1-e-step-ema/results.json:vdl" \
  "make toy's setting retrained (training seed 10 / 11)=$R/text_bank/world0-seed10-e-step/results.json:vdl" \
  "make toy's setting retrained (training seed 10 / 11)=$R/text_bank/world1-seed11-e-step/results.json:vdl" \
  "prior-sample on the prior's top 8, with the E-step=$R/text_bank/seed0-prior-sample-e-step/results.json:prior-sample" \
  "prior-sample on the prior's top 8, with the E-step=$R/text_bank/seed1-prior-sample-e-step/results.json:prior-sample" \
  "two stages: prior-sample on a finished run's choice=$R/text_bank/seed0-choice/results.json:prior-sample" \
  "two stages: prior-sample on a finished run's choice=$R/text_bank/seed1-choice/results.json:prior-sample" \
  "two stages in train.py: vdl, fresh, on the balanced choice=$R/text_bank/seed0-restart-balanced/results.json:vdl" \
  "two stages in train.py: vdl, fresh, on the balanced choice=$R/text_bank/seed1-restart-balanced/results.json:vdl" \
  "two stages in train.py: prior-sample, fresh, on the balanced choice=$R/text_bank/seed0-restart-balanced-prior-sample/results.json:prior-sample" \
  "two stages in train.py: prior-sample, fresh, on the balanced choice=$R/text_bank/seed1-restart-balanced-prior-sample/results.json:prior-sample" \
  "two stages in train.py: vdl, fresh, on the choice among all 8=$R/text_bank/seed0-restart-unbalanced/results.json:vdl" \
  "two stages in train.py: vdl, fresh, on the choice among all 8=$R/text_bank/seed1-restart-unbalanced/results.json:vdl" \
  "vdl, fresh, on the two-stage test's choice=$R/text_bank/seed0-choice-vdl/results.json:vdl" \
  "vdl, fresh, on the two-stage test's choice=$R/text_bank/seed1-choice-vdl/results.json:vdl" \
  "vdl, fresh, on make toy's choice balanced to λ = 0.5=$R/text_bank/seed0-balanced-0.5-vdl/results.json:vdl" \
  "vdl, fresh, on make toy's choice balanced to λ = 0.5=$R/text_bank/seed1-balanced-0.5-vdl/results.json:vdl" \
  "vdl, fresh, on make toy's choice balanced to λ = 0.75=$R/text_bank/seed0-balanced-0.75-vdl/results.json:vdl" \
  "vdl, fresh, on make toy's choice balanced to λ = 0.75=$R/text_bank/seed1-balanced-0.75-vdl/results.json:vdl" \
  "vdl, fresh, on make toy's choice within groups naming the same attributes (toy parser)=$R/text_bank/seed0-same-attributes-vdl/results.json:vdl" \
  "vdl, fresh, on make toy's choice within groups naming the same attributes (toy parser)=$R/text_bank/seed1-same-attributes-vdl/results.json:vdl" \
  "vdl, fresh, on make toy's choice within groups naming the same attributes but the position (toy parser)=$R/text_bank/seed0-same-attributes-but-position-vdl/results.json:vdl" \
  "vdl, fresh, on make toy's choice within groups naming the same attributes but the position (toy parser)=$R/text_bank/seed1-same-attributes-but-position-vdl/results.json:vdl" \
  "vdl, fresh, on make toy's choice balanced to λ = 0.75, retrained (world 0, training seed 10)=$R/text_bank/world0-seed10-balanced-0.75-vdl/results.json:vdl" \
  "vdl, fresh, on make toy's choice balanced (λ = 1), retrained (world 0, training seed 10)=$R/text_bank/world0-seed10-balanced-1-vdl/results.json:vdl" \
  "vdl, fresh, on make toy's choice within groups naming the same attributes (toy parser), retrained (world 0, training seed 10)=$R/text_bank/world0-seed10-same-attributes-vdl/results.json:vdl" \
  "vdl, fresh, on make toy's choice within groups naming the same attributes but the position (toy parser), retrained (world 0, training seed 10)=$R/text_bank/world0-seed10-same-attributes-but-position-vdl/results.json:vdl"
