"""Training images: loading with `datasets`, robust decoding, the image transform, caption visibility.

Images are read with ``datasets.Image(decode=False)`` and decoded here with PIL, so one broken
file in a web-scale folder is dropped and listed instead of crashing a dataloader worker hours
into a run. The transform is plain PIL/numpy/torch: torchvision is optional in this project (the
PyPI wheel does not import beside every torch build), and a second code path would be a second
source of subtly different pixels.
"""

import io
import json
import os
import re
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from accelerate import PartialState
from accelerate.logging import get_logger
from datasets.fingerprint import Hasher
from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder
from PIL import Image, ImageOps

logger = get_logger(__name__)

DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
# Larger images are skipped, judged from the file header before any pixel is decoded: one would
# cost 200+ MB per decode (twice: the check, then the encoding), only to be shrunk to `resolution`.
# 64 megapixels is above nearly every camera photo and below PIL's decompression-bomb warning.
MAX_IMAGE_PIXELS = 8192 * 8192
SKIPPED_IMAGES = "skipped_images.txt"
# Metadata keys that name image files, as the imagefolder builder reads them.
FILE_NAME_KEY = re.compile(r"(.+_)?file_names?")


def load_image_dataset(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_data_dir: str | None = None,
    image_column: str = "image",
    caption_column: str | None = None,
    max_train_samples: int | None = None,
    cache_dir: str | None = None,
    streaming: bool = False,
) -> tuple[datasets.Dataset | datasets.IterableDataset, list[str]]:
    """The "train" split of a Hub dataset (or of a folder written by ``save_to_disk``, also given as
    ``dataset_name``) or of a local image folder, and the images dropped from it.

    With ``streaming`` it is a ``datasets.IterableDataset`` read as it downloads (`stream_dataset`),
    with nothing dropped yet: undecodable images are found, and listed, as the cache is built.

    A local folder is read with the ``imagefolder`` builder (a ``metadata.jsonl`` beside the
    images supplies caption columns; `check_metadata` vets it first). Images that cannot be
    decoded are dropped and listed, one ``"<file or row>: <reason>"`` line each
    (`drop_undecodable`, `write_skipped`); the rest come back undecoded, as ``{"bytes", "path"}``
    dicts for `decode_image`. Call it on every process: the main process loads and filters
    first, the others then read its cached result.
    """
    if (dataset_name is None) == (train_data_dir is None):
        raise ValueError(
            "Pass exactly one of `dataset_name` (a Hub dataset) or `train_data_dir` (a local image folder); "
            f"got dataset_name={dataset_name!r}, train_data_dir={train_data_dir!r}."
        )
    if max_train_samples is not None and max_train_samples < 1:
        raise ValueError(f"`max_train_samples` must be a positive integer or None, got {max_train_samples}.")
    if streaming:
        return stream_dataset(dataset_name, dataset_config_name, train_data_dir, image_column, caption_column, max_train_samples, cache_dir), []
    with PartialState().main_process_first():
        if dataset_name is not None and is_saved_dataset(dataset_name):
            dataset = load_saved_dataset(dataset_name, dataset_config_name)
        elif dataset_name is not None:
            dataset = datasets.load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir, split="train")
        else:
            unlisted = check_metadata(train_data_dir)
            if unlisted:
                logger.warning(
                    f"{len(unlisted)} images in {train_data_dir} are not in any metadata.jsonl and are left out, "
                    f"e.g. {', '.join(unlisted[:3])}; add a line for each to train on them."
                )
            dataset = datasets.load_dataset("imagefolder", data_dir=train_data_dir, cache_dir=cache_dir, split="train")
        _check_columns(dataset.column_names, image_column, caption_column)
        if max_train_samples is not None:
            dataset = dataset.select(range(min(max_train_samples, len(dataset))))
        dataset, skipped = drop_undecodable(dataset.cast_column(image_column, datasets.Image(decode=False)), image_column)
        if skipped:
            logger.warning(
                f"{len(skipped)} of {len(dataset) + len(skipped)} images cannot be decoded and are skipped, "
                f"e.g. {'; '.join(skipped[:3])}."
            )
        return dataset, skipped


