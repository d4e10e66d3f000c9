"""Does a text-to-image model draw what its prompt says? Metrics for the toy world and for real data.

On the toy world (``evaluate_toy``) every evaluation caption comes with the ground truth of a
reference image, and the world's oracle reads the attributes off a generated image, so accuracy is
exact: an attribute counts only where the caption names it. Beside it, the Fréchet distance in the
oracle's feature space (an offline FID) and the CLIP score with the toy CLIP. ``evaluate_prompt``
and ``evaluate_pairs`` ask for one prompt, or for every "a {colour} {shape}", many times over. On real data
(``fid_and_clip_score``) the usual FID (Inception-v3, through torchmetrics) and CLIP score.

Every number comes as an ``Estimate`` with its standard error, so two methods can be told apart.
"""

import math
import os
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from tqdm.auto import tqdm
from transformers import CLIPModel, CLIPProcessor

from .toy import ATTRIBUTE_NAMES, ATTRIBUTES, TOY_CLIP, ToyOracle, ToyWorld

INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
BOOTSTRAP_RESAMPLES = 10  # the standard error of a Fréchet or total-variation distance: std over bootstrap resamples


@dataclass
class Estimate:
    """A metric's value, its standard error and the number of samples behind it."""

    value: float
    se: float
    n: int

    def __str__(self) -> str:
        return f"{self.value:.3f} ± {self.se:.3f}"


def binomial_estimate(correct: np.ndarray) -> Estimate:
    """The share of ``True`` in ``correct`` with its binomial standard error (nan if empty)."""
    n = len(correct)
    if n == 0:
        return Estimate(math.nan, math.nan, 0)
    p = float(np.mean(correct))
    return Estimate(p, math.sqrt(p * (1 - p) / n), n)


def mean_estimate(values: np.ndarray) -> Estimate:
    """The mean of ``values`` with its standard error."""
    n = len(values)
    se = float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return Estimate(float(np.mean(values)), se, n)


def pool_estimates(results: list[dict[str, Estimate]]) -> dict[str, Estimate]:
    """Combines the results of independent runs (e.g. ``evaluate_toy`` at several seeds), metric by metric.

    Each value is the sample-weighted mean of the runs' values, its standard error propagated from
    theirs (for an accuracy, the binomial error of all samples together where the runs agree).
    """
    if not results:
        raise ValueError("results is empty: pass at least one dict of Estimates.")
    pooled = {}
    for name in results[0]:
        runs = [r[name] for r in results if r[name].n > 0]
        n = sum(r.n for r in runs)
        if n == 0:
            pooled[name] = Estimate(math.nan, math.nan, 0)
            continue
        value = sum(r.n * r.value for r in runs) / n
        se = math.sqrt(sum((r.n * r.se) ** 2 for r in runs)) / n
        pooled[name] = Estimate(value, se, n)
    return pooled


# -- Fréchet distance -----------------------------------------------------------------------------


