"""The embedding cache: the frozen encoders run once per image, not once per training step.

Per image it stores the VAE latent `z0` (and that of the mirrored image when flips are on), the
CLIP image embedding `y`, CLIP's pooled vision feature `h(x)`, and for images whose caption the
run may see, its text embedding `t*`. A folder under ``cache_dir`` holds one cache; its name is a
hash of everything that decides the tensors (dataset, encoder weights, resolution, crop, flip,
caption settings), so a changed setting never reads a stale cache.

Layout of a cache folder: one ``shard-<process>.safetensors`` per process that encoded images,
each with the global ``index`` of its rows, and ``metadata.json``, written last, which marks the
cache complete. Every file is written under a temporary name and moved into place with
``os.replace``; a folder without a matching ``metadata.json`` (a killed run) is deleted and rebuilt.
The main process holds a lock on the folder (`vdl_diffusion.files.locked`) while it checks and
builds, so a second run needing the same cache waits, then reads it, instead of deleting it half-built.
"""

import hashlib
import json
import os
import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import datasets
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import broadcast_object_list
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .data import ImageDataset, ImageTransform
from .encoders import FrozenEncoders
from .files import locked

logger = get_logger(__name__)

CACHE_VERSION = 1  # bump when the stored tensors change meaning
METADATA = "metadata.json"


def build_or_load_cache(
    accelerator: Accelerator,
    dataset: datasets.Dataset,
    encoders: FrozenEncoders,
    cache_dir: str | os.PathLike,
    *,
    resolution: int,
    image_column: str = "image",
    center_crop: bool = True,
    random_flip: bool = False,
    caption_column: str | None = None,
    caption_fraction: float = 0.0,
    seed: int = 0,
    batch_size: int = 32,
    num_workers: int = 0,
    no_cache: bool = False,
) -> "CachedEmbeddingDataset | ImageDataset":
    """The training dataset for ``dataset`` (from `load_image_dataset`): its cached embeddings, built if needed.

    Every process encodes every ``num_processes``-th image and writes its shard; the main process
    then checks that the shards cover the dataset and writes the metadata. Call it on all processes.
    With ``no_cache`` it returns the images themselves (an `ImageDataset`) and nothing is cached.
    Either way, ``dataset.prepare_batch(batch, encoders)`` turns a loaded batch into the same keys.
    """
    if no_cache:
        transform = ImageTransform(resolution, center_crop, random_flip)
        return ImageDataset(dataset, transform, image_column, caption_column, caption_fraction, seed)
    settings = cache_settings(
        dataset,
        encoders,
        image_column=image_column,
        resolution=resolution,
        center_crop=center_crop,
        random_flip=random_flip,
        caption_column=caption_column,
        caption_fraction=caption_fraction,
        seed=seed,
    )
    folder = Path(cache_dir) / hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    # Only the main process locks: the others follow it through the broadcast and the barriers. They wait
    # there while it waits for another run, so that run must finish within the process group's timeout.
    with locked(folder) if accelerator.is_main_process else nullcontext():
        # The main process decides, so all processes take the same branch even on a lagging shared filesystem.
        complete = broadcast_object_list([accelerator.is_main_process and is_complete(folder, settings)])[0]
        if complete:
            logger.info(f"Reusing the embedding cache {folder}.")
        else:
            logger.info(f"Encoding {len(dataset)} images into the embedding cache {folder}.")
            if accelerator.is_main_process:
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)
            accelerator.wait_for_everyone()
            transform = ImageTransform(resolution, center_crop)  # no flip: both orientations are encoded
            images = ImageDataset(dataset, transform, image_column, caption_column, caption_fraction, seed)
            # A private RNG for random crops: building a cache leaves the training run's randomness as it was.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + accelerator.process_index)
                _encode_shard(accelerator, images, encoders, folder, random_flip, batch_size, num_workers)
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                _write_metadata(folder, settings)
            accelerator.wait_for_everyone()
    return CachedEmbeddingDataset(folder)


def cache_settings(
    dataset: datasets.Dataset,
    encoders: FrozenEncoders,
    *,
    image_column: str,
    resolution: int,
    center_crop: bool,
    random_flip: bool,
    caption_column: str | None,
    caption_fraction: float,
    seed: int,
) -> dict[str, Any]:
    """Everything that decides the cached tensors; its hash names the cache folder."""
    seed_matters = not center_crop or 0.0 < caption_fraction < 1.0  # random crops, or a subset of captions
    return {
        "version": CACHE_VERSION,
        "dataset": dataset._fingerprint,
        "num_images": len(dataset),
        "image_column": image_column,
        "encoders": encoders.fingerprint(),
        "resolution": resolution,
        "center_crop": center_crop,
        "random_flip": random_flip,
        "caption_column": caption_column,
        "caption_fraction": caption_fraction,
        "seed": seed if seed_matters else None,
    }


