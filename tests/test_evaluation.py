"""Evaluation metrics: the Fréchet distance, and toy-world scores of stand-in pipelines whose answers are known."""

import dataclasses
import math
import sys
import types
import urllib.error

import numpy as np
import pytest
import scipy.linalg
import torch
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

from vdl_diffusion.evaluation import (
    ClipScorer,
    Estimate,
    evaluate_pairs,
    evaluate_prompt,
    evaluate_toy,
    fid_and_clip_score,
    frechet_distance,
    pool_estimates,
    total_variation,
)
from vdl_diffusion.toy import ATTRIBUTE_NAMES, TOY_CLIP, TOY_ORACLE, ToyOracle, ToyWorld

# -- Fréchet distance -------------------------------------------------------------------------------


def test_frechet_distance_of_a_set_with_itself_is_zero():
    features = torch.randn(200, 16, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(features, features) == pytest.approx(0, abs=1e-8)


def test_frechet_distance_of_a_shifted_set_is_the_squared_shift():
    features = np.random.default_rng(0).normal(size=(300, 8))
    shift = np.linspace(-1, 2, 8)
    assert frechet_distance(features, features + shift) == pytest.approx(np.sum(shift**2), rel=1e-9)


def test_frechet_distance_matches_the_closed_form_with_scipy_sqrtm():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6)) + 0.5
    mu_a, mu_b, sigma_a, sigma_b = a.mean(0), b.mean(0), np.cov(a.T), np.cov(b.T)
    expected = np.sum((mu_a - mu_b) ** 2) + np.trace(sigma_a + sigma_b - 2 * scipy.linalg.sqrtm(sigma_a @ sigma_b).real)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_of_gaussian_samples_approaches_that_of_the_gaussians():
    # Diagonal covariances: FD = ||μ_a - μ_b||² + Σ (σ_a - σ_b)².
    rng = np.random.default_rng(2)
    mu_a, mu_b, std_a, std_b = np.zeros(4), np.array([1.0, 0, -1, 2]), np.array([1.0, 2, 0.5, 1]), np.array([2.0, 1, 1, 1])
    a, b = rng.normal(mu_a, std_a, size=(40000, 4)), rng.normal(mu_b, std_b, size=(40000, 4))
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((std_a - std_b) ** 2)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.02)


@pytest.mark.parametrize("shapes", [((10, 4), (10, 5)), ((1, 4), (10, 4)), ((10,), (10,))])
def test_frechet_distance_rejects_bad_shapes(shapes):
    with pytest.raises(ValueError, match="features_"):
        frechet_distance(torch.zeros(shapes[0]), torch.zeros(shapes[1]))


def test_pooled_accuracy_is_the_accuracy_of_all_samples():
    runs = [{"acc": Estimate(0.5, math.sqrt(0.25 / 100), 100)}, {"acc": Estimate(0.8, math.sqrt(0.16 / 300), 300)}]
    pooled = pool_estimates(runs)["acc"]
    assert pooled.n == 400
    assert pooled.value == pytest.approx((50 + 240) / 400)
    assert pooled.se < min(r["acc"].se for r in runs)


# -- the toy world ----------------------------------------------------------------------------------

needs_toy_models = pytest.mark.skipif(
    not all((path / "config.json").is_file() for path in (TOY_ORACLE, TOY_CLIP)),
    reason="the toy world's oracle and CLIP weights are not installed (examples/toy_world/train_oracle.py, train_clip.py)",
)
NUM_SAMPLES = 48


class ToyPipeline:
    """Stands in for a VDLPipeline: draws, for each evaluation caption, an image from ``labels_for``.

    ``labels_for(labels, mentioned)`` edits the ground truth of the caption's reference image;
    with ``None`` the reference image itself is returned. ``noise`` returns noise instead.
    """

    def __init__(self, world, seed, labels_for=None, noise=False):
        self.world, self.noise, self.labels_for = world, noise, labels_for
        self.reference = world.sample(NUM_SAMPLES, "eval", rng=seed)
        self.index = {caption: i for i, caption in enumerate(self.reference.captions)}
        self.prompts = []

    def set_progress_bar_config(self, **kwargs):
        pass

    def __call__(self, prompt, generator, output_type, height, width, **kwargs):
        assert output_type == "pt" and len(generator) == len(prompt)
        self.prompts += prompt
        if self.noise:
            images = torch.stack([torch.rand(3, height, width, generator=g) for g in generator])
            return ImagePipelineOutput(images=images)
        rows = np.array([self.index[p] for p in prompt])
        if self.labels_for is None:
            images = self.reference.images[rows]
        else:
            labels = {a: v[rows] for a, v in self.reference.labels.items()}
            mentioned = {a: v[rows] for a, v in self.reference.mentioned.items()}
            images, _ = self.world.render(self.labels_for(labels, mentioned), rng=0)
        return ImagePipelineOutput(images=torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)


