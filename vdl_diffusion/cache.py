"""The embedding cache: the frozen encoders run once per image, not once per training step.

Per image it stores the VAE latent `z0` (and that of the mirrored image when flips are on), the
CLIP image embedding `y`, CLIP's pooled vision feature `h(x)`, and for images whose caption the
run may see, its text embedding `t*`. A folder under ``cache_dir`` holds one cache; its name is a
hash of everything that decides the tensors (dataset, encoder weights, resolution, crop, flip,
caption settings), so a changed setting never reads a stale cache.

Layout of a cache folder: ``shard-<k>.safetensors``, block ``k`` of the dataset's images
``[k·SHARD_ROWS, (k+1)·SHARD_ROWS)`` with the ``index`` of its rows and, in its header, the settings it
was encoded with and the rows of the block it skipped (undecodable images of a stream); and
``metadata.json``, written last, which marks the cache complete. A process encodes every
``num_processes``-th block and writes each as soon as it is full, so a build holds one block in memory
whatever the dataset's size. Every file is written under a temporary name and moved into place with
``os.replace``. A folder without a matching ``metadata.json`` (a killed run) is resumed: each block
whose shard opens, covers exactly that block and was encoded with these settings is kept, every
other is encoded again. Random crops are seeded per block, so a resumed build (with any number of
processes) writes what a straight one would. The main process holds a lock on the folder
(`vdl_diffusion.files.locked`) while it checks and builds, so a second run needing the same cache
waits, then reads it, instead of deleting it half-built.

A streamed dataset (``datasets.IterableDataset``) is cached the same way in one pass over the stream:
its length is learnt at its end, its images are checked as they are decoded, and a killed build reads
the stream again but decodes and encodes only the blocks it has not finished.

Reading: `CachedEmbeddingDataset` memory-maps the shards and reads a batch's rows with one gather
per tensor and shard (``__getitems__``, which torch's DataLoader calls with the batch's indices), or
holds the whole cache in RAM when asked and it fits (`CachedEmbeddingDataset.load_into_memory`).
"""

import hashlib
import json
import math
import os
import re
import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import broadcast_object_list
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .data import ImageDataset, ImageTransform, caption_text, encode_batch, try_decode_image
from .encoders import FrozenEncoders
from .files import locked, write_atomically

logger = get_logger(__name__)

CACHE_VERSION = 2  # bump when the stored tensors or the layout change (2: shards of SHARD_ROWS images, resumable)
SHARD_ROWS = 4096  # images per shard file: what a build holds in memory (about 160 MB at 256 px, SD VAE, ViT-L/14)
METADATA = "metadata.json"


def build_or_load_cache(
    accelerator: Accelerator,
    dataset: datasets.Dataset | datasets.IterableDataset,
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
    interpolation: str = "bilinear",
) -> "CachedEmbeddingDataset | ImageDataset":
    """The training dataset for ``dataset`` (from `load_image_dataset`): its cached embeddings, built if needed.

    Every process encodes every ``num_processes``-th block of ``SHARD_ROWS`` images, writing each
    block's shard as soon as it is encoded (a killed build resumes from them); the main process then
    checks that the shards cover the dataset and writes the metadata. Call it on all processes.
    A streamed ``dataset`` is read once by each process (`_encode_stream`).
    With ``no_cache`` it returns the images themselves (an `ImageDataset`) and nothing is cached.
    Either way, ``dataset.prepare_batch(batch, encoders)`` turns a loaded batch into the same keys.
    """
    streaming = isinstance(dataset, datasets.IterableDataset)
    if no_cache and streaming:
        raise ValueError("A streamed dataset is read through the cache, built in one pass: drop `no_cache` (--no_cache).")
    if no_cache:
        transform = ImageTransform(resolution, center_crop, random_flip, interpolation)
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
        interpolation=interpolation,
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
            what = "the streamed" if streaming else len(dataset)
            logger.info(f"Encoding {what} images into the embedding cache {folder} (finished shards of a killed build are kept).")
            if accelerator.is_main_process:
                _prune(folder)
            accelerator.wait_for_everyone()
            transform = ImageTransform(resolution, center_crop, interpolation=interpolation)  # no flip: both orientations are encoded
            # A private RNG for random crops (seeded per block): building a cache leaves the training run's randomness as it was.
            with torch.random.fork_rng(devices=[]):
                if streaming:
                    num_rows = _encode_stream(
                        accelerator, dataset, transform, encoders, folder, random_flip, batch_size, settings,
                        image_column, caption_column, caption_fraction,
                    )
                else:
                    images = ImageDataset(dataset, transform, image_column, caption_column, caption_fraction, seed)
                    _encode_shards(accelerator, images, encoders, folder, random_flip, batch_size, num_workers, settings)
                    num_rows = len(images)
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                _write_metadata(folder, settings, num_rows)
            accelerator.wait_for_everyone()
    return CachedEmbeddingDataset(folder)


