"""The E-step (`vdl_diffusion.e_step`): its weights, its scoring on a real cache, and train.py's --e_step_at."""

import json
import pickle
import re
import shutil

import numpy as np
import pytest
import torch
from test_text_bank import cache  # noqa: F401 (a fixture)
from test_train import generates, launch, weights, world  # noqa: F401 (world is a fixture)
from torch import nn

from vdl_diffusion.e_step import balance, choose, e_step, kl_from_prior, write_choice
from vdl_diffusion.models import build_noise_scheduler
from vdl_diffusion.priors import TextBankPrior
from vdl_diffusion.testing_utils import CORPUS
from vdl_diffusion.text_bank import with_bank_candidates


def test_choosing_keeps_each_groups_prior_mass_and_follows_the_loss_within_it():
    log_pi = torch.log_softmax(torch.tensor([[2.0, 1.0, 0.5, 0.0]]), -1)
    losses = torch.tensor([[0.3, 0.1, 0.2, 0.0]])
    groups = torch.tensor([[2, 2, 3, 3]])  # e.g. the attributes each candidate names
    w = choose(log_pi, losses, n_latent=10, beta=1.0, groups=groups).exp()
    pi = log_pi.exp()
    torch.testing.assert_close(w[:, :2].sum(), pi[:, :2].sum())  # each group keeps its prior mass
    torch.testing.assert_close(w[:, 2:].sum(), pi[:, 2:].sum())
    assert w[0, 1] > pi[0, 1] and w[0, 3] > pi[0, 3]  # within a group, the lower loss gains
    free = choose(log_pi, losses, n_latent=10, beta=1.0, groups=None).exp()
    assert free[0, 2:].sum() > pi[0, 2:].sum()  # without groups, mass moves to the group with the lower losses
    torch.testing.assert_close(free, torch.softmax(log_pi - 10 * losses, -1))
    torch.testing.assert_close(choose(log_pi, losses, 10, float("inf"), None), log_pi)  # β = ∞: the prior


def text_totals(log_w, entries, num_texts):
    return torch.zeros(num_texts, dtype=torch.float64).index_add_(0, torch.as_tensor(entries).flatten(), torch.as_tensor(log_w).double().exp().flatten())


def test_balancing_gives_each_text_its_prior_total_on_the_images_the_choice_prefers():
    generator = torch.Generator().manual_seed(0)
    entries = torch.stack([torch.randperm(60, generator=generator)[:8] for _ in range(500)])  # 500 images, 8 of 60 texts each
    log_pi = torch.log_softmax(torch.randn(500, 8, generator=generator), -1)
    log_w = torch.log_softmax(log_pi + 3 * torch.randn(500, 8, generator=generator), -1)  # a choice that favours some texts
    balanced = balance(log_w, log_pi, entries)
    prior_totals = text_totals(log_pi, entries, 60)
    assert (text_totals(log_w, entries, 60) - prior_totals).abs().max() > 1  # the choice moved whole images' worth of mass
    torch.testing.assert_close(text_totals(balanced, entries, 60), prior_totals, atol=1e-6, rtol=0)
    torch.testing.assert_close(balanced.exp().sum(-1), torch.ones(500, dtype=torch.float64))
    # log w' - log w = u[text] - log Z[image]: one factor per text (so each text goes to the images whose choice
    # preferred it) and one normaliser per image. Fitted by least squares, it leaves no residual.
    design = torch.cat([nn.functional.one_hot(entries.flatten(), 60), nn.functional.one_hot(torch.arange(500).repeat_interleave(8), 500)], 1)
    change = (balanced - log_w.double()).flatten()
    fit = torch.linalg.lstsq(design.double(), change[:, None]).solution
    assert (design.double() @ fit - change[:, None]).abs().max() < 1e-6
    torch.testing.assert_close(balance(log_pi, log_pi, entries), log_pi.double(), atol=1e-6, rtol=0)  # the prior is balanced