def frechet_distance(features_a, features_b) -> float:
    """Fréchet distance between Gaussians fitted to two sets of features (N, D), as in FID.

    ``||μ_a - μ_b||² + tr(Σ_a + Σ_b - 2 (Σ_a^½ Σ_b Σ_a^½)^½)`` in float64. The square root is taken
    of a symmetric positive semi-definite matrix by ``eigh``, so there is no imaginary part to
    discard (``scipy.linalg.sqrtm`` of ``Σ_a Σ_b`` has one); round-off negatives are clamped to 0.
    """
    a, b = (torch.as_tensor(f).detach().to("cpu", torch.float64) for f in (features_a, features_b))
    for name, f in (("features_a", a), ("features_b", b)):
        if f.ndim != 2 or len(f) < 2:
            raise ValueError(f"{name} must have shape (N, D) with N >= 2, got {tuple(f.shape)}.")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"features_a and features_b must have the same width, got {a.shape[1]} and {b.shape[1]}.")
    mu_a, mu_b = a.mean(0), b.mean(0)
    sigma_a, sigma_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    sqrt_sigma_a = _psd_sqrt(sigma_a)
    trace_sqrt = torch.linalg.eigvalsh(sqrt_sigma_a @ sigma_b @ sqrt_sigma_a).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).square().sum() + sigma_a.trace() + sigma_b.trace() - 2 * trace_sqrt)


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    return eigenvectors @ torch.diag(eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T


def frechet_estimate(features_a: torch.Tensor, features_b: torch.Tensor, seed: int = 0) -> Estimate:
    """``frechet_distance`` with the standard deviation over bootstrap resamples as its standard error."""
    rng = np.random.default_rng(seed)
    n_a, n_b = len(features_a), len(features_b)
    resampled = [
        frechet_distance(features_a[rng.integers(n_a, size=n_a)], features_b[rng.integers(n_b, size=n_b)])
        for _ in range(BOOTSTRAP_RESAMPLES)
    ]
    return Estimate(frechet_distance(features_a, features_b), float(np.std(resampled, ddof=1)), n_a)


def total_variation(values_a: np.ndarray, values_b: np.ndarray, num_values: int) -> float:
    """Total-variation distance between the empirical distributions of two sets of labels in ``range(num_values)``."""
    p_a, p_b = (np.bincount(v, minlength=num_values) / len(v) for v in (values_a, values_b))
    return float(0.5 * np.abs(p_a - p_b).sum())


def total_variation_estimate(values_a: np.ndarray, values_b: np.ndarray, num_values: int, seed: int = 0) -> Estimate:
    """``total_variation`` of paired labels (e.g. generated and reference image of one caption) with the standard
    deviation over bootstrap resamples of the pairs as its standard error; nan where there are none."""
    n = len(values_a)
    if n == 0:
        return Estimate(math.nan, math.nan, 0)
    rng = np.random.default_rng(seed)
    resampled = [total_variation(values_a[i], values_b[i], num_values) for i in (rng.integers(n, size=n) for _ in range(BOOTSTRAP_RESAMPLES))]
    return Estimate(total_variation(values_a, values_b, num_values), float(np.std(resampled, ddof=1)), n)


# -- CLIP score -----------------------------------------------------------------------------------


class ClipScorer:
    """CLIP score: ``100 · cos(f_I(image), f_T(prompt))`` per image–prompt pair.

    Unlike torchmetrics' ``CLIPScore`` negative cosines are not clipped to 0, so the mean is an
    unbiased estimate (they differ only where images and prompts are unrelated).
    """

    def __init__(self, model: CLIPModel, processor: CLIPProcessor, batch_size: int = 64):
        self.model = model.eval()
        self.processor = processor
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike = TOY_CLIP, device=None, batch_size: int = 64, **kwargs
    ) -> "ClipScorer":
        """E.g. ``"openai/clip-vit-large-patch14"``; by default the toy world's CLIP."""
        model = CLIPModel.from_pretrained(name_or_path, **kwargs).to(device or "cpu")
        return cls(model, CLIPProcessor.from_pretrained(name_or_path, **kwargs), batch_size)

    @torch.no_grad()
    def __call__(self, images, prompts: list[str]) -> np.ndarray:
        """Scores of ``images`` (uint8 (N, H, W, 3) or a list of PIL images) against ``prompts``."""
        if len(images) != len(prompts):
            raise ValueError(f"Got {len(images)} images but {len(prompts)} prompts; pass one prompt per image.")
        scores = []
        for start in range(0, len(prompts), self.batch_size):
            inputs = self.processor(
                text=prompts[start : start + self.batch_size],
                images=list(images[start : start + self.batch_size]),
                return_tensors="pt",
                padding=True,
                truncation=True,
            ).to(self.model.device)
            output = self.model(**inputs)  # image_embeds and text_embeds come L2-normalised
            scores.append(100 * (output.image_embeds * output.text_embeds).sum(-1).float().cpu())
        return torch.cat(scores).numpy()


# -- the toy world --------------------------------------------------------------------------------


