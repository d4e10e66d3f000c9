"""The text-bank prior end to end: its texts, its top-k per image, VDL on it, and a train.py run."""

import math
import re

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from test_cache import image_cell
from test_distributions import _two_sphere, kl_by_quadrature
from test_train import generates, launch, world  # noqa: F401 (world is a fixture)

from vdl_diffusion.cache import build_or_load_cache
from vdl_diffusion.conditioning import condition
from vdl_diffusion.distributions import PowerSpherical
from vdl_diffusion.encoders import FrozenEncoders
from vdl_diffusion.posterior import BankMixturePosterior, TextEmbeddingPosterior
from vdl_diffusion.priors import TextBankPrior, bank_top_k
from vdl_diffusion.testing_utils import CORPUS, save_tiny_clip, save_tiny_vae
from vdl_diffusion.text_bank import BankCandidates, load_texts, with_bank_candidates
from vdl_diffusion.toy import ToyWorld
from vdl_diffusion.toy.world import MENTION_PROBABILITY, WITHHELD_TEMPLATES

D = 16


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def bank_prior(bank: torch.Tensor, counts=None, **config) -> TextBankPrior:
    """A prior whose texts are the rows of ``bank`` (text "i" is row i), repeated ``counts[i]`` times."""
    counts = counts or [1] * len(bank)
    texts = [str(i) for i, n in enumerate(counts) for _ in range(n)]
    return TextBankPrior.from_texts(texts, lambda batch: bank[[int(text) for text in batch]], batch_size=7, **config)


# --- the texts ----------------------------------------------------------------------------------


def test_load_texts_reads_a_file_or_a_dataset_column(tmp_path):
    (tmp_path / "texts.txt").write_text("a red circle\n\n  a blue square  \na red circle\n", encoding="utf-8")
    assert load_texts(tmp_path / "texts.txt") == ["a red circle", "a blue square", "a red circle"]
    folder = tmp_path / "corpus"
    folder.mkdir()
    datasets.Dataset.from_dict({"caption": ["a dot", "a box", ""], "id": [1, 2, 3]}).to_json(folder / "train.jsonl")
    assert load_texts(f"{folder}:caption") == ["a dot", "a box"]


@pytest.mark.parametrize(
    "content, message",
    [(b"", "0 distinct text"), (b"\n  \n", "0 distinct text"), (b"one text\none text\n", "1 distinct text"), ("caf\xe9".encode("latin1"), "not UTF-8")],
)
def test_bad_bank_input_names_the_file_and_the_fix(tmp_path, content, message):
    path = tmp_path / "bank.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as error:
        load_texts(path)
    assert str(path) in str(error.value) and ("one text a line" in str(error.value) or "iconv" in str(error.value))


def test_toy_corpora_are_honest_and_deterministic():
    world = ToyWorld(0)
    captions = world.text_corpus("captions", 1000)
    assert captions == ToyWorld(0).text_corpus("captions", 1000) and len(captions) == 1000
    # Captions of the CLIP split: its own stream, not the captions of the first training or evaluation images.
    for split in ("train", "eval"):
        assert captions[:50] != world.sample(50, split).captions
    mentioned = np.mean([bool(re.search(r"\b(small|little|tiny|large|big|huge)\b", text)) for text in captions])
    mismatched = world.text_corpus("mismatched", 1000)
    mismatched_size = np.mean([bool(re.search(r"\b(small|little|tiny|large|big|huge)\b", text)) for text in mismatched])
    assert abs(mentioned - MENTION_PROBABILITY["size"]) < 0.06 and mismatched_size < 0.15  # size: 0.3 against 0.1
    assert any(WITHHELD_TEMPLATES.search(text) for text in captions) and not any(WITHHELD_TEMPLATES.search(text) for text in mismatched)
    assert world.text_corpus("generic") == world.prior_texts() and len(world.prior_texts()) == 90
    with pytest.raises(ValueError, match="kind"):
        world.text_corpus("eval")


# --- the prior ----------------------------------------------------------------------------------


def test_the_bank_holds_each_text_once_with_its_count():
    prior = bank_prior(unit(5, D), counts=[1, 3, 1, 2, 1])
    assert prior.bank.shape == (5, D)
    torch.testing.assert_close(prior.log_count, torch.tensor([1.0, 3, 1, 2, 1]).log())
    with pytest.raises(ValueError, match="two distinct texts"):
        bank_prior(unit(1, D), counts=[3])


def test_top_k_is_the_full_softmax_when_k_covers_the_bank():
    bank, y = unit(40, D, seed=1), unit(6, D, seed=2)
    counts = [1 + i % 3 for i in range(40)]
    prior = bank_prior(bank, counts, top_k=64, logit_scale=30.0)
    p = prior(y)
    full = torch.softmax(30.0 * y @ bank.T + torch.tensor(counts).float().log(), dim=-1)
    weights = torch.zeros(6, 40).scatter(1, prior.top_k(y)[1], p.mixture_distribution.probs)
    torch.testing.assert_close(weights, full)
    torch.testing.assert_close(p.loc, bank[prior.top_k(y)[1]])


