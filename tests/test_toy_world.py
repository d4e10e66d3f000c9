"""The toy world: deterministic, labels true to the pixels, disjoint splits, honest captions, and
shipped models that load offline with ``from_pretrained``."""

import hashlib

import numpy as np
import pytest
import torch

from vdl_diffusion.toy import (
    ATTRIBUTE_NAMES,
    ATTRIBUTES,
    SPLITS,
    TOY_CLIP,
    TOY_ORACLE,
    TOY_VAE,
    ToyOracle,
    ToyWorld,
    as_dataset,
    write_imagefolder,
)
from vdl_diffusion.toy import world as world_module
from vdl_diffusion.toy.world import BACKGROUND_RGB, COLOUR_RGB


@pytest.fixture(scope="module")
def world():
    return ToyWorld(seed=0)


@pytest.fixture(scope="module")
def batch(world):
    return world.sample(512, "eval", rng=1)


def test_sampling_is_deterministic_by_seed(world):
    a, b = world.sample(32, "train", rng=3), ToyWorld(seed=0).sample(32, "train", rng=3)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.captions == b.captions
    for name in ATTRIBUTE_NAMES:
        np.testing.assert_array_equal(a.labels[name], b.labels[name])
        np.testing.assert_array_equal(a.mentioned[name], b.mentioned[name])
    assert not np.array_equal(a.images, world.sample(32, "train", rng=4).images)
    assert not np.array_equal(ToyWorld(seed=1).sample(32, "train", rng=3).images, a.images)


def test_fingerprint_follows_what_the_world_draws(world, monkeypatch):
    """train.py names the folder of training images by it: new captions must never meet an old folder."""
    fingerprint = world.fingerprint()
    assert ToyWorld(seed=0).fingerprint() == fingerprint
    assert ToyWorld(seed=1).fingerprint() != fingerprint
    monkeypatch.setitem(world_module.MENTION_PROBABILITY, "position", 1.0)
    assert world.fingerprint() != fingerprint


def test_sample_shapes_and_types(batch):
    assert batch.images.shape == (512, 32, 32, 3) and batch.images.dtype == np.uint8
    assert batch.masks.shape == (512, 32, 32) and batch.masks.dtype == bool
    assert len(batch) == 512
    for name, values in ATTRIBUTES.items():
        assert batch.labels[name].min() >= 0 and batch.labels[name].max() < len(values)
        assert set(np.unique(batch.labels[name])) == set(range(len(values)))  # every value occurs


def test_object_colour_and_background_match_labels(batch):
    images = batch.images.astype(np.float32)
    for i in range(len(batch)):
        inside, outside = batch.masks[i], ~batch.masks[i]
        # Most covered pixels are pure object colour (edges are blended): their median is the colour.
        object_rgb = np.median(images[i][inside], axis=0)
        assert np.abs(object_rgb - COLOUR_RGB[batch.labels["colour"][i]]).max() <= 30
        nearest = np.abs(COLOUR_RGB - object_rgb).sum(1).argmin()
        assert nearest == batch.labels["colour"][i]
        background_rgb = np.median(images[i][outside], axis=0)
        assert np.abs(background_rgb - BACKGROUND_RGB[batch.labels["background"][i]]).max() <= 20


def test_size_and_position_match_the_mask(batch):
    area = batch.masks.sum((1, 2))
    ys, xs = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    cy = (batch.masks * ys).sum((1, 2)) / area
    cx = (batch.masks * xs).sum((1, 2)) / area
    row, col = np.divmod(batch.labels["position"], 2)  # top left, top right, bottom left, bottom right
    np.testing.assert_array_equal(cy >= 15.5, row == 1)
    np.testing.assert_array_equal(cx >= 15.5, col == 1)
    for shape in range(len(ATTRIBUTES["shape"])):
        small = area[(batch.labels["shape"] == shape) & (batch.labels["size"] == 0)]
        large = area[(batch.labels["shape"] == shape) & (batch.labels["size"] == 1)]
        assert small.max() < large.min()


def test_ring_has_a_hole_and_other_shapes_are_filled(batch):
    ring = list(ATTRIBUTES["shape"]).index("ring")
    ys, xs = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    area = batch.masks.sum((1, 2))
    cy = np.rint((batch.masks * ys).sum((1, 2)) / area).astype(int)
    cx = np.rint((batch.masks * xs).sum((1, 2)) / area).astype(int)
    centre_filled = batch.masks[np.arange(len(batch)), cy, cx]
    np.testing.assert_array_equal(centre_filled, batch.labels["shape"] != ring)