@pytest.fixture(scope="module")
def toy():
    oracle = ToyOracle.from_pretrained(TOY_ORACLE)
    return ToyWorld(0), oracle, ClipScorer.from_pretrained(TOY_CLIP)


def evaluate(toy, pipeline, seed=0, batch_size=16):
    world, oracle, clip = toy
    return evaluate_toy(pipeline, world, oracle, clip, num_samples=NUM_SAMPLES, seed=seed, batch_size=batch_size)


@needs_toy_models
def test_reference_images_score_high_and_noise_low(toy):
    world = toy[0]
    reference = evaluate(toy, ToyPipeline(world, seed=0))
    noise = evaluate(toy, ToyPipeline(world, seed=0, noise=True))
    assert reference["all_mentioned_accuracy"].value > 0.9
    assert noise["all_mentioned_accuracy"].value < 0.3
    for a in ATTRIBUTE_NAMES:
        assert reference[f"{a}_accuracy"].value > noise[f"{a}_accuracy"].value
    assert reference["oracle_fd"].value < noise["oracle_fd"].value / 10
    assert reference["clip_score"].value > noise["clip_score"].value
    assert all(isinstance(v, Estimate) and v.se >= 0 for v in reference.values() if v.n > 1)


@needs_toy_models
def test_accuracy_counts_only_mentioned_attributes(toy):
    world = toy[0]
    reference = world.sample(NUM_SAMPLES, "eval", rng=0)
    # Every attribute the caption leaves out is drawn wrong; the caption is still satisfied.
    def wrong_unless_mentioned(labels, mentioned):
        return {a: np.where(mentioned[a], v, (v + 1) % len(world.value_names(a))) for a, v in labels.items()}

    results = evaluate(toy, ToyPipeline(world, seed=0, labels_for=wrong_unless_mentioned))
    assert results["all_mentioned_accuracy"].value > 0.9
    for a in ATTRIBUTE_NAMES:
        assert results[f"{a}_accuracy"].n == reference.mentioned[a].sum()
        assert results[f"{a}_accuracy"].value > 0.9


@needs_toy_models
def test_silent_attributes_drawn_as_one_value_are_far_from_the_data_and_accuracy_misses_it(toy):
    world = toy[0]
    reference = world.sample(NUM_SAMPLES, "eval", rng=0)

    def first_value_unless_mentioned(labels, mentioned):
        return {a: np.where(mentioned[a], v, 0) for a, v in labels.items()}

    exact = evaluate(toy, ToyPipeline(world, seed=0))
    biased = evaluate(toy, ToyPipeline(world, seed=0, labels_for=first_value_unless_mentioned))
    assert biased["all_mentioned_accuracy"].value > 0.9
    for a in ("position", "background"):  # values drawn uniformly, so one value is far from their mix
        silent = ~reference.mentioned[a]
        assert biased[f"{a}_silent_tv"].n == exact[f"{a}_silent_tv"].n == silent.sum() > 0
        assert exact[f"{a}_silent_tv"].value < 0.1
        assert biased[f"{a}_silent_tv"].value == pytest.approx(1 - np.mean(reference.labels[a][silent] == 0), abs=0.1)


def test_total_variation_of_label_sets():
    assert total_variation(np.array([0, 1, 2]), np.array([2, 0, 1]), 4) == 0
    assert total_variation(np.array([0, 0]), np.array([1, 3]), 4) == 1
    assert total_variation(np.array([0, 1]), np.array([0, 0]), 2) == pytest.approx(0.5)


@needs_toy_models
def test_a_wrong_mentioned_colour_fails_exactly_the_captions_that_name_a_colour(toy):
    world = toy[0]
    reference = world.sample(NUM_SAMPLES, "eval", rng=0)

    def wrong_colour(labels, mentioned):
        return {**labels, "colour": (labels["colour"] + 4) % len(world.value_names("colour"))}

    results = evaluate(toy, ToyPipeline(world, seed=0, labels_for=wrong_colour))
    assert results["colour_accuracy"].value < 0.1
    assert results["shape_accuracy"].value > 0.9
    no_colour = 1 - reference.mentioned["colour"].mean()
    assert results["all_mentioned_accuracy"].value == pytest.approx(no_colour, abs=0.1)


@needs_toy_models
def test_seen_and_heldout_pairs_split_the_captions_naming_shape_and_colour(toy):
    world = toy[0]
    reference = world.sample(NUM_SAMPLES, "eval", rng=0)
    results = evaluate(toy, ToyPipeline(world, seed=0))
    names_pair = reference.mentioned["shape"] & reference.mentioned["colour"]
    heldout = world.is_heldout(reference.labels["shape"], reference.labels["colour"])
    assert results["heldout_pairs_accuracy"].n == (names_pair & heldout).sum()
    assert results["seen_pairs_accuracy"].n == (names_pair & ~heldout).sum()