def test_top_k_in_chunks_equals_one_matmul():
    bank, y = unit(1000, D, seed=3), unit(9, D, seed=4)
    log_count = torch.rand(1000)
    logits, index = bank_top_k(y, bank, log_count, 100.0, 7, max_scores=9 * 50)  # 20 chunks of 50 entries
    reference = (100.0 * y @ bank.T + log_count).topk(7, dim=1)
    torch.testing.assert_close(logits, reference.values)
    assert torch.equal(index, reference.indices)


def test_text_bank_prior_round_trips(tmp_path):
    prior = bank_prior(unit(12, D), counts=[2] + [1] * 11, logit_scale=50.0, concentration=300.0, top_k=5)
    prior.save_pretrained(tmp_path)
    loaded = TextBankPrior.from_pretrained(tmp_path)
    assert loaded.config.num_texts == 12 and loaded.config.top_k == 5 and loaded.concentration == 300.0
    assert loaded.fingerprint() == prior.fingerprint()
    y = unit(3, D, seed=5)
    torch.testing.assert_close(loaded(y).log_prob(unit(3, D, seed=6)), prior(y).log_prob(unit(3, D, seed=6)))


def test_default_bank_concentration_puts_samples_at_cosine_0_99_to_their_text():
    prior = bank_prior(unit(4, 64))
    p = prior(unit(2000, 64, seed=7))
    t = p.sample()
    nearest = (t[:, None] * p.loc).sum(-1).max(-1).values
    assert abs(nearest.mean().item() - 0.99) < 5 * nearest.std().item() / math.sqrt(2000)


