import io
import json

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from vdl_diffusion.data import (
    ImageDataset,
    ImageTransform,
    caption_visibility,
    decode_image,
    drop_undecodable,
    load_image_dataset,
    to_rgb,
)

RNG = np.random.default_rng(0)


def png_bytes(image: Image.Image, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def noise(height: int, width: int) -> Image.Image:
    return Image.fromarray(RNG.integers(0, 256, (height, width, 3), dtype=np.uint8))


def good_images() -> dict[str, bytes]:
    """14 decodable files in every mode a web folder holds."""
    files = {f"rgb{i}.jpg": png_bytes(noise(24 + 4 * i, 40 - 2 * i), "JPEG") for i in range(6)}
    files["gray.png"] = png_bytes(noise(32, 32).convert("L"))
    files["rgba.png"] = png_bytes(noise(32, 32).convert("RGBA"))
    files["palette.png"] = png_bytes(noise(32, 32).convert("P"))
    transparent = noise(32, 32).convert("P")
    transparent.info["transparency"] = 0
    files["palette_transparent.png"] = png_bytes(transparent)
    files["gray16.png"] = png_bytes(Image.fromarray(RNG.integers(0, 65536, (32, 32)).astype(np.uint16)))
    files["la.png"] = png_bytes(noise(32, 32).convert("LA"))
    files["cmyk.jpg"] = png_bytes(noise(32, 32).convert("CMYK"), "JPEG")
    files["wide.png"] = png_bytes(noise(16, 64))
    return files


def broken_images() -> dict[str, bytes]:
    jpeg, png = png_bytes(noise(40, 40), "JPEG"), png_bytes(noise(40, 40))
    return {
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "truncated.png": png[: len(png) // 2],
        "not_an_image.png": b"<html>404 not found</html>",
        "empty.jpg": b"",
    }


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """18 images (4 of them broken) and a metadata.jsonl with captions, some empty."""
    folder = tmp_path_factory.mktemp("images")
    files = {**good_images(), **broken_images()}
    with open(folder / "metadata.jsonl", "w") as metadata:
        for i, (name, content) in enumerate(sorted(files.items())):
            (folder / name).write_bytes(content)
            metadata.write(json.dumps({"file_name": name, "text": "" if i % 4 == 3 else f"caption {i}"}) + "\n")
    return folder


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("hf"))


@pytest.fixture(scope="module")
def loaded(image_folder, hf_cache):
    """(dataset, num_skipped) as the trainer gets them."""
    return load_image_dataset(train_data_dir=str(image_folder), caption_column="text", cache_dir=hf_cache)


@pytest.fixture(scope="module")
def dataset(loaded):
    return loaded[0]


def test_load_image_dataset_needs_exactly_one_source(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        load_image_dataset()
    with pytest.raises(ValueError, match="exactly one"):
        load_image_dataset(dataset_name="some/dataset", train_data_dir=str(tmp_path))


def test_load_image_dataset_names_the_existing_columns(image_folder, hf_cache):
    with pytest.raises(ValueError, match=r"caption_column.*'prompt'.*\['image', 'text'\]"):
        load_image_dataset(train_data_dir=str(image_folder), caption_column="prompt", cache_dir=hf_cache)
    with pytest.raises(ValueError, match=r"image_column.*'img'"):
        load_image_dataset(train_data_dir=str(image_folder), image_column="img", cache_dir=hf_cache)


def test_broken_images_are_skipped_and_counted(loaded):
    dataset, num_skipped = loaded
    assert num_skipped == len(broken_images())
    assert len(dataset) == len(good_images())
    names = {cell["path"].rsplit("/", 1)[-1] for cell in dataset["image"]}
    assert names == set(good_images())
    assert all(set(cell) == {"bytes", "path"} for cell in dataset["image"])  # `datasets` decoded nothing
    assert all(decode_image(cell).mode == "RGB" for cell in dataset["image"])


def test_max_train_samples_counts_before_skipping(image_folder, hf_cache):
    dataset, num_skipped = load_image_dataset(train_data_dir=str(image_folder), max_train_samples=5, cache_dir=hf_cache)
    assert len(dataset) + num_skipped == 5


def test_drop_undecodable_rejects_a_column_without_images(dataset):
    with pytest.raises(ValueError, match="image_column"):
        drop_undecodable(dataset.cast_column("text", datasets.Image(decode=False)), "text")


def test_a_reloaded_dataset_keeps_its_fingerprint(image_folder, hf_cache, dataset):
    # The embedding cache is keyed by this fingerprint: a random one would rebuild it every run.
    again, _ = load_image_dataset(train_data_dir=str(image_folder), caption_column="text", cache_dir=hf_cache)
    assert again._fingerprint == dataset._fingerprint


def test_to_rgb_composites_transparency_on_white_and_scales_16_bit():
    rgba = Image.new("RGBA", (2, 1), (10, 20, 30, 255))
    rgba.putpixel((1, 0), (0, 0, 0, 0))
    assert list(to_rgb(rgba).getdata()) == [(10, 20, 30), (255, 255, 255)]

    palette = Image.new("P", (2, 1), 1)
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    palette.putpixel((1, 0), 0)
    palette.info["transparency"] = 0
    assert list(to_rgb(palette).getdata()) == [(200, 100, 50), (255, 255, 255)]

    sixteen = Image.open(io.BytesIO(png_bytes(Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.uint16)))))
    assert sixteen.mode.startswith("I")
    assert list(to_rgb(sixteen).getdata()) == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]

    gray = Image.new("L", (1, 1), 77)
    assert list(to_rgb(gray).getdata()) == [(77, 77, 77)]