def stream_dataset(
    dataset_name: str | None,
    dataset_config_name: str | None = None,
    train_data_dir: str | None = None,
    image_column: str = "image",
    caption_column: str | None = None,
    max_train_samples: int | None = None,
    cache_dir: str | None = None,
) -> datasets.IterableDataset:
    """The "train" split as ``datasets.load_dataset(..., streaming=True)`` reads it (the first
    ``max_train_samples`` rows), its images undecoded, with a ``_fingerprint`` as a ``datasets.Dataset`` has one.

    An ``IterableDataset`` has no fingerprint; the cache needs one to never read a stale cache. It is
    the builder's hash (for a Hub dataset, its commit) and configuration id (which covers local files'
    modification times), as ``load_dataset`` itself uses them to name its cache.
    """
    if dataset_name is not None and is_saved_dataset(dataset_name):
        dataset = load_saved_dataset(dataset_name, dataset_config_name)
        if max_train_samples is not None:
            dataset = dataset.select(range(min(max_train_samples, len(dataset))))
        stream, fingerprint = dataset.to_iterable_dataset(), dataset._fingerprint
    else:
        builder = datasets.load_dataset_builder(
            dataset_name or "imagefolder", dataset_config_name, data_dir=train_data_dir, cache_dir=cache_dir
        )
        stream = builder.as_streaming_dataset(split="train")
        stream = stream if max_train_samples is None else stream.take(max_train_samples)
        fingerprint = Hasher.hash([builder.hash, builder.config_id, max_train_samples])
    _check_columns(stream.column_names, image_column, caption_column)
    stream = stream.cast_column(image_column, datasets.Image(decode=False))
    stream._fingerprint = fingerprint
    return stream


def _check_columns(column_names: list[str] | None, image_column: str, caption_column: str | None) -> None:
    """A clear error for a column the dataset lacks (a stream whose features are unknown is not checked)."""
    for argument, column in (("image_column", image_column), ("caption_column", caption_column)):
        if column is not None and column_names is not None and column not in column_names:
            raise ValueError(f"`{argument}`={column!r} is not a column of the dataset; its columns are {column_names}.")


def is_saved_dataset(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return any(os.path.isfile(os.path.join(path, name)) for name in ("state.json", "dataset_dict.json"))


def load_saved_dataset(path: str | os.PathLike, config_name: str | None = None) -> datasets.Dataset:
    """The dataset a ``save_to_disk`` folder holds (its "train" split, for a ``DatasetDict``)."""
    if config_name is not None:
        raise ValueError(
            f"{path} was written by save_to_disk, which keeps one configuration; leave out `dataset_config_name` "
            f"(got {config_name!r})."
        )
    dataset = datasets.load_from_disk(os.fspath(path))
    if isinstance(dataset, datasets.DatasetDict):
        if "train" not in dataset:
            raise ValueError(f"{path} holds the splits {sorted(dataset)}, none of them \"train\"; save the training split as \"train\".")
        dataset = dataset["train"]
    return dataset


def check_metadata(folder: str | os.PathLike) -> list[str]:
    """Vets every ``metadata.jsonl`` under ``folder`` line by line; returns the images it covers that no line lists.

    A malformed line would otherwise surface as a pyarrow error naming neither file nor line, and
    the imagefolder builder silently leaves out the images that no metadata line names. Like the
    builder, it ignores hidden files and folders.
    """
    covered, images, listed = set(), [], set()
    # Top-down, so a folder is covered by a metadata file in it or in a folder above it.
    for root, folders, files in os.walk(os.path.normpath(folder)):
        folders[:] = sorted(name for name in folders if not name.startswith((".", "__")))
        if "metadata.jsonl" in files:
            metadata = os.path.join(root, "metadata.jsonl")
            with open(metadata, "rb") as lines:
                for number, line in enumerate(lines, start=1):
                    if line.strip():
                        listed.update(os.path.join(root, name) for name in _listed_files(metadata, number, line))
        elif os.path.dirname(root) not in covered:
            continue
        covered.add(root)
        images += [
            os.path.join(root, name)
            for name in sorted(files)
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in ImageFolder.EXTENSIONS
        ]
    return [image for image in images if image not in listed]


def _listed_files(metadata: str, number: int, line: bytes) -> list[str]:
    """The image paths that line ``number`` of ``metadata`` names, normalised; a clear error if it names none."""
    example = '{"file_name": "0001.png", "text": "a caption"}'
    try:
        row = json.loads(line)
    except ValueError as error:
        raise ValueError(
            f"{metadata}, line {number}, is not valid JSON ({error}). Each line must be one JSON object such as "
            f"{example}; fix or delete that line."
        ) from None
    names = [value for key, value in row.items() if FILE_NAME_KEY.fullmatch(key)] if isinstance(row, dict) else []
    files = [file for name in names for file in (name if isinstance(name, list) else [name])]
    if not files or not all(isinstance(file, str) for file in files):
        raise ValueError(
            f"{metadata}, line {number}, names no image file: each line must be a JSON object such as {example}, "
            f"its file_name relative to the metadata file's folder; got {line.decode(errors='replace').strip()[:200]}"
        )
    return [os.path.normpath(file) for file in files]


def decode_image(value: dict[str, Any]) -> Image.Image | None:
    """An RGB image from a ``{"bytes", "path"}`` cell, or None when the file cannot be decoded."""
    return try_decode_image(value)[0]


def try_decode_image(value: dict[str, Any] | None) -> tuple[Image.Image | None, str | None]:
    """The RGB image and None, or None and why the cell cannot be decoded.

    The size comes from the header (`Image.open` is lazy), so an oversized image is refused before
    any pixel is decoded; ``load()`` then decodes every pixel, so a truncated file fails here
    rather than in a worker.
    """
    if not value:
        return None, "the row has no image"
    try:
        image = Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"])
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise Image.DecompressionBombError(
                f"{image.width}x{image.height} pixels is more than vdl_diffusion.data.MAX_IMAGE_PIXELS = "
                f"{MAX_IMAGE_PIXELS}; downscale the file (or raise that limit)"
            )
        image.load()
        return to_rgb(ImageOps.exif_transpose(image)), None
    except DECODE_ERRORS as error:
        return None, " ".join(f"{type(error).__name__}: {error}".split())


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB from any mode: transparency composited on white, and gray levels beyond 8 bits scaled, not clipped.

    16-bit modes (``I;16*``) are scaled by their type's range, 0..65535 onto 0..255, which keeps
    the file's exposure. Modes ``I`` (32-bit integers, e.g. 12-bit sensor data) and ``F`` (floats,
    0..1 or any unit) have no range their files agree on, so each image's own minimum..maximum
    maps onto 0..255 (a constant image is black; NaN and infinities are black too).
    """
    if image.mode.startswith("I;16"):
        image = _gray(np.asarray(image, dtype=np.float64) / 257.0)
    elif image.mode in ("I", "F"):
        image = _gray(_stretch(np.asarray(image, dtype=np.float64)))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
    return image.convert("RGB")


def _gray(levels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(levels, 0, 255).round().astype(np.uint8), mode="L")


def _stretch(values: np.ndarray) -> np.ndarray:
    """The finite values' minimum..maximum onto 0..255; the rest onto 0."""
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros_like(values)
    low, high = values[finite].min(), values[finite].max()
    return (np.where(finite, values, low) - low) * (255.0 / (high - low) if high > low else 0.0)