def _image_hashes(images):
    return {hashlib.sha1(image.tobytes()).hexdigest() for image in images}


def test_splits_are_disjoint_and_train_holds_out_combinations(world):
    samples = {split: world.sample(2000, split) for split in SPLITS}
    hashes = {split: _image_hashes(s.images) for split, s in samples.items()}
    assert all(len(h) == 2000 for h in hashes.values())
    assert not hashes["clip"] & hashes["train"] and not hashes["clip"] & hashes["eval"]
    assert not hashes["train"] & hashes["eval"]
    assert 0.15 <= world.heldout.mean() <= 0.25
    assert world.heldout.any(0).sum() >= 5 and world.heldout.any(1).all()  # spread over shapes, colours
    train = samples["train"].labels
    assert not world.is_heldout(train["shape"], train["colour"]).any()
    evaluation = samples["eval"].labels
    assert world.is_heldout(evaluation["shape"], evaluation["colour"]).mean() > 0.1


def test_captions_name_exactly_the_mentioned_attributes_and_match_labels(batch):
    """``read_caption`` finds every word of every value, so this also checks captions name nothing else."""
    for i, caption in enumerate(batch.captions):
        assert batch.mentioned["shape"][i] or batch.mentioned["colour"][i]
        expected = {a: int(batch.labels[a][i]) for a in ATTRIBUTE_NAMES if batch.mentioned[a][i]}
        assert ToyWorld.read_caption(caption) == expected, caption
    assert len(set(batch.captions)) > len(batch) // 2  # varied templates and synonyms
    assert np.mean([m.mean() for m in batch.mentioned.values()]) < 0.7  # partial captions


def test_mention_probability_overrides_only_the_attributes_it_names(world):
    """train_clip.py's position curriculum: every caption names the position, the rest stays partial."""
    default = world.sample(256, "clip", rng=3)
    always = world.sample(256, "clip", rng=3, mention_probability={"position": 1.0})
    assert always.mentioned["position"].all() and not default.mentioned["position"].all()
    assert all(ToyWorld.read_caption(c)["position"] == p for c, p in zip(always.captions, always.labels["position"]))
    assert np.array_equal(always.images, default.images)  # same stream, same images: only captions change
    assert 0.2 < always.mentioned["size"].mean() < 0.5


def test_read_caption_of_prompts():
    assert ToyWorld.read_caption("A Red Circle") == {"shape": 0, "colour": 0}
    assert ToyWorld.read_caption("something hollow against light") == {"shape": 4, "background": 2}
    assert ToyWorld.read_caption("a photo of a cat") == {}
    with pytest.raises(ValueError, match="2 colour values"):
        ToyWorld.read_caption("a red and blue circle")


def test_prior_texts_and_zero_shot_prompts(world):
    texts = world.prior_texts()
    assert len(texts) > 20 and len(set(texts)) == len(texts)
    for name, values in ATTRIBUTES.items():
        prompts = world.zero_shot_prompts(name)
        assert len(prompts) == len(values)
        for index, group in enumerate(prompts):
            assert all(ToyWorld.read_caption(p) == {name: index} for p in group), group


def test_bad_arguments_raise_clear_errors(world):
    with pytest.raises(ValueError, match="split"):
        world.sample(4, "test")
    with pytest.raises(TypeError, match="rng"):
        world.sample(4, "clip", rng="seed")
    with pytest.raises(ValueError, match="attribute"):
        world.zero_shot_prompts("texture")
    with pytest.raises(ValueError, match="names no attribute of the world: \\['texture'\\]"):
        world.sample(4, "clip", mention_probability={"texture": 1.0})
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\], got \{'position': 1.5\}"):
        world.sample(4, "clip", mention_probability={"position": 1.5})


def test_imagefolder_export_loads_with_datasets(world, tmp_path):
    datasets = pytest.importorskip("datasets")
    write_imagefolder(world, tmp_path, n=12, split="train", rng=5)
    loaded = datasets.load_dataset("imagefolder", data_dir=str(tmp_path), split="train")
    expected = world.sample(12, "train", rng=5)
    assert len(loaded) == 12
    assert loaded["text"] == expected.captions
    np.testing.assert_array_equal(np.stack([np.asarray(im) for im in loaded["image"]]), expected.images)
    for name in ATTRIBUTE_NAMES:
        np.testing.assert_array_equal(loaded[name], expected.labels[name])


