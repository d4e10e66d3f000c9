"""Training images: loading with `datasets`, robust decoding, the image transform, caption visibility.

Images are read with ``datasets.Image(decode=False)`` and decoded here with PIL, so one broken
file in a web-scale folder is dropped and counted instead of crashing a dataloader worker hours
into a run. The transform is plain PIL/numpy/torch: torchvision is optional in this project (the
PyPI wheel does not import beside every torch build), and a second code path would be a second
source of subtly different pixels.
"""

import io
from typing import Any

import datasets
import numpy as np
import torch
from accelerate import PartialState
from PIL import Image, ImageOps

# Pillow opens 16-bit grayscale files in these modes; 257 maps 65535 onto 255.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def load_image_dataset(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_data_dir: str | None = None,
    image_column: str = "image",
    caption_column: str | None = None,
    max_train_samples: int | None = None,
    cache_dir: str | None = None,
) -> tuple[datasets.Dataset, int]:
    """The "train" split of a Hub dataset or of a local image folder, and how many images were dropped.

    A local folder is read with the ``imagefolder`` builder (a ``metadata.jsonl`` beside the
    images supplies caption columns). Images that cannot be decoded are dropped and counted
    (`drop_undecodable`); the rest come back undecoded, as ``{"bytes", "path"}`` dicts for
    `decode_image`. Call it on every process: the main process loads and filters first, the
    others then read its cached result.
    """
    if (dataset_name is None) == (train_data_dir is None):
        raise ValueError(
            "Pass exactly one of `dataset_name` (a Hub dataset) or `train_data_dir` (a local image folder); "
            f"got dataset_name={dataset_name!r}, train_data_dir={train_data_dir!r}."
        )
    if max_train_samples is not None and max_train_samples < 1:
        raise ValueError(f"`max_train_samples` must be a positive integer or None, got {max_train_samples}.")
    with PartialState().main_process_first():
        if dataset_name is not None:
            dataset = datasets.load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir, split="train")
        else:
            dataset = datasets.load_dataset("imagefolder", data_dir=train_data_dir, cache_dir=cache_dir, split="train")
        for argument, column in (("image_column", image_column), ("caption_column", caption_column)):
            if column is not None and column not in dataset.column_names:
                raise ValueError(
                    f"`{argument}`={column!r} is not a column of the dataset; its columns are {dataset.column_names}."
                )
        if max_train_samples is not None:
            dataset = dataset.select(range(min(max_train_samples, len(dataset))))
        return drop_undecodable(dataset.cast_column(image_column, datasets.Image(decode=False)), image_column)


def decode_image(value: dict[str, Any]) -> Image.Image | None:
    """An RGB image from a ``{"bytes", "path"}`` cell, or None when the file cannot be decoded.

    ``load()`` decodes every pixel, so a truncated file fails here rather than in a worker.
    """
    try:
        image = Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"])
        image.load()
        return to_rgb(ImageOps.exif_transpose(image))
    except DECODE_ERRORS:
        return None


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB from any mode: 16-bit scaled (not clipped) to 8 bits, transparency composited on white."""
    if image.mode in SIXTEEN_BIT_MODES:
        gray = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.clip(gray, 0, 255).round().astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
    return image.convert("RGB")


def drop_undecodable(
    dataset: datasets.Dataset, image_column: str = "image", num_proc: int | None = None
) -> tuple[datasets.Dataset, int]:
    """The dataset without images that cannot be decoded, and how many were dropped.

    ``Dataset.filter`` caches its result by fingerprint, so later runs do not decode twice.
    """
    kept = dataset.filter(_is_decodable, input_columns=image_column, num_proc=num_proc, desc="Checking images")
    if len(kept) == 0:
        raise ValueError(f"None of the {len(dataset)} entries of column {image_column!r} is a decodable image; check `image_column`.")
    return kept, len(dataset) - len(kept)


def _is_decodable(value: dict[str, Any]) -> bool:
    return decode_image(value) is not None


class ImageTransform:
    """Shorter side resized to ``resolution``, a square crop, optional horizontal flip, [-1, 1].

    The random crop and flip draw from torch's global RNG, which Accelerate and the DataLoader
    seed per process and per worker, so a seeded run is reproducible.
    """

    def __init__(self, resolution: int, center_crop: bool = True, random_flip: bool = False):
        if resolution < 1:
            raise ValueError(f"`resolution` must be a positive integer, got {resolution}.")
        self.resolution = resolution
        self.center_crop = center_crop
        self.random_flip = random_flip

    def __call__(self, image: Image.Image) -> torch.Tensor:
        width, height = image.size
        scale = self.resolution / min(width, height)
        size = (max(self.resolution, round(width * scale)), max(self.resolution, round(height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR)
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

    @torch.no_grad()
    def prepare_batch(self, batch: dict[str, Any], encoders) -> dict[str, torch.Tensor]:
        """A batch as training consumes it, the keys of a cached batch: ``latents``, ``y``,
        ``features`` (`FrozenEncoders.encode_images`), ``caption_embeds`` (`t*` where
        ``has_caption``, zeros elsewhere; only visible captions are encoded) and ``has_caption``.
        """
        encoded = encoders.encode_images(batch["pixel_values"])
        has_caption = batch["has_caption"].to(encoded["y"].device)
        caption_embeds = torch.zeros_like(encoded["y"])
        if has_caption.any():
            captions = [caption for caption, visible in zip(batch["caption"], has_caption.tolist()) if visible]
            caption_embeds[has_caption] = encoders.encode_text(captions)
        return {**encoded, "caption_embeds": caption_embeds, "has_caption": has_caption}