def test_transform_resizes_shorter_side_and_crops_the_centre():
    # Left third red, middle third green, right third blue: the centre crop of a 3:1 image is green.
    stripes = np.zeros((20, 60, 3), dtype=np.uint8)
    for channel in range(3):
        stripes[:, 20 * channel : 20 * (channel + 1), channel] = 255
    pixels = ImageTransform(10, center_crop=True)(Image.fromarray(stripes))
    assert pixels.shape == (3, 10, 10)
    assert pixels.min() >= -1 and pixels.max() <= 1
    assert torch.allclose(pixels[:, 5, 5], torch.tensor([-1.0, 1.0, -1.0]))


def test_random_crop_and_flip_follow_torchs_seed():
    image = noise(30, 50)
    transform = ImageTransform(16, center_crop=False, random_flip=True)
    torch.manual_seed(0)
    first = [transform(image) for _ in range(8)]
    torch.manual_seed(0)
    again = [transform(image) for _ in range(8)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert len({tuple(x.flatten()[:32].tolist()) for x in first}) > 1  # crops/flips actually vary


def test_flip_mirrors_the_image():
    image = noise(16, 16)
    plain = ImageTransform(16)(image)
    flips = ImageTransform(16, random_flip=True)
    torch.manual_seed(0)
    outputs = [flips(image) for _ in range(16)]
    assert any(torch.equal(x, plain) for x in outputs)
    assert any(torch.equal(x, plain.flip(-1)) for x in outputs)
    assert all(torch.equal(x, plain) or torch.equal(x, plain.flip(-1)) for x in outputs)


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 1.0])
def test_caption_visibility_picks_a_fixed_fraction_of_the_captioned_images(fraction):
    captions = [f"caption {i}" if i % 5 else "" for i in range(40)]  # 32 captioned images
    visible = caption_visibility(captions, fraction, seed=3)
    assert int(visible.sum()) == round(fraction * 32)
    assert all(captions[i] for i in visible.nonzero().flatten().tolist())
    assert torch.equal(visible, caption_visibility(captions, fraction, seed=3))


def test_caption_visibility_depends_on_the_seed_and_checks_its_range():
    captions = [f"caption {i}" for i in range(100)]
    assert not torch.equal(caption_visibility(captions, 0.5, seed=0), caption_visibility(captions, 0.5, seed=1))
    with pytest.raises(ValueError, match="caption_fraction"):
        caption_visibility(captions, 1.5, seed=0)


def test_image_dataset_hides_invisible_captions(dataset):
    images = ImageDataset(dataset, ImageTransform(32), caption_column="text", caption_fraction=0.5, seed=0)
    rows = [images[i] for i in range(len(images))]
    assert all(row["pixel_values"].shape == (3, 32, 32) for row in rows)
    visible = [row for row in rows if row["has_caption"]]
    assert len(visible) == round(0.5 * sum(bool(text) for text in dataset["text"]))
    assert all(row["caption"].startswith("caption") for row in visible)
    assert all(row["caption"] == "" for row in rows if not row["has_caption"])
    batch = torch.utils.data.default_collate(rows[:4])
    assert batch["pixel_values"].shape == (4, 3, 32, 32) and batch["has_caption"].dtype == torch.bool


def test_image_dataset_needs_a_caption_column_for_captions(dataset):
    with pytest.raises(ValueError, match="caption_column"):
        ImageDataset(dataset, ImageTransform(32), caption_fraction=0.5)