def cache_settings(
    dataset: datasets.Dataset | datasets.IterableDataset,
    encoders: FrozenEncoders,
    *,
    image_column: str,
    resolution: int,
    center_crop: bool,
    random_flip: bool,
    caption_column: str | None,
    caption_fraction: float,
    seed: int,
    interpolation: str = "bilinear",
) -> dict[str, Any]:
    """Everything that decides the cached tensors; its hash names the cache folder."""
    seed_matters = not center_crop or 0.0 < caption_fraction < 1.0  # random crops, or a subset of captions
    # Bilinear resizing, the only filter before there was a choice, leaves the settings (and the names of
    # caches built then) as they were.
    filter_setting = {} if interpolation == "bilinear" else {"interpolation": interpolation}
    return {
        **filter_setting,
        "version": CACHE_VERSION,
        "dataset": dataset._fingerprint,
        "num_images": None if isinstance(dataset, datasets.IterableDataset) else len(dataset),  # a stream's is learnt at its end
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


def _blocks(num_images: int) -> list[range]:
    """The images of each shard: consecutive blocks of ``SHARD_ROWS``, the same for any number of processes."""
    return [range(start, min(start + SHARD_ROWS, num_images)) for start in range(0, num_images, SHARD_ROWS)]


def _shard_name(block: int) -> str:
    return f"shard-{block:05d}.safetensors"


SHARD_NAME = re.compile(r"shard-\d{5}\.safetensors")


def _stamp(settings: dict[str, Any]) -> str:
    """The settings as stored in each shard's header: a shard of a killed build is kept only for these."""
    return json.dumps(settings, sort_keys=True)


def _covered(path: Path, block: range, stamp: str) -> int | None:
    """How many of ``block``'s first rows the shard at ``path`` covers (kept or skipped, each once, in
    order), when it opens and was encoded with the settings ``stamp``; None otherwise."""
    try:
        with safe_open(path, framework="pt") as file:
            header = file.metadata() or {}
            if header.get("settings") != stamp:
                return None
            skipped = [row for row, _ in json.loads(header.get("skipped", "[]"))]
            rows = torch.cat([file.get_tensor("index"), torch.tensor(skipped, dtype=torch.long)]).sort().values
    except (OSError, SafetensorError, KeyError, ValueError):
        return None
    whole = len(rows) <= len(block) and torch.equal(rows, torch.arange(block.start, block.start + len(rows)))
    return len(rows) if whole else None


def _prune(folder: Path) -> None:
    """Before a build (main process, under the lock): deletes everything in ``folder`` but shards (a
    killed build's marker, temporary files, a stale top-k file); which shards are whole is checked by
    the process that owns each, and `_write_metadata` deletes those beyond the dataset's last block."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in folder.iterdir():
        if not SHARD_NAME.fullmatch(path.name):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def _encode_shards(
    accelerator: Accelerator,
    images: ImageDataset,
    encoders: FrozenEncoders,
    folder: Path,
    random_flip: bool,
    batch_size: int,
    num_workers: int,
    settings: dict[str, Any],
) -> None:
    """Encodes this process's blocks (every ``num_processes``-th) into one shard each, skipping finished ones.

    A block is held in memory until its shard is written: at most ``SHARD_ROWS`` images of
    ``2·C·h·w + 2·D + F`` values (two latents, `y`, `t*`, features), whatever the dataset's size.
    Random crops are seeded by (seed, block): a shard is the same whichever process encodes it.
    """
    stamp = _stamp(settings)
    todo = [
        (number, block) for number, block in enumerate(_blocks(len(images)))
        if number % accelerator.num_processes == accelerator.process_index
        and _covered(folder / _shard_name(number), block, stamp) != len(block)
    ]
    progress = tqdm(total=sum(map(len, (block for _, block in todo))), desc="Caching embeddings", disable=not accelerator.is_local_main_process)
    for number, block in todo:
        _seed_block(settings, number)
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(images, block), batch_size=batch_size, num_workers=num_workers)
        rows = []
        for batch in loader:
            rows.append(_encode(batch, encoders, random_flip))
            progress.update(len(batch["pixel_values"]))
        _write_shard(folder / _shard_name(number), rows, torch.arange(block.start, block.stop), [], stamp)
    progress.close()


def _encode_stream(
    accelerator: Accelerator,
    stream: datasets.IterableDataset,
    transform: ImageTransform,
    encoders: FrozenEncoders,
    folder: Path,
    random_flip: bool,
    batch_size: int,
    settings: dict[str, Any],
    image_column: str,
    caption_column: str | None,
    caption_fraction: float,
) -> int:
    """Encodes this process's blocks of the stream (every ``num_processes``-th) in one pass, skipping
    finished shards; returns the stream's length.

    Each process reads the whole stream but decodes only its own blocks' images, so the blocks (and
    the random crops, seeded per block) are those of a one-process build. An image that cannot be
    decoded is skipped and listed in its shard. The stream's length is unknown until its end, so a
    caption is visible with probability ``caption_fraction`` (a draw seeded per block) rather than
    to an exact share of the images, as `caption_visibility` does for a map-style dataset.
    """
    stamp = _stamp(settings)
    progress = tqdm(desc="Caching embeddings (stream)", unit=" images", disable=not accelerator.is_local_main_process)
    number, mine, length = -1, False, 0

    def write_block() -> None:
        _flush(pending, rows, encoders, random_flip)
        _write_shard(folder / _shard_name(number), rows, torch.tensor(index, dtype=torch.long), skipped, stamp)

    for length, row in enumerate(stream, start=1):
        position = length - 1
        if position // SHARD_ROWS != number:  # a new block: write the last one, see whether this one is ours
            if mine:
                write_block()
            number = position // SHARD_ROWS
            block = range(number * SHARD_ROWS, (number + 1) * SHARD_ROWS)
            mine = number % accelerator.num_processes == accelerator.process_index and _covered(folder / _shard_name(number), block, stamp) is None
            if mine:
                _seed_block(settings, number)
                shown = torch.rand(SHARD_ROWS, generator=torch.Generator().manual_seed(_block_seed(settings, number))) < caption_fraction
                pending, rows, index, skipped = [], [], [], []
        progress.update(1)
        if not mine:
            continue
        image, reason = try_decode_image(row[image_column])  # undecoded: the stream is cast with Image(decode=False)
        if image is None:
            skipped.append((position, f"row {position}{_path_of(row[image_column])}: {reason}"))
            continue
        caption = caption_text(row[caption_column]) if caption_column else ""
        visible = bool(caption) and bool(shown[position % SHARD_ROWS])
        pending.append({"pixel_values": transform(image), "caption": caption if visible else "", "has_caption": visible})
        index.append(position)
        if len(pending) == batch_size:
            _flush(pending, rows, encoders, random_flip)
    if mine:
        write_block()
    progress.close()
    return length


def _path_of(value: dict[str, Any] | None) -> str:
    return f" ({value['path']})" if value and value.get("path") else ""


def _flush(pending: list[dict[str, Any]], rows: list[dict[str, torch.Tensor]], encoders: FrozenEncoders, random_flip: bool) -> None:
    """Encodes the images waiting in ``pending`` as one batch onto ``rows``, and empties ``pending``."""
    if pending:
        rows.append(_encode(torch.utils.data.default_collate(pending), encoders, random_flip))
        pending.clear()


def _encode(batch: dict[str, Any], encoders: FrozenEncoders, random_flip: bool) -> dict[str, torch.Tensor]:
    """A batch's cached tensors, on the CPU: `encode_batch`'s, and the mirrored latents when flips are on."""
    row = encode_batch(batch, encoders)
    if random_flip:
        row["latents_flipped"] = encoders.encode_latents(batch["pixel_values"].flip(-1))
    return {key: value.cpu() for key, value in row.items()}


def _block_seed(settings: dict[str, Any], block: int) -> int:
    return ((settings.get("seed") or 0) * 1_000_003 + block) % 2**63


def _seed_block(settings: dict[str, Any], block: int) -> None:
    """Random crops are drawn from a seed per block: a shard is the same whichever process encodes it, and when."""
    torch.manual_seed(_block_seed(settings, block))


def _write_shard(path: Path, rows: list[dict[str, torch.Tensor]], index: torch.Tensor, skipped: list[tuple[int, str]], stamp: str) -> None:
    """One block's shard: its rows' tensors (none when every image of the block was skipped), their
    ``index`` and, in the header, the settings ``stamp`` and the skipped rows with the reason for each."""
    shard = {key: torch.cat([row[key] for row in rows]).contiguous() for key in rows[0]} if rows else {}
    shard["index"] = index
    header = {"settings": stamp, "skipped": json.dumps(skipped)}
    write_atomically(path, lambda temporary: save_file(shard, temporary, metadata=header))


def _write_metadata(folder: Path, settings: dict[str, Any], num_rows: int) -> None:
    """Checks that the shards cover each of the dataset's ``num_rows`` rows once, deletes shards beyond
    them, then marks the cache complete: its shards that hold images, and the rows skipped."""
    stamp, shards, skipped = _stamp(settings), [], []
    planned = [_shard_name(number) for number in range(len(_blocks(num_rows)))]
    for name, block in zip(planned, _blocks(num_rows)):
        if _covered(folder / name, block, stamp) != len(block):
            raise RuntimeError(f"The cache shard {folder / name} does not hold the images {block.start}-{block.stop - 1} once each.")
        with safe_open(folder / name, framework="pt") as file:
            skipped += [reason for _, reason in json.loads(file.metadata()["skipped"])]
            shards += [name] if "y" in file.keys() else []
    if not shards:
        raise ValueError(f"None of the dataset's {num_rows} images can be decoded; check `image_column`. The first: {skipped[:1]}.")
    for path in folder.glob("shard-*.safetensors"):
        if path.name not in planned:
            path.unlink()  # a block past the end: from a build with a smaller SHARD_ROWS
    metadata = {"settings": settings, "shards": shards, "skipped": skipped}
    write_atomically(folder / METADATA, lambda path: Path(path).write_text(json.dumps(metadata, indent=2)))


def _num_rows(path: Path) -> int:
    """A shard's rows, from its header (no tensor is read)."""
    with safe_open(path, framework="pt") as file:
        return file.get_slice("index").get_shape()[0]