def test_balancing_part_of_the_way_moves_each_text_total_that_far_towards_the_prior():
    generator = torch.Generator().manual_seed(1)
    entries = torch.stack([torch.randperm(60, generator=generator)[:8] for _ in range(500)])
    log_pi = torch.log_softmax(torch.randn(500, 8, generator=generator), -1)
    log_w = torch.log_softmax(log_pi + 3 * torch.randn(500, 8, generator=generator), -1)
    chosen, prior = text_totals(log_w, entries, 60), text_totals(log_pi, entries, 60)
    partial = balance(log_w, log_pi, entries, strength=0.75)
    torch.testing.assert_close(text_totals(partial, entries, 60), 0.25 * chosen + 0.75 * prior, atol=1e-6, rtol=0)
    assert (text_totals(partial, entries, 60) - prior).abs().max() > 0.1  # not balanced all the way
    torch.testing.assert_close(balance(log_w, log_pi, entries, strength=0), log_w.double(), atol=1e-5, rtol=0)  # w, renormalised in float64
    with pytest.raises(ValueError, match="strength"):
        balance(log_w, log_pi, entries, strength=1.5)


class PrefersOneText(nn.Module):
    """A stand-in UNet whose noise prediction is ``scale · (1 - tᵀv)`` everywhere: zero, the best guess of
    zero-mean noise, only for the condition ``v``. ``scale = 0``: a prediction that ignores the condition."""

    def __init__(self, v: torch.Tensor, scale: float):
        super().__init__()
        self.register_buffer("v", v)
        self.scale = scale

    @property
    def device(self):
        return self.v.device

    @property
    def dtype(self):
        return self.v.dtype

    def forward(self, z, s, encoder_hidden_states=None, added_cond_kwargs=None):
        t = added_cond_kwargs["image_embeds"]
        return type("Output", (), {"sample": self.scale * (1 - t @ self.v)[:, None, None, None].expand_as(z)})()


@pytest.fixture(scope="module")
def candidates(cache):  # noqa: F811 (cache is a fixture)
    """The cache's images with every bank text as a candidate (k = the bank), and the prior."""
    dataset, encoders = cache
    prior = TextBankPrior.from_texts(CORPUS, encoders.encode_text, top_k=len(set(CORPUS)))
    return with_bank_candidates(dataset, prior), prior


def test_e_step_moves_the_weight_to_the_text_the_loss_prefers(candidates):
    dataset, prior = candidates
    rows, favourite = list(range(len(dataset))), 5
    # Every other text's prediction at least 2: its loss exceeds the favourite's by ≥ 4 - 4·|mean noise|, far above 0.
    nearest = (prior.bank @ prior.bank[favourite]).topk(2).values[1]
    scale = 2 / (1 - nearest).item()
    scheduler = build_noise_scheduler()
    chosen = e_step(PrefersOneText(prior.bank[favourite], scale), scheduler, dataset, prior.bank, rows, draws=2, beta=0.05)
    w, entries = np.exp(chosen), dataset.candidate_rows()["index"]
    assert (w[entries == favourite] > 0.99).all()  # every image: the text the loss prefers
    np.testing.assert_allclose(w.sum(-1), 1, atol=1e-5)
    # A loss that ignores the condition: the draws are shared by an image's candidates, so their losses are
    # equal and w is the prior. (n_latent / β = 5120 magnifies the reductions' rounding, ~1e-8, to ~1e-4 in
    # log w; independent draws would differ by ~0.1 in the loss, hundreds in log w.)
    same = e_step(PrefersOneText(prior.bank[favourite], 0.0), scheduler, dataset, prior.bank, rows, draws=2, beta=0.05)
    pi = torch.log_softmax(torch.from_numpy(dataset.candidate_rows()["logit"].copy()), -1).numpy()
    np.testing.assert_allclose(same, pi, atol=1e-2)
    assert kl_from_prior(dataset, same) < 1e-2 and kl_from_prior(dataset, chosen) > 1
    # Within groups, the favourite's group keeps its prior mass: alone in its group, it keeps π.
    groups = (torch.arange(len(prior.bank)) == favourite).long()
    grouped = np.exp(e_step(PrefersOneText(prior.bank[favourite], scale), scheduler, dataset, prior.bank, rows[:3], draws=2, groups=groups))
    np.testing.assert_allclose(grouped[entries[:3] == favourite], np.exp(pi[:3])[entries[:3] == favourite], rtol=1e-4)
    # The first k candidates only: the rest get no mass.
    top2 = np.exp(e_step(PrefersOneText(prior.bank[favourite], scale), scheduler, dataset, prior.bank, rows[:3], k=2, draws=1))
    assert (top2[:, 2:] == 0).all() and np.allclose(top2.sum(-1), 1, atol=1e-5)