@needs_toy_models
def test_the_seed_fixes_captions_and_noise_whatever_the_batch_size(toy):
    world = toy[0]
    pipelines = [ToyPipeline(world, seed=0, noise=True) for _ in range(3)]
    first = evaluate(toy, pipelines[0], seed=0, batch_size=16)
    second = evaluate(toy, pipelines[1], seed=0, batch_size=48)
    assert pipelines[0].prompts == pipelines[1].prompts
    assert first.keys() == second.keys()
    for key in first:  # counts exactly; FD and CLIP score come from features computed in other batch sizes
        np.testing.assert_allclose(dataclasses.astuple(first[key]), dataclasses.astuple(second[key]), rtol=1e-4, atol=0, err_msg=key)
    other = ToyPipeline(world, seed=1, noise=True)
    evaluate(toy, other, seed=1)
    assert other.prompts != pipelines[0].prompts


@needs_toy_models
def test_images_of_the_wrong_size_are_refused(toy):
    class WrongSize(ToyPipeline):
        def __call__(self, prompt, generator, output_type, height, width, **kwargs):
            return ImagePipelineOutput(images=torch.rand(len(prompt), 3, 2 * height, 2 * width))

    with pytest.raises(ValueError, match="resolution"):
        evaluate(toy, WrongSize(toy[0], seed=0))


# -- real data: only the failure without torch-fidelity or its weights can run offline ---------------


def test_fid_without_torchmetrics_image_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchmetrics.image.fid", None)  # as if torchmetrics were absent
    images = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    with pytest.raises(ImportError, match=r"pip install 'torchmetrics\[image\]'"):
        fid_and_clip_score(images, images, ["a", "b"])


def test_fid_without_inception_weights_says_what_to_download(monkeypatch):
    def offline(**kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setitem(sys.modules, "torchmetrics.image.fid", types.SimpleNamespace(FrechetInceptionDistance=offline))
    images = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    with pytest.raises(RuntimeError, match="inception_weights=") as error:
        fid_and_clip_score(images, images, ["a", "b"])
    assert "weights-inception-2015-12-05" in str(error.value)


def test_prompt_accuracy_reads_the_attributes_the_prompt_names(toy):
    """Half the images of "a small red circle" are red circles, half blue ones; all are small."""
    world, oracle, _ = toy

    class HalfRight:
        def set_progress_bar_config(self, **kwargs):
            pass

        def __call__(self, prompt, generator, output_type, height, width, **kwargs):
            labels = world.sample_labels(len(prompt), "eval", rng=0)
            labels.update(shape=np.zeros(len(prompt), int), size=np.zeros(len(prompt), int))
            labels["colour"] = np.where(np.arange(len(prompt)) % 2 == 0, 0, 5)  # red, blue
            images, _ = world.render(labels, rng=0)
            return ImagePipelineOutput(images=torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)

    results = evaluate_prompt(HalfRight(), oracle, "a small red circle", num_samples=24, batch_size=8)
    assert set(results) == {"shape_accuracy", "colour_accuracy", "size_accuracy", "all_mentioned_accuracy"}
    assert results["shape_accuracy"].value == results["size_accuracy"].value == 1.0
    assert results["colour_accuracy"].value == results["all_mentioned_accuracy"].value == 0.5
    assert results["colour_accuracy"].n == 24
    with pytest.raises(ValueError, match="names no attribute"):
        evaluate_prompt(HalfRight(), oracle, "a photo of a cat")


@needs_toy_models
def test_pairs_accuracy_reads_each_pair_and_splits_seen_from_heldout(toy):
    """A stand-in that draws every pair as asked, except held-out pairs, which it draws in the next colour."""
    world, oracle, _ = toy
    n_colours = len(world.value_names("colour"))

    class DrawsSeenPairs:
        def set_progress_bar_config(self, **kwargs):
            pass

        def __call__(self, prompt, generator, output_type, height, width, **kwargs):
            asked = [ToyWorld.read_caption(p) for p in prompt]
            labels = world.sample_labels(len(prompt), "eval", rng=0)
            labels["shape"] = np.array([a["shape"] for a in asked])
            labels["colour"] = np.array([a["colour"] for a in asked])
            heldout = world.is_heldout(labels["shape"], labels["colour"])
            labels["colour"] = np.where(heldout, (labels["colour"] + 1) % n_colours, labels["colour"])
            images, _ = world.render(labels, rng=0)
            return ImagePipelineOutput(images=torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)

    results = evaluate_pairs(DrawsSeenPairs(), world, oracle, num_samples=2, batch_size=32)
    assert results["seen_pairs_accuracy"].value == 1.0 and results["heldout_pairs_accuracy"].value == 0.0
    assert results["pairs_accuracy"].n == 2 * world.heldout.size
    assert results["pairs_accuracy"].value == pytest.approx(1 - world.heldout.mean())
    for i, shape in enumerate(world.value_names("shape")):
        for j, colour in enumerate(world.value_names("colour")):
            assert results[f"{colour} {shape}"].value == (0.0 if world.heldout[i, j] else 1.0)