def sample_generators(seed: int, count: int) -> list[torch.Generator]:
    """One CPU generator per image, so image ``i`` of ``seed`` gets the same noise at any batch size."""
    states = np.random.SeedSequence(seed).generate_state(count, dtype=np.uint64)
    return [torch.Generator().manual_seed(int(state)) for state in states]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Pipeline images in [0, 1] (N, 3, H, W) -> uint8 (N, H, W, 3), exactly as they would be saved."""
    return (images.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def generate(pipeline, prompts: list[str], seed: int = 0, batch_size: int = 64, **pipeline_kwargs) -> np.ndarray:
    """One image per prompt from ``pipeline`` (a ``VDLPipeline``), uint8 (N, H, W, 3), with a progress bar."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    generators = sample_generators(seed, len(prompts))
    previous = dict(getattr(pipeline, "_progress_bar_config", {}))
    pipeline.set_progress_bar_config(disable=True)  # one bar over batches, not one per batch
    try:
        batches = []
        for start in tqdm(range(0, len(prompts), batch_size), desc="Generating", unit="batch"):
            stop = start + batch_size
            output = pipeline(
                prompt=prompts[start:stop], generator=generators[start:stop], output_type="pt", **pipeline_kwargs
            )
            batches.append(to_uint8(output.images))
    finally:
        pipeline.set_progress_bar_config(**previous)
    return np.concatenate(batches)


@torch.no_grad()
def evaluate_toy(
    pipeline,
    world: ToyWorld,
    oracle: ToyOracle,
    clip: ClipScorer | None = None,
    num_samples: int = 512,
    seed: int = 0,
    batch_size: int = 64,
    guidance_scale: float = 3.0,
    num_inference_steps: int = 25,
) -> dict[str, Estimate]:
    """Generates one image for each of ``num_samples`` evaluation captions and scores them.

    The captions and their reference images are the world's ``"eval"`` split at stream ``seed``,
    and the sampling noise is drawn from ``seed`` too, so a seed fixes the whole evaluation.
    ``world`` must be the world the model was trained on (``train.py --seed``): it decides which
    (shape, colour) pairs were held out of training. ``clip`` defaults to the toy CLIP.

    Returns, each an ``Estimate``:

    - ``{attribute}_accuracy``: the oracle reads the value the caption asked for, over the
      captions that mention that attribute;
    - ``all_mentioned_accuracy``: every attribute the caption mentions is right;
    - ``seen_pairs_accuracy`` / ``heldout_pairs_accuracy``: ``all_mentioned_accuracy`` over
      captions that name both a shape and a colour, whose pair was / was not in the training split;
    - ``{attribute}_silent_tv``: over the captions that do not mention the attribute, the total-variation
      distance between its values in the generated images (as the oracle reads them) and in the reference
      images: where a caption is silent the model should draw the data's variety, and a bias there (e.g.
      conditions that leave an attribute unnamed mostly for some of its values) costs FD, not accuracy.
      Sampling alone puts a floor under it of about ``sqrt(K / n)`` / 2 for K values over n captions;
    - ``oracle_fd``: Fréchet distance between the oracle's features of generated and reference images;
    - ``clip_score``: ``100 · cos`` between the generated image and its caption in the toy CLIP.
    """
    if num_samples < 2:
        raise ValueError(f"num_samples must be at least 2 (a Fréchet distance needs a covariance), got {num_samples}.")
    reference = world.sample(num_samples, "eval", rng=seed)
    images = _generate_toy(pipeline, reference.captions, seed, batch_size, guidance_scale, num_inference_steps)

    predicted, generated_features = _oracle_outputs(oracle, images, batch_size)
    _, reference_features = _oracle_outputs(oracle, reference.images, batch_size)
    correct = {a: predicted[a] == reference.labels[a] for a in ATTRIBUTE_NAMES}
    mentioned = reference.mentioned
    all_right = np.all([correct[a] | ~mentioned[a] for a in ATTRIBUTE_NAMES], axis=0)
    names_pair = mentioned["shape"] & mentioned["colour"]
    heldout = world.is_heldout(reference.labels["shape"], reference.labels["colour"])

    results = {f"{a}_accuracy": binomial_estimate(correct[a][mentioned[a]]) for a in ATTRIBUTE_NAMES}
    for a in ATTRIBUTE_NAMES:
        silent = ~mentioned[a]
        results[f"{a}_silent_tv"] = total_variation_estimate(predicted[a][silent], reference.labels[a][silent], len(ATTRIBUTES[a]), seed)
    results["all_mentioned_accuracy"] = binomial_estimate(all_right)
    results["seen_pairs_accuracy"] = binomial_estimate(all_right[names_pair & ~heldout])
    results["heldout_pairs_accuracy"] = binomial_estimate(all_right[names_pair & heldout])
    results["oracle_fd"] = frechet_estimate(generated_features, reference_features, seed=seed)
    clip = clip if clip is not None else ClipScorer.from_pretrained(TOY_CLIP, device=oracle.device)
    results["clip_score"] = mean_estimate(clip(images, reference.captions))
    return results