def is_complete(folder: Path, settings: dict[str, Any]) -> bool:
    """Whether ``folder`` holds a finished cache for exactly these settings."""
    try:
        metadata = json.loads((folder / METADATA).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return metadata.get("settings") == settings and all((folder / shard).is_file() for shard in metadata["shards"])


def _encode_shard(
    accelerator: Accelerator,
    images: ImageDataset,
    encoders: FrozenEncoders,
    folder: Path,
    random_flip: bool,
    batch_size: int,
    num_workers: int,
) -> None:
    """Encodes this process's images (every ``num_processes``-th) into ``shard-<process>.safetensors``.

    The shard is held in memory until it is written: ``2·C·h·w + 2·D + F`` values per image
    (two latents, `y`, `t*`, features).
    """
    indices = list(range(accelerator.process_index, len(images), accelerator.num_processes))
    if not indices:
        return
    shard_images = torch.utils.data.Subset(images, indices)
    loader = torch.utils.data.DataLoader(shard_images, batch_size=batch_size, num_workers=num_workers)
    rows = []
    for batch in tqdm(loader, desc="Caching embeddings", disable=not accelerator.is_local_main_process):
        row = images.prepare_batch(batch, encoders)
        if random_flip:
            row["latents_flipped"] = encoders.encode_latents(batch["pixel_values"].flip(-1))
        rows.append({key: value.cpu() for key, value in row.items()})
    shard = {key: torch.cat([row[key] for row in rows]).contiguous() for key in rows[0]}
    shard["index"] = torch.tensor(indices)
    _write_atomically(folder / f"shard-{accelerator.process_index:05d}.safetensors", lambda path: save_file(shard, path))


def _write_metadata(folder: Path, settings: dict[str, Any]) -> None:
    """Checks that the shards cover every image once, then marks the cache complete."""
    shards = sorted(path.name for path in folder.glob("shard-*.safetensors"))
    covered = sorted(index for shard in shards for index in _read(folder / shard, "index").tolist())
    if covered != list(range(settings["num_images"])):
        raise RuntimeError(f"The cache shards in {folder} do not cover the dataset's {settings['num_images']} images once each.")
    metadata = {"settings": settings, "shards": shards}
    _write_atomically(folder / METADATA, lambda path: Path(path).write_text(json.dumps(metadata, indent=2)))


def _write_atomically(path: Path, write: Callable[[str], None]) -> None:
    """Writes under a temporary name, then renames: readers see the whole file or none of it."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(str(temporary))
    os.replace(temporary, path)


def _read(path: Path, key: str) -> torch.Tensor:
    with safe_open(path, framework="pt") as file:
        return file.get_tensor(key)


class CachedEmbeddingDataset(torch.utils.data.Dataset):
    """Rows of a complete cache as ``{"latents", "y", "features", "caption_embeds", "has_caption"}``.

    With flips on, rows also carry ``latents_flipped`` and :meth:`prepare_batch` picks one of the
    two per image in the training step: item loading uses no randomness, so the data loader's
    look-ahead cannot shift the training RNG and a resumed run draws exactly what the straight run
    drew. ``caption_embeds``
    is zeros where ``has_caption`` is False. Shards are memory-mapped and read row by row, so the
    cache need not fit in RAM. Torch's default collate batches the rows.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        metadata = json.loads((self.folder / METADATA).read_text())
        self.settings = metadata["settings"]
        self.shards = metadata["shards"]
        self.random_flip = self.settings["random_flip"]
        locations = {}
        for shard_id, shard in enumerate(self.shards):
            for row, index in enumerate(_read(self.folder / shard, "index").tolist()):
                locations[index] = (shard_id, row)
        self._locations = [locations[index] for index in range(len(locations))]
        self._files = {}

    def __len__(self) -> int:
        return len(self._locations)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        shard_id, row = self._locations[index]
        file = self._file(shard_id)
        keys = ["latents", "y", "features", "caption_embeds", "has_caption"] + ["latents_flipped"] * self.random_flip
        return {key: file.get_slice(key)[row] for key in keys}

    def prepare_batch(self, batch: dict[str, torch.Tensor], encoders: FrozenEncoders) -> dict[str, torch.Tensor]:
        """The batch as training consumes it (cf. `ImageDataset.prepare_batch`): rows were encoded when
        the cache was built; with flips on, each image's latent is mirrored with probability 1/2."""
        if "latents_flipped" not in batch:
            return batch
        batch = dict(batch)
        flipped = batch.pop("latents_flipped")
        flip = torch.rand(flipped.shape[0], device=flipped.device) < 0.5
        batch["latents"] = torch.where(flip[:, None, None, None], flipped, batch["latents"])
        return batch

    def _file(self, shard_id: int):
        """The open shard, opened lazily so each dataloader worker maps its own."""
        if shard_id not in self._files:
            self._files[shard_id] = safe_open(self.folder / self.shards[shard_id], framework="pt")
        return self._files[shard_id]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_files": {}}  # open files do not pickle (spawned workers)