def test_dataset_holds_the_sampled_images_and_labels_without_writing_a_file(world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dataset = as_dataset(world, 12, split="train", rng=5)
    expected = world.sample(12, "train", rng=5)
    assert not list(tmp_path.rglob("*")) and dataset.cache_files == []  # in memory until saved
    assert dataset["text"] == expected.captions
    np.testing.assert_array_equal(np.stack([np.asarray(im) for im in dataset["image"]]), expected.images)
    for name in ATTRIBUTE_NAMES:
        np.testing.assert_array_equal(dataset[name], expected.labels[name])
    # Its fingerprint hashes what it holds: a rebuild keeps it (and the embedding cache built from it).
    assert as_dataset(world, 12, split="train", rng=5)._fingerprint == dataset._fingerprint
    assert as_dataset(world, 12, split="train", rng=6)._fingerprint != dataset._fingerprint


# -- shipped models ------------------------------------------------------------------------------


def test_shipped_clip_loads_into_every_class(batch):
    from transformers import (
        CLIPImageProcessor,
        CLIPModel,
        CLIPTextModelWithProjection,
        CLIPTokenizerFast,
        CLIPVisionModelWithProjection,
    )

    model, info = CLIPModel.from_pretrained(TOY_CLIP, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    text_model, info = CLIPTextModelWithProjection.from_pretrained(TOY_CLIP, output_loading_info=True)
    assert not info["missing_keys"]
    vision_model, info = CLIPVisionModelWithProjection.from_pretrained(TOY_CLIP, output_loading_info=True)
    assert not info["missing_keys"]
    tokenizer = CLIPTokenizerFast.from_pretrained(TOY_CLIP)
    processor = CLIPImageProcessor.from_pretrained(TOY_CLIP)
    assert model.logit_scale.exp().item() == pytest.approx(100.0, rel=1e-4)

    # World words are single tokens, not character soup.
    for word in ["crimson", "triangle", "background", "left"]:
        assert tokenizer.tokenize(word) == [word + "</w>"]
    pixels = processor(images=list(batch.images[:4]), return_tensors="pt").pixel_values
    assert pixels.shape == (4, 3, 32, 32)  # no upscaling to 224
    tokens = tokenizer(batch.captions[:4], padding=True, return_tensors="pt")
    with torch.no_grad():
        def features(out):
            return out if torch.is_tensor(out) else out.pooler_output
        torch.testing.assert_close(text_model(**tokens).text_embeds, features(model.get_text_features(**tokens)))
        torch.testing.assert_close(vision_model(pixel_values=pixels).image_embeds, features(model.get_image_features(pixel_values=pixels)))


def test_shipped_vae_gives_8x8x4_latents_the_oracle_can_still_read(world):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(TOY_VAE).eval()
    oracle = ToyOracle.from_pretrained(TOY_ORACLE).eval()
    fresh = world.sample(64, "eval", rng=54321)
    x = ToyOracle.to_pixels(fresh.images)
    with torch.no_grad():
        latents = vae.encode(x).latent_dist.mode()
        reconstruction = vae.decode(latents).sample.clamp(-1, 1)
    assert latents.shape == (64, 4, 8, 8)
    assert 2 ** (len(vae.config.block_out_channels) - 1) == 4  # the vae_scale_factor pipelines compute
    assert (latents * vae.config.scaling_factor).std().item() == pytest.approx(1.0, abs=0.3)
    predicted = oracle.classify(reconstruction)
    for name in ATTRIBUTE_NAMES:
        assert (predicted[name].numpy() == fresh.labels[name]).mean() >= 62 / 64, name


def test_shipped_oracle_classifies_fresh_images(world):
    oracle = ToyOracle.from_pretrained(TOY_ORACLE).eval()
    fresh = world.sample(64, "eval", rng=12345)
    pixels = ToyOracle.to_pixels(fresh.images)
    predicted = oracle.classify(pixels)
    for name in ATTRIBUTE_NAMES:
        assert (predicted[name].numpy() == fresh.labels[name]).mean() >= 63 / 64, name
    assert oracle.features(pixels).shape == (64, oracle.config.feature_dim)