# --- the top-k of every cached image ------------------------------------------------------------


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A real embedding cache of 10 random images, and the tiny CLIP that built it."""
    root = tmp_path_factory.mktemp("bank_cache")
    encoders = FrozenEncoders.from_pretrained(str(save_tiny_clip(root / "clip")), str(save_tiny_vae(root / "vae")))
    table = datasets.Dataset.from_dict({"image": [image_cell(i) for i in range(10)]}).cast_column("image", datasets.Image(decode=False))
    dataset = build_or_load_cache(Accelerator(cpu=True), table, encoders, root / "cache", resolution=32, batch_size=4)
    return dataset, encoders


def test_top_k_precompute_matches_the_prior_per_image(cache):
    dataset, encoders = cache
    prior = TextBankPrior.from_texts(CORPUS, encoders.encode_text, top_k=6)
    candidates = with_bank_candidates(dataset, prior, image_chunk=3)
    assert isinstance(candidates, BankCandidates) and len(candidates) == len(dataset)
    files = list(dataset.folder.glob(f"bank-top6-{prior.fingerprint()}.npy"))
    assert len(files) == 1 and not list(dataset.folder.glob(".*.tmp"))
    y = torch.stack([dataset[i]["y"] for i in range(len(dataset))])
    logits, index = prior.top_k(y)
    rows = [candidates[i] for i in range(len(dataset))]
    assert torch.equal(torch.stack([row["bank_index"] for row in rows]), index)
    torch.testing.assert_close(torch.stack([row["bank_logits"] for row in rows]), logits)
    assert set(rows[0]) >= {"latents", "y", "features", "bank_index", "bank_logits"}
    mtime = files[0].stat().st_mtime_ns
    with_bank_candidates(dataset, prior)
    assert files[0].stat().st_mtime_ns == mtime  # reused, not rebuilt
    # With k at least the bank, the rows give the full softmax.
    everything = TextBankPrior.from_texts(CORPUS, encoders.encode_text, top_k=len(set(CORPUS)))
    row = with_bank_candidates(dataset, everything)[4]
    weights = torch.zeros(len(set(CORPUS))).scatter(0, row["bank_index"], torch.softmax(row["bank_logits"], -1))
    torch.testing.assert_close(weights, torch.softmax(100.0 * everything.bank @ dataset[4]["y"], -1))


def test_other_datasets_and_priors_pass_through(cache):
    dataset, _ = cache
    assert with_bank_candidates(dataset, None) is dataset
    assert with_bank_candidates([1, 2], bank_prior(unit(4, D))) == [1, 2]


# --- VDL on the text-bank prior -----------------------------------------------------------------


def batch(n=8, seed=0):
    return {"y": unit(n, D, seed=seed), "features": torch.randn(n, 4, generator=torch.Generator().manual_seed(seed))}


@pytest.mark.parametrize("precomputed", [False, True])
def test_vdl_with_the_bank_mixture_posterior_starts_at_the_prior_and_trains(precomputed):
    prior, b = bank_prior(unit(30, D, seed=1), top_k=8), batch()
    if precomputed:
        b["bank_logits"], b["bank_index"] = prior.top_k(b["y"])
    posterior = BankMixturePosterior(D, 4, hidden_dim=16)
    q = posterior(b["y"], b["features"], prior(b["y"]))
    torch.testing.assert_close(q.mixture_distribution.probs, prior(b["y"]).mixture_distribution.probs)
    c = condition("vdl", b, posterior=posterior, prior=prior)
    torch.testing.assert_close(c.t.norm(dim=-1), torch.ones(8))
    assert c.kl.abs().max() < 1e-6 and "kl_bound" in c.stats  # q = p at the start
    (c.t @ unit(D, seed=9)).sum().backward()
    assert posterior.to_query.weight.grad.abs().sum() > 0 and posterior.to_sharpening.weight.grad.abs().sum() > 0


def test_vdl_with_the_power_spherical_posterior_centres_on_the_prior_mean():
    prior, b = bank_prior(unit(30, D, seed=1), top_k=8), batch()
    posterior = TextEmbeddingPosterior(D, 4, hidden_dim=16)
    q = posterior(b["y"], b["features"], prior(b["y"]))
    assert isinstance(q, PowerSpherical)
    torch.testing.assert_close(q.loc, prior(b["y"]).mean_direction)
    c = condition("vdl", b, posterior=posterior, prior=prior)
    torch.testing.assert_close(c.t.norm(dim=-1), torch.ones(8))
    assert torch.isfinite(c.kl).all() and c.stats["kl_mc"] == c.kl.mean()
    c.kl.sum().backward()
    assert posterior.to_loc.weight.grad.abs().sum() > 0 and posterior.to_concentration.weight.grad.abs().sum() > 0


def test_monte_carlo_kl_to_the_bank_prior_is_unbiased():
    """The ``kl_mc`` of `condition`, averaged, against KL(q || p) by quadrature on S²."""
    torch.manual_seed(0)
    bank = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0.5]])
    prior = bank_prior(bank, concentration=20.0, logit_scale=3.0, top_k=4).double()
    posterior = TextEmbeddingPosterior(3, hidden_dim=8, init_concentration=10.0).double()
    y = F.normalize(torch.tensor([[1.0, 0.5, 0.2]]), dim=-1).double().expand(50_000, 3)
    kl = condition("vdl", {"y": y}, posterior=posterior, prior=prior).kl.detach()
    p = prior(y[:1])  # batch shape (1,): its log_prob of (M, 3) points is (M,)
    q = PowerSpherical(p.mean_direction[0], torch.tensor(10.0, dtype=torch.float64))  # the posterior at initialisation
    exact = kl_by_quadrature(q, p, *_two_sphere(400))
    standard_error = kl.std().item() / math.sqrt(len(kl))
    assert abs(kl.mean().item() - exact) < 5 * standard_error < 0.1 * exact


def test_prior_sample_draws_from_the_bank_mixture():
    prior = bank_prior(torch.eye(D)[:3], concentration=1e4, top_k=3)
    c = condition("prior-sample", {"y": torch.eye(D)[[1]].expand(2000, D)}, prior=prior)
    assert c.kl.eq(0).all() and (c.t[:, 1] > 0.9).float().mean() > 0.9  # the text nearest y dominates π at s = 100


def test_the_text_bank_needs_a_spherical_posterior():
    prior, b = bank_prior(unit(10, D), top_k=4), batch()
    with pytest.raises(ValueError, match="gaussian"):
        condition("vdl", b, posterior=TextEmbeddingPosterior(D, 4, hidden_dim=8, family="gaussian"), prior=prior)
    with pytest.raises(ValueError, match="--prior text-bank"):
        BankMixturePosterior(D, 4, hidden_dim=8)(b["y"], b["features"], PowerSpherical(b["y"], torch.ones(8)))


# --- train.py -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_train_py_runs_vdl_on_the_text_bank_prior(world, tmp_path):  # noqa: F811 (world is a fixture)
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(CORPUS))
    result = launch(world, tmp_path / "out", "--prior", "text-bank", "--prior_texts", str(texts), "--bank_top_k", "8",
                    "--posterior_family", "bank_mixture", "--max_train_steps", "2")  # fmt: skip
    assert f"Text bank of {len(CORPUS)} unpaired texts" in result.stderr
    assert generates(tmp_path / "out")
    prior = TextBankPrior.from_pretrained(tmp_path / "out" / "prior")
    assert prior.bank.shape == (len(set(CORPUS)), D) and prior.config.top_k == 8
    assert isinstance(BankMixturePosterior.from_pretrained(tmp_path / "out" / "posterior"), BankMixturePosterior)