def evaluate_prompt(
    pipeline,
    oracle: ToyOracle,
    prompt: str,
    num_samples: int = 64,
    seed: int = 0,
    batch_size: int = 64,
    guidance_scale: float = 3.0,
    num_inference_steps: int = 25,
) -> dict[str, Estimate]:
    """Does a toy-world pipeline draw ``prompt``? ``num_samples`` images, read by the oracle.

    Returns ``{attribute}_accuracy`` for each attribute the prompt names (see
    :meth:`ToyWorld.read_caption`) and ``all_mentioned_accuracy``, the share with all of them right.
    """
    asked = ToyWorld.read_caption(prompt)
    if not asked:
        raise ValueError(f"{prompt!r} names no attribute of the toy world; try e.g. 'a red circle'.")
    images = _generate_toy(pipeline, [prompt] * num_samples, seed, batch_size, guidance_scale, num_inference_steps)
    predicted, _ = _oracle_outputs(oracle, images, batch_size)
    correct = {a: predicted[a] == value for a, value in asked.items()}
    results = {f"{a}_accuracy": binomial_estimate(c) for a, c in correct.items()}
    results["all_mentioned_accuracy"] = binomial_estimate(np.all(list(correct.values()), axis=0))
    return results


@torch.no_grad()
def evaluate_pairs(
    pipeline,
    world: ToyWorld,
    oracle: ToyOracle,
    num_samples: int = 16,
    seed: int = 0,
    batch_size: int = 64,
    guidance_scale: float = 3.0,
    num_inference_steps: int = 25,
) -> dict[str, Estimate]:
    """Every (shape, colour) pair as the prompt "a {colour} {shape}", ``num_samples`` images each.

    One prompt says little (models draw some pairs well and others badly), so this asks for all
    of them. Returns, for each pair ``"{colour} {shape}"``, the share of images with both right,
    and ``pairs_accuracy`` over all pairs, ``seen_pairs_accuracy`` / ``heldout_pairs_accuracy`` over
    the pairs ``world`` (the model's ``train.py --seed``) kept in / held out of training.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}.")
    shapes, colours = world.value_names("shape"), world.value_names("colour")
    names = [f"{c} {s}" for s in shapes for c in colours]  # shape-major, like the labels below
    shape = np.arange(len(shapes)).repeat(len(colours) * num_samples)
    colour = np.tile(np.arange(len(colours)).repeat(num_samples), len(shapes))
    prompts = [f"a {name}" for name in names for _ in range(num_samples)]
    images = _generate_toy(pipeline, prompts, seed, batch_size, guidance_scale, num_inference_steps)
    predicted, _ = _oracle_outputs(oracle, images, batch_size)
    right = (predicted["shape"] == shape) & (predicted["colour"] == colour)
    heldout = world.is_heldout(shape, colour)
    results = {name: binomial_estimate(r) for name, r in zip(names, right.reshape(len(names), num_samples))}
    results["pairs_accuracy"] = binomial_estimate(right)
    results["seen_pairs_accuracy"] = binomial_estimate(right[~heldout])
    results["heldout_pairs_accuracy"] = binomial_estimate(right[heldout])
    return results


def pairs_table(accuracy: dict[str, float], world: ToyWorld) -> str:
    """``evaluate_pairs``' per-pair accuracies (name -> value) as a Markdown shape × colour table.

    A pair held out of ``world``'s training split is marked with *.
    """
    shapes, colours = world.value_names("shape"), world.value_names("colour")
    lines = ["| | " + " | ".join(colours) + " |", "|---|" + "---:|" * len(colours)]
    for i, shape in enumerate(shapes):
        cells = [f"{accuracy[f'{c} {shape}']:.2f}" + ("*" if world.heldout[i, j] else "") for j, c in enumerate(colours)]
        lines.append(f"| {shape} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _generate_toy(pipeline, prompts, seed, batch_size, guidance_scale, num_inference_steps) -> np.ndarray:
    """``generate`` at the toy world's resolution, refusing a pipeline that draws another size."""
    size = ToyWorld.image_size
    images = generate(
        pipeline, prompts, seed=seed, batch_size=batch_size, height=size, width=size,
        guidance_scale=guidance_scale, num_inference_steps=num_inference_steps,
    )
    if images.shape[1:] != (size, size, 3):
        raise ValueError(
            f"The pipeline returned images of shape {images.shape[1:]}, the toy world's are {(size, size, 3)}: "
            "evaluate a pipeline trained on the toy world at its resolution (train.py --resolution 32)."
        )
    return images