def test_batches_take_the_chosen_weights_and_a_choice_for_other_candidates_is_refused(candidates, tmp_path):
    dataset, prior = candidates
    pi = torch.log_softmax(torch.from_numpy(dataset.candidate_rows()["logit"].copy()), -1).numpy()
    chosen = np.roll(pi, 1, axis=1)  # some other weights over the same candidates
    write_choice(tmp_path / "choice.npy", dataset, chosen)
    batch = torch.utils.data.default_collate(dataset.__getitems__([3, 7]))
    try:
        assert torch.equal(dataset.prepare_batch(batch, None)["bank_logits"], batch["bank_logits"])  # no choice: the prior's
        dataset.use_choice(tmp_path / "choice.npy")
        prepared = dataset.prepare_batch(batch, None)
        assert torch.equal(prepared["bank_logits"], torch.from_numpy(chosen[[3, 7]])) and "bank_row" not in prepared
        assert torch.equal(prepared["bank_index"], batch["bank_index"])
        assert pickle.loads(pickle.dumps(dataset)).chosen_logits is None  # workers get no copy: the main process applies it
        with pytest.raises(ValueError, match="one row per image"):
            write_choice(tmp_path / "short.npy", dataset, chosen[:-1])
        other = np.load(tmp_path / "choice.npy")
        other["index"] = other["index"][:, ::-1]
        np.save(tmp_path / "other.npy", other)
        with pytest.raises(ValueError, match="does not list this dataset's candidates"):
            dataset.use_choice(tmp_path / "other.npy")
        (tmp_path / "not-a-choice.npy").write_text("a checkpoint's README, say")
        with pytest.raises(ValueError, match="is not an E-step's choice"):
            dataset.use_choice(tmp_path / "not-a-choice.npy")
        assert torch.equal(dataset.prepare_batch(batch, None)["bank_logits"], prepared["bank_logits"])  # a refused file changes nothing
    finally:
        dataset.chosen_logits = None


# --- train.py --e_step_at ------------------------------------------------------------------------


def e_step_args(tmp_path, *args):
    (tmp_path / "texts.txt").write_text("\n".join(CORPUS))
    return ["--prior", "text-bank", "--prior_texts", str(tmp_path / "texts.txt"), "--bank_top_k", "8",
            "--posterior_family", "bank_mixture", *args]  # fmt: skip


@pytest.mark.slow
def test_train_py_makes_the_e_step_and_a_run_resumed_after_it_reads_the_choice(world, tmp_path):  # noqa: F811
    """The E-step after step 3 (mid-epoch: 40 images in batches of 8), then a checkpoint. Killed there and
    resumed, the run reads the choice its checkpoint names, does not score the candidates again, and ends
    as the straight run."""
    common = e_step_args(tmp_path, "--max_train_steps", "8", "--e_step_at", "3", "--checkpointing_steps", "6", "--checkpoints_total_limit", "0")
    result = launch(world, tmp_path / "straight", *common)
    assert "E-step at step 3" in result.stderr and re.search(r"KL\(w \|\| π\) = [0-9.]+ nats per image", result.stderr)
    choice = np.load(tmp_path / "straight" / "e_step" / "choice-step000003.npy")
    assert choice.shape == (40, 8) and np.allclose(np.exp(choice["logit"]).sum(-1), 1, atol=1e-5)
    for step in (3, 6):
        state = json.loads((tmp_path / "straight" / f"checkpoint-{step}" / "training_state.json").read_text())
        assert state["e_step_file"] == "e_step/choice-step000003.npy"
    assert generates(tmp_path / "straight")

    for entry in ("checkpoint-3", "e_step"):
        shutil.copytree(tmp_path / "straight" / entry, tmp_path / "resumed" / entry)
    result = launch(world, tmp_path / "resumed", *common, "--resume_from_checkpoint", "latest")
    assert "at step 3" in result.stderr and "E-step at" not in result.stderr
    straight, resumed = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert all(torch.equal(resumed[key], straight[key]) for key in straight)  # same ops, same threads: bitwise
    # Without the choice its checkpoint names, the run stops with the fix, and the checkpoint is left as it was.
    shutil.copytree(tmp_path / "straight" / "checkpoint-3", tmp_path / "orphan" / "checkpoint-3")
    result = launch(world, tmp_path / "orphan", *common, "--resume_from_checkpoint", "latest", check=False)
    assert result.returncode != 0 and "which is missing: restore it" in result.stderr
    assert sorted(p.name for p in (tmp_path / "orphan").glob("checkpoint-*")) == ["checkpoint-3"]


