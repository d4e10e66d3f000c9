import io
import json
import logging
import struct
import zlib

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from vdl_diffusion import data
from vdl_diffusion.data import (
    ImageDataset,
    ImageTransform,
    caption_visibility,
    check_metadata,
    decode_image,
    drop_undecodable,
    load_image_dataset,
    to_rgb,
    write_skipped,
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
    """(dataset, skipped) as the trainer gets them."""
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


def test_broken_images_are_skipped_and_listed_with_their_reason(loaded, image_folder, tmp_path):
    dataset, skipped = loaded
    assert sorted(line.split(": ", 1)[0] for line in skipped) == sorted(str(image_folder / name) for name in broken_images())
    assert all(len(line.split(": ", 1)[1]) > 10 for line in skipped)  # a reason follows each file
    assert write_skipped(skipped, tmp_path).read_text().splitlines() == skipped
    assert len(dataset) == len(good_images())
    names = {cell["path"].rsplit("/", 1)[-1] for cell in dataset["image"]}
    assert names == set(good_images())
    assert all(set(cell) == {"bytes", "path"} for cell in dataset["image"])  # `datasets` decoded nothing
    assert all(decode_image(cell).mode == "RGB" for cell in dataset["image"])


def test_max_train_samples_counts_before_skipping(image_folder, hf_cache):
    dataset, skipped = load_image_dataset(train_data_dir=str(image_folder), max_train_samples=5, cache_dir=hf_cache)
    assert len(dataset) + len(skipped) == 5


def test_drop_undecodable_rejects_a_column_without_images(dataset):
    with pytest.raises(ValueError, match="image_column"):
        drop_undecodable(dataset.cast_column("text", datasets.Image(decode=False)), "text")


def test_a_reloaded_dataset_keeps_its_fingerprint(image_folder, hf_cache, dataset):
    # The embedding cache is keyed by this fingerprint: a random one would rebuild it every run.
    again, _ = load_image_dataset(train_data_dir=str(image_folder), caption_column="text", cache_dir=hf_cache)
    assert again._fingerprint == dataset._fingerprint


def test_a_stream_has_a_fingerprint_that_follows_its_files(image_folder, hf_cache, tmp_path):
    """A streamed folder: every row undecoded and in order, the fingerprint the same on every load (so the cache
    is found again) and new when a file changes or fewer rows are taken."""
    stream, skipped = load_image_dataset(train_data_dir=str(image_folder), caption_column="text", cache_dir=hf_cache, streaming=True)
    assert isinstance(stream, datasets.IterableDataset) and skipped == []  # broken images are found as the cache is built
    rows = list(stream)
    assert len(rows) == len(good_images()) + len(broken_images()) and all(set(row["image"]) == {"bytes", "path"} for row in rows)
    again, _ = load_image_dataset(train_data_dir=str(image_folder), caption_column="text", cache_dir=hf_cache, streaming=True)
    five, _ = load_image_dataset(train_data_dir=str(image_folder), max_train_samples=5, cache_dir=hf_cache, streaming=True)
    assert again._fingerprint == stream._fingerprint != five._fingerprint and len(list(five)) == 5
    copy = tmp_path / "copy"
    copy.mkdir()
    for file in image_folder.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    before = data.stream_dataset(None, train_data_dir=str(copy), cache_dir=hf_cache)._fingerprint
    (copy / "rgb0.jpg").write_bytes(png_bytes(noise(24, 40), "JPEG"))
    assert data.stream_dataset(None, train_data_dir=str(copy), cache_dir=hf_cache)._fingerprint != before
    with pytest.raises(ValueError, match=r"caption_column.*'prompt'"):
        load_image_dataset(train_data_dir=str(image_folder), caption_column="prompt", cache_dir=hf_cache, streaming=True)


def test_skipped_images_are_named_in_the_log(image_folder, hf_cache, caplog):
    with caplog.at_level(logging.WARNING):
        _, skipped = load_image_dataset(train_data_dir=str(image_folder), caption_column="text", cache_dir=hf_cache)
    assert f"{len(skipped)} of {len(good_images()) + len(broken_images())} images cannot be decoded" in caplog.text
    assert skipped[0] in caplog.text


def write_folder(folder, images, metadata_lines):
    for name in images:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(png_bytes(noise(8, 8)))
    (folder / "metadata.jsonl").write_text("".join(line + "\n" for line in metadata_lines))


@pytest.mark.parametrize(
    "line, problem",
    [
        ('{"file_name": "b.png", "text": "unterminated}', "is not valid JSON"),
        ('{"text": "no file"}', "names no image file"),
        ('["b.png"]', "names no image file"),
    ],
)
def test_a_bad_metadata_line_is_named_by_file_and_line(tmp_path, hf_cache, line, problem):
    write_folder(tmp_path, ["a.png", "b.png"], ['{"file_name": "a.png", "text": "fine"}', "", line])
    with pytest.raises(ValueError, match=rf"metadata\.jsonl, line 3, {problem}.*\{{\"file_name\": \"0001\.png\""):
        load_image_dataset(train_data_dir=str(tmp_path), cache_dir=hf_cache)


def test_images_missing_from_the_metadata_are_reported(tmp_path, hf_cache, caplog):
    images = ["a.png", "b.png", "sub/c.png", "sub/d.png", ".hidden/e.png"]
    write_folder(tmp_path, images, ['{"file_name": "a.png", "text": "x"}', '{"file_name": "./sub/c.png", "text": "y"}'])
    (tmp_path / "notes.txt").write_text("not an image")
    assert check_metadata(tmp_path) == [str(tmp_path / "b.png"), str(tmp_path / "sub" / "d.png")]
    assert check_metadata(tmp_path / "sub") == []  # no metadata file covers it from there: nothing is left out
    with caplog.at_level(logging.WARNING):
        dataset, _ = load_image_dataset(train_data_dir=str(tmp_path), caption_column="text", cache_dir=hf_cache)
    assert sorted(dataset["text"]) == ["x", "y"]
    assert "2 images in" in caplog.text and "b.png" in caplog.text and "not in any metadata.jsonl" in caplog.text


def png_claiming(width: int, height: int) -> bytes:
    """A 1×1 PNG whose header claims ``width``×``height``: only a decoder that trusts the header sees a big image."""
    content = bytearray(png_bytes(Image.new("L", (1, 1))))
    content[16:24] = struct.pack(">II", width, height)
    content[29:33] = struct.pack(">I", zlib.crc32(content[12:29]))
    return bytes(content)


def test_oversized_and_missing_images_are_skipped_with_their_reason(monkeypatch):
    cells = [{"bytes": png_claiming(12000, 12000), "path": None}, {"bytes": png_bytes(noise(8, 8)), "path": None}, None]
    table = datasets.Dataset.from_dict({"image": cells}, features=datasets.Features({"image": datasets.Image(decode=False)}))
    kept, skipped = drop_undecodable(table)
    assert len(kept) == 1 and decode_image(kept[0]["image"]).size == (8, 8)
    assert skipped[0].startswith("row 0: DecompressionBombError: 12000x12000 pixels is more than")
    assert "MAX_IMAGE_PIXELS" in skipped[0]
    assert skipped[1] == "row 2: the row has no image"
    monkeypatch.setattr(data, "MAX_IMAGE_PIXELS", 8 * 8 - 1)
    assert decode_image(cells[1]) is None


def test_float_and_32_bit_images_are_scaled_by_their_own_range():
    floats = png_bytes(Image.fromarray(np.array([[0.0, 0.25, 1.0, np.nan]], dtype=np.float32)), "TIFF")
    integers = png_bytes(Image.fromarray(np.array([[0, 1000, 4095]], dtype=np.int32)), "TIFF")  # 12-bit data
    assert Image.open(io.BytesIO(floats)).mode == "F" and Image.open(io.BytesIO(integers)).mode == "I"
    assert list(decode_image({"bytes": floats, "path": None}).getdata()) == [(v, v, v) for v in (0, 64, 255, 0)]
    assert list(decode_image({"bytes": integers, "path": None}).getdata()) == [(v, v, v) for v in (0, 62, 255)]
    assert list(to_rgb(Image.new("F", (2, 1), 7.5)).getdata()) == [(0, 0, 0)] * 2  # a constant image has no range


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