def _oracle_outputs(oracle: ToyOracle, images: np.ndarray, batch_size: int) -> tuple[dict[str, np.ndarray], torch.Tensor]:
    """The oracle's predicted labels and its features for uint8 images."""
    oracle.eval()
    labels, features = {a: [] for a in ATTRIBUTE_NAMES}, []
    for start in range(0, len(images), batch_size):
        pixels = ToyOracle.to_pixels(images[start : start + batch_size]).to(oracle.device, oracle.dtype)
        for a, predicted in oracle.classify(pixels).items():
            labels[a].append(predicted.cpu().numpy())
        features.append(oracle.features(pixels).cpu())
    return {a: np.concatenate(v) for a, v in labels.items()}, torch.cat(features)


# -- real data ------------------------------------------------------------------------------------


@torch.no_grad()
def fid_and_clip_score(
    images,
    reference_images,
    prompts: list[str],
    clip_model: str = "openai/clip-vit-large-patch14",
    inception_weights: str | os.PathLike | None = None,
    batch_size: int = 64,
    device=None,
) -> dict[str, float | Estimate]:
    """FID of ``images`` against ``reference_images`` and the CLIP score of ``images`` with ``prompts``.

    Images are uint8 arrays (N, H, W, 3) or lists of PIL images. FID is torchmetrics'
    ``FrechetInceptionDistance`` (2048-d Inception-v3 pool features, torch-fidelity's weights;
    ``inception_weights`` is a local copy of them for machines without network). Use thousands of
    images: FID is biased upwards at small N.
    """
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError as error:
        raise ImportError("FID needs torchmetrics with torch-fidelity: pip install 'torchmetrics[image]'") from error
    try:
        fid = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=inception_weights)
    except ModuleNotFoundError as error:
        raise ImportError(f"FID needs torch-fidelity ({error}): pip install 'torchmetrics[image]'") from error
    except OSError as error:  # the weights download failed (urllib's URLError is an OSError)
        raise RuntimeError(
            f"Could not load the Inception-v3 weights for FID ({error}). Download {INCEPTION_WEIGHTS_URL} "
            "on a machine with network and pass its path as inception_weights=."
        ) from error
    fid = fid.to(device or "cpu")
    for real, batch in ((True, reference_images), (False, images)):
        batch = _as_uint8(batch)
        for start in range(0, len(batch), batch_size):
            chunk = torch.from_numpy(batch[start : start + batch_size]).permute(0, 3, 1, 2)
            fid.update(chunk.to(fid.device), real=real)
    clip = ClipScorer.from_pretrained(clip_model, device=device, batch_size=batch_size)
    return {"fid": float(fid.compute()), "clip_score": mean_estimate(clip(images, prompts))}


def _as_uint8(images) -> np.ndarray:
    if isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4:
        return images
    if isinstance(images, list) and all(isinstance(image, PIL.Image.Image) for image in images):
        return np.stack([np.asarray(image.convert("RGB")) for image in images])
    raise TypeError("images must be a uint8 array (N, H, W, 3) or a list of PIL images.")