def drop_undecodable(
    dataset: datasets.Dataset, image_column: str = "image", num_proc: int | None = None
) -> tuple[datasets.Dataset, list[str]]:
    """The dataset without images that cannot be decoded, and a ``"<file or row>: <reason>"`` line per dropped one.

    ``Dataset.map`` caches the reasons by fingerprint, so later runs do not decode twice.
    """
    reasons = list(dataset.map(
        _skip_reason,
        input_columns=image_column,
        with_indices=True,
        remove_columns=dataset.column_names,
        features=datasets.Features({"skipped": datasets.Value("string")}),
        num_proc=num_proc,
        desc="Checking images",
    )["skipped"])
    skipped = [reason for reason in reasons if reason is not None]
    if len(skipped) == len(dataset):
        first = f" The first: {skipped[0]}." if skipped else ""
        raise ValueError(
            f"None of the {len(dataset)} entries of column {image_column!r} is a decodable image; check `image_column`.{first}"
        )
    if not skipped:
        return dataset, []
    return dataset.select([index for index, reason in enumerate(reasons) if reason is None]), skipped


def _skip_reason(value: dict[str, Any] | None, index: int) -> dict[str, str | None]:
    """Why the image of row ``index`` cannot be decoded, naming its file (or row), or None when it can."""
    reason = try_decode_image(value)[1]
    return {"skipped": None if reason is None else f"{(value or {}).get('path') or f'row {index}'}: {reason}"}


def write_skipped(skipped: list[str], output_dir: str | os.PathLike) -> Path:
    """Writes the images `load_image_dataset` skipped, one per line, to ``output_dir/skipped_images.txt``.

    The file is written even when nothing was skipped, so a run's folder records that the check ran.
    """
    path = Path(output_dir) / SKIPPED_IMAGES
    path.write_text("".join(f"{line}\n" for line in skipped))
    return path


# The resampling filters of --image_interpolation_mode, by the names of diffusers' training scripts
# (torchvision's InterpolationMode; "nearest_exact" is PIL's NEAREST, which torchvision's "nearest" is not).
INTERPOLATION_MODES = {
    "nearest": Image.Resampling.NEAREST,
    "nearest_exact": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}