@pytest.mark.slow
def test_a_judge_stops_at_its_e_step_and_a_fresh_run_trains_on_its_choice(world, tmp_path):  # noqa: F811
    """Two stages: --stop_after_e_step ends the run with its E-step (resumed, it only exports again); a run given the
    judge's folder with --bank_choice starts on that choice, and one on another cache's candidates is refused."""
    judge = e_step_args(tmp_path, "--max_train_steps", "8", "--e_step_at", "3", "--stop_after_e_step")
    result = launch(world, tmp_path / "judge", *judge)
    choice = tmp_path / "judge" / "e_step" / "choice-step000003.npy"
    assert "Done after 3 steps" in result.stderr and f"--bank_choice {tmp_path / 'judge'}" in result.stderr
    assert [p.name for p in (tmp_path / "judge").glob("checkpoint-*")] == ["checkpoint-3"] and generates(tmp_path / "judge")
    result = launch(world, tmp_path / "judge", *judge, "--resume_from_checkpoint", "latest")
    assert "E-step at" not in result.stderr and "Done after 3 steps" in result.stderr

    result = launch(world, tmp_path / "fresh", *e_step_args(tmp_path, "--max_train_steps", "2", "--bank_choice", str(tmp_path / "judge")))
    (prior,) = [rows for rows in map(np.load, (world / "cache").rglob("bank-top8*.npy")) if np.array_equal(rows["index"], np.load(choice)["index"])]
    log_pi, log_w = torch.log_softmax(torch.from_numpy(prior["logit"].copy()), -1), torch.from_numpy(np.load(choice)["logit"].copy())
    kl = (log_w.exp() * (log_w - log_pi)).sum(-1).mean().item()
    assert kl > 0 and f"Conditions come from the E-step's choice {choice} (KL(w || π) = {kl:.3f} nats per image)" in result.stderr
    assert "E-step at" not in result.stderr and generates(tmp_path / "fresh")
    other = e_step_args(tmp_path, "--max_train_steps", "2", "--bank_choice", str(choice))
    other[other.index("--bank_top_k") + 1] = "4"
    result = launch(world, tmp_path / "other", *other, check=False)
    assert result.returncode != 0 and "not a choice made for this cache and prior" in result.stderr


@pytest.mark.slow
def test_two_processes_share_the_e_step(world, tmp_path):  # noqa: F811
    """Each process scores its share of the images; the choice covers every image, balanced over all of them
    (each text keeps its total under the prior's weights in the cache), and both end in sync. ``--e_step_at
    0.5``: half of the run."""
    args = e_step_args(tmp_path, "--max_train_steps", "6", "--e_step_at", "0.5", "--train_batch_size", "4", "--e_step_balance")
    result = launch(world, tmp_path / "out", *args, num_processes=2)
    checksums = [float(v) for v in re.findall(r"Weight checksum per process: \[([^\]]+)\]", result.stderr)[-1].split(",")]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    choice = np.load(tmp_path / "out" / "e_step" / "choice-step000003.npy")
    assert choice.shape == (40, 8) and np.allclose(np.exp(choice["logit"]).sum(-1), 1, atol=1e-5)
    (prior,) = [rows for rows in map(np.load, (world / "cache").rglob("bank-top8*.npy")) if np.array_equal(rows["index"], choice["index"])]
    entries, num_texts = torch.from_numpy(prior["index"].astype(np.int64)), len(CORPUS)
    log_pi = torch.log_softmax(torch.from_numpy(prior["logit"].copy()), -1)
    torch.testing.assert_close(text_totals(choice["logit"], entries, num_texts), text_totals(log_pi, entries, num_texts), atol=1e-4, rtol=0)
    assert "balanced" in result.stderr


def test_an_e_step_outside_the_run_fails_before_training(world, tmp_path):  # noqa: F811
    result = launch(world, tmp_path / "out", *e_step_args(tmp_path, "--e_step_at", "0.01", "--max_train_steps", "8"), check=False)
    assert result.returncode != 0 and "--e_step_at 0.01 is step 0 of a run of 8: choose a step inside the run" in result.stderr
    assert not list((tmp_path / "out").glob("checkpoint-*"))