def _read(path: Path, key: str) -> torch.Tensor:
    with safe_open(path, framework="pt") as file:
        return file.get_tensor(key)


class CachedEmbeddingDataset(torch.utils.data.Dataset):
    """Rows of a complete cache as ``{"latents", "y", "features", "caption_embeds", "has_caption"}``.

    With flips on, rows also carry ``latents_flipped`` and :meth:`prepare_batch` picks one of the
    two per image in the training step: item loading uses no randomness, so the data loader's
    look-ahead cannot shift the training RNG and a resumed run draws exactly what the straight run
    drew. ``caption_embeds``
    is zeros where ``has_caption`` is False. Torch's default collate batches the rows.

    Shards are memory-mapped, so the cache need not fit in RAM. Torch's DataLoader calls
    ``__getitems__`` with a whole batch's indices, which reads each tensor's rows of a shard with one
    gather; ``dataset[i]`` is the same read for one row. `load_into_memory` holds the cache in RAM
    instead, when it fits.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        metadata = json.loads((self.folder / METADATA).read_text())
        self.settings = metadata["settings"]
        self.shards = metadata["shards"]
        self.skipped = metadata.get("skipped", [])  # images of a stream that could not be decoded
        self.random_flip = self.settings["random_flip"]
        self.keys = ["latents", "y", "features", "caption_embeds", "has_caption"] + ["latents_flipped"] * self.random_flip
        # Row i is the i-th row of the shards in order (the dataset's i-th image, a stream's i-th decodable one).
        # Where each lies: two arrays, 12 bytes an image (a million images: 12 MB, no Python objects).
        lengths = np.array([_num_rows(self.folder / shard) for shard in self.shards], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])
        self._shard_of = np.repeat(np.arange(len(self.shards), dtype=np.int32), lengths)
        self._row_of = np.arange(self.offsets[-1]) - self.offsets[self._shard_of]
        self._maps, self._dtypes, self._columns = {}, {}, None

    def __len__(self) -> int:
        return len(self._shard_of)

    @property
    def num_captions(self) -> int:
        """How many images' captions training sees."""
        return sum(int(_read(self.folder / shard, "has_caption").sum()) for shard in self.shards)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        """The rows of a batch, as ``[dataset[i] for i in indices]`` gives them, read one gather per tensor and shard.

        Torch's DataLoader calls it (for a map-style dataset with automatic batching) with the batch's
        indices, then collates the list as usual.
        """
        indices = np.asarray(indices, dtype=np.int64)
        if self._columns is not None:
            index = torch.from_numpy(indices)
            columns = {key: column[index] for key, column in self._columns.items()}
        else:
            columns = self._gather(indices)
        return [dict(zip(columns, row)) for row in zip(*columns.values())]

    def load_into_memory(self, budget_bytes: int | None = None) -> bool:
        """Reads the whole cache into RAM if it takes at most ``budget_bytes`` (default: half the memory
        available, shared among this machine's processes); logs the decision and returns it.

        Rows then come from tensors in memory, with no file access in the training step; otherwise the
        shards stay memory-mapped.
        """
        if self._columns is not None:
            return True
        size = sum(_tensor_bytes(self.folder / shard, self.keys) for shard in self.shards)
        if budget_bytes is None:
            budget_bytes = _available_memory() // 2 // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if size > budget_bytes:
            logger.info(f"The embedding cache ({size / 2**30:.2f} GiB) exceeds the memory budget ({budget_bytes / 2**30:.2f} GiB): reading it memory-mapped.")
            return False
        columns = {}
        for shard_id, shard in enumerate(self.shards):
            with safe_open(self.folder / shard, framework="pt") as file:
                rows = slice(self.offsets[shard_id], self.offsets[shard_id + 1])
                for key in self.keys:
                    values = file.get_tensor(key)
                    if key not in columns:
                        columns[key] = values.new_empty((len(self), *values.shape[1:]))
                    columns[key][rows] = values
        self._columns = columns
        logger.info(f"Holding the embedding cache in memory ({size / 2**30:.2f} GiB of a {budget_bytes / 2**30:.2f} GiB budget).")
        return True

    def _gather(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        """Each tensor's rows ``indices``, one numpy gather per shard from its memory map."""
        shard_of, rows = self._shard_of[indices], self._row_of[indices]
        shard_ids = np.unique(shard_of)
        columns = {}
        for key in self.keys:
            if len(shard_ids) == 1:
                values = self._arrays(int(shard_ids[0]))[key][rows]
            else:
                parts = [(shard_of == shard_id, self._arrays(int(shard_id))[key]) for shard_id in shard_ids]
                values = np.empty((len(indices), *parts[0][1].shape[1:]), dtype=parts[0][1].dtype)
                for mask, array in parts:
                    values[mask] = array[rows[mask]]
            columns[key] = _as_tensor(values, self._dtypes[key])
        return columns

    def _arrays(self, shard_id: int) -> dict[str, np.ndarray]:
        """The shard's tensors as numpy views of its memory map, mapped lazily so each dataloader worker maps its own."""
        if shard_id not in self._maps:
            self._maps[shard_id], self._dtypes = _memory_map(self.folder / self.shards[shard_id])
        return self._maps[shard_id]

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

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": {}}  # memory maps do not pickle (spawned workers)


# safetensors' dtypes as numpy reads them (bfloat16 as its bits, viewed back in torch).
_NUMPY_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?",
}
_TORCH_DTYPES = {"BF16": torch.bfloat16}