class ImageTransform:
    """Shorter side resized to ``resolution`` (with the ``interpolation`` filter of `INTERPOLATION_MODES`), a
    square crop, optional horizontal flip, [-1, 1].

    The random crop and flip draw from torch's global RNG, which Accelerate and the DataLoader
    seed per process and per worker, so a seeded run is reproducible.
    """

    def __init__(self, resolution: int, center_crop: bool = True, random_flip: bool = False, interpolation: str = "bilinear"):
        if resolution < 1:
            raise ValueError(f"`resolution` must be a positive integer, got {resolution}.")
        if interpolation not in INTERPOLATION_MODES:
            raise ValueError(f"`interpolation` must be one of {sorted(INTERPOLATION_MODES)}, got {interpolation!r}.")
        self.resolution = resolution
        self.center_crop = center_crop
        self.random_flip = random_flip
        self.interpolation = interpolation

    def __call__(self, image: Image.Image) -> torch.Tensor:
        width, height = image.size
        scale = self.resolution / min(width, height)
        size = (max(self.resolution, round(width * scale)), max(self.resolution, round(height * scale)))
        image = image.resize(size, INTERPOLATION_MODES[self.interpolation])
        left, top = (self._offset(length) for length in size)
        image = image.crop((left, top, left + self.resolution, top + self.resolution))
        if self.random_flip and torch.rand(()) < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
        return pixels.float() / 127.5 - 1.0

    def _offset(self, length: int) -> int:
        if self.center_crop:
            return (length - self.resolution) // 2
        return int(torch.randint(length - self.resolution + 1, ()))


def caption_text(value: Any) -> str:
    """The caption of one row: the string itself, the first non-empty one of a list, else ""."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (list, tuple)):
        return next((text for text in map(caption_text, value) if text), "")
    return ""


def caption_visibility(captions: list[str], caption_fraction: float, seed: int) -> torch.Tensor:
    """Which rows' captions the run may see: ``round(caption_fraction * n)`` of the n non-empty ones.

    A seeded permutation picks them, so every process (and every rerun) sees the same images.
    """
    if not 0.0 <= caption_fraction <= 1.0:
        raise ValueError(f"`caption_fraction` must be in [0, 1], got {caption_fraction}.")
    captioned = torch.tensor([bool(text) for text in captions], dtype=torch.bool)
    candidates = captioned.nonzero().flatten()
    order = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed))
    visible = torch.zeros(len(captions), dtype=torch.bool)
    visible[candidates[order[: round(caption_fraction * len(candidates))]]] = True
    return visible


class ImageDataset(torch.utils.data.Dataset):
    """Rows as ``{"pixel_values", "caption", "has_caption"}``; an invisible caption reads as "".

    The dataset must come from `load_image_dataset` (broken images dropped). Torch's default
    collate batches the rows (captions become a list of strings); `prepare_batch` encodes them.
    """

    def __init__(
        self,
        dataset: datasets.Dataset,
        transform: ImageTransform,
        image_column: str = "image",
        caption_column: str | None = None,
        caption_fraction: float = 0.0,
        seed: int = 0,
    ):
        if caption_column is None and caption_fraction > 0:
            raise ValueError(f"`caption_fraction`={caption_fraction} needs a `caption_column` to read captions from.")
        self.dataset = dataset
        self.transform = transform
        self.image_column = image_column
        self.caption_column = caption_column
        self.captions = [caption_text(value) for value in dataset[caption_column]] if caption_column else [""] * len(dataset)
        self.has_caption = caption_visibility(self.captions, caption_fraction, seed)

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def num_captions(self) -> int:
        """How many images' captions training sees."""
        return int(self.has_caption.sum())

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = decode_image(self.dataset[index][self.image_column])
        if image is None:
            raise ValueError(f"Image {index} cannot be decoded; filter the dataset with `drop_undecodable` first.")
        has_caption = bool(self.has_caption[index])
        return {
            "pixel_values": self.transform(image),
            "caption": self.captions[index] if has_caption else "",
            "has_caption": has_caption,
        }

    def prepare_batch(self, batch: dict[str, Any], encoders) -> dict[str, torch.Tensor]:
        """The encoders run on the batch here, in the training step (`encode_batch`)."""
        return encode_batch(batch, encoders)


@torch.no_grad()
def encode_batch(batch: dict[str, Any], encoders) -> dict[str, torch.Tensor]:
    """A batch of ``{"pixel_values", "caption", "has_caption"}`` as training consumes it, the keys of a
    cached batch: ``latents``, ``y``, ``features`` (`FrozenEncoders.encode_images`), ``caption_embeds``
    (`t*` where ``has_caption``, zeros elsewhere; only visible captions are encoded) and ``has_caption``.
    """
    encoded = encoders.encode_images(batch["pixel_values"])
    has_caption = batch["has_caption"].to(encoded["y"].device)
    caption_embeds = torch.zeros_like(encoded["y"])
    if has_caption.any():
        captions = [caption for caption, visible in zip(batch["caption"], has_caption.tolist()) if visible]
        caption_embeds[has_caption] = encoders.encode_text(captions)
    return {**encoded, "caption_embeds": caption_embeds, "has_caption": has_caption}