def _memory_map(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """A safetensors file's tensors as numpy views of one read-only memory map, and their safetensors dtypes.

    The format: an 8-byte little-endian header length, a JSON header of ``dtype``, ``shape`` and
    ``data_offsets`` per tensor, then the data. A gather from a view reads only the rows it takes.
    """
    buffer = np.memmap(path, dtype=np.uint8, mode="r")
    header_size = int(buffer[:8].view("<u8")[0])
    header = json.loads(bytes(buffer[8 : 8 + header_size]))
    header.pop("__metadata__", None)
    arrays = {}
    for key, info in header.items():
        start, end = (8 + header_size + offset for offset in info["data_offsets"])
        arrays[key] = buffer[start:end].view(_NUMPY_DTYPES[info["dtype"]]).reshape(info["shape"])
    return arrays, {key: info["dtype"] for key, info in header.items()}


def _as_tensor(values: np.ndarray, dtype: str) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(values))
    return tensor.view(_TORCH_DTYPES[dtype]) if dtype in _TORCH_DTYPES else tensor


def _tensor_bytes(path: Path, keys: list[str]) -> int:
    with safe_open(path, framework="pt") as file:
        slices = [file.get_slice(key) for key in keys]
        return sum(math.prod(s.get_shape()) * np.dtype(_NUMPY_DTYPES[s.get_dtype()]).itemsize for s in slices)


def _available_memory() -> int:
    """Bytes of memory available to new allocations (Linux: MemAvailable), else the physical memory."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
