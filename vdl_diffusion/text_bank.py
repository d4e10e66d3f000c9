"""The ``text-bank`` prior's inputs: its unpaired texts, and each training image's top-k bank entries.

A training step must not cost a bank-sized matmul (a real bank holds up to 10^6 texts), so the top-k
entries of every cached image, indices and logits ``s yᵀt_j + log n_j``, are found once, after the
embedding cache is built, and read with each row (`with_bank_candidates`). The file lives in the
cache folder, named by the prior's fingerprint (bank, counts, s, k): a new bank or k never reads a
stale file, and a rebuilt cache deletes it with the folder. Without a cache (``--no_cache``) the
prior finds the top-k of each batch itself: one (B, N) matmul per step, ``2·B·N·D`` flops and
``B·N`` scores (chunked to 128 MiB), about 50 GFLOP a step for B = 32, N = 10^6, D = 768.
"""

import os
from pathlib import Path

import datasets
import numpy as np
import torch
from accelerate import PartialState
from accelerate.logging import get_logger
from safetensors import safe_open
from tqdm.auto import tqdm

from .cache import CachedEmbeddingDataset
from .files import write_atomically
from .priors import TextBankPrior, bank_top_k

logger = get_logger(__name__)

ROW = np.dtype([("index", "<i4"), ("logit", "<f4")])  # one bank entry of one image's top-k


def load_texts(source: str | os.PathLike) -> list[str]:
    """Unpaired texts for a prior: a UTF-8 text file, one text a line, or ``DATASET:COLUMN``, a text
    column of the ``train`` split of a `datasets` dataset (Hub name or local folder). Blank lines are skipped.
    """
    path = Path(source)
    if not path.is_file() and ":" in str(source):
        name, column = str(source).rsplit(":", 1)
        texts = datasets.load_dataset(name, split="train")[column]
        fix = f"pick a text column of {name}"
    else:
        try:
            texts = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as error:
            raise ValueError(f"{source} is not UTF-8 text ({error.reason} at byte {error.start}): re-encode it, e.g. `iconv -f latin1 -t utf-8`.") from None
        fix = "write one text a line"
    texts = [text.strip() for text in texts if isinstance(text, str) and text.strip()]
    if len(set(texts)) < 2:
        raise ValueError(
            f"{source} holds {len(set(texts))} distinct text(s); a text bank needs at least two unpaired texts "
            f"(thousands for a useful prior): {fix}."
        )
    return texts


def with_bank_candidates(dataset, prior, device: str | torch.device = "cpu", image_chunk: int = 4096):
    """``dataset`` whose rows carry ``bank_index`` and ``bank_logits``, each image's top-k bank entries.

    Only a cached dataset with a `TextBankPrior` gains them; any other is returned as it is (an
    uncached one leaves the prior to find each batch's top-k). The main process builds the file
    (`build_top_k`, on ``device``) while the others wait, then all read it.
    """
    if not isinstance(prior, TextBankPrior) or not isinstance(dataset, CachedEmbeddingDataset):
        return dataset
    path = Path(dataset.folder) / f"bank-top{prior.config.top_k}-{prior.fingerprint()}.npy"
    with PartialState().main_process_first():
        if path.is_file():
            logger.info(f"Reusing each image's top-{prior.config.top_k} bank entries, {path}.")
        else:
            build_top_k(dataset, prior, path, device, image_chunk)
    return BankCandidates(dataset, path)


@torch.no_grad()
def build_top_k(dataset: CachedEmbeddingDataset, prior: TextBankPrior, path: Path, device="cpu", image_chunk: int = 4096) -> None:
    """Writes the top-k entries of every image of the cache to ``path`` (a `ROW` array of shape (N, k)).

    Chunked over images (``image_chunk`` rows of ``y`` at a time) and over the bank (`bank_top_k`), and
    written into a memory-mapped file, so memory is the bank plus one chunk, whatever N. Written
    under a temporary name and moved into place: readers see the whole file or none.
    """
    bank, log_count = prior.bank.to(device), prior.log_count.to(device)
    k = min(prior.config.top_k, bank.shape[0])
    logger.info(f"Finding each of {len(dataset)} images' top-{k} among {bank.shape[0]} bank texts.")

    def write(temporary: str) -> None:
        rows = np.lib.format.open_memmap(temporary, mode="w+", dtype=ROW, shape=(len(dataset), k))
        with tqdm(total=len(dataset), desc="Top-k bank entries", disable=not PartialState().is_local_main_process) as progress:
            for index, y in _cached_embeddings(dataset, image_chunk):
                logits, entries = bank_top_k(y.to(device), bank, log_count, prior.config.logit_scale, k)
                rows["index"][index.numpy()] = entries.cpu().numpy()
                rows["logit"][index.numpy()] = logits.cpu().numpy()
                progress.update(len(index))
        rows.flush()

    write_atomically(path, write)


def _cached_embeddings(dataset: CachedEmbeddingDataset, chunk: int):
    """``(rows, y)`` for consecutive rows of each cache shard, ``chunk`` at a time, read from the memory map."""
    for shard, first, end in zip(dataset.shards, dataset.offsets[:-1], dataset.offsets[1:]):
        with safe_open(Path(dataset.folder) / shard, framework="pt") as file:
            y = file.get_slice("y")
            for start in range(0, end - first, chunk):
                stop = min(start + chunk, end - first)
                yield torch.arange(first + start, first + stop), y[start:stop]


class BankCandidates(torch.utils.data.Dataset):
    """Rows of ``dataset`` plus ``bank_index`` (k,) and ``bank_logits`` (k,) read from the top-k file, and
    ``bank_row``, the row's number, by which `prepare_batch` puts an E-step's chosen weights in place of
    the prior's logits (`use_choice`).

    The file is memory-mapped and opened lazily, so each data loader worker maps its own and no row
    is loaded before it is read; a batch's rows are read with one gather. The choice lives in the main
    process, on the training device, so it applies from the next batch whatever the workers hold.
    """

    def __init__(self, dataset: CachedEmbeddingDataset, path: str | os.PathLike):
        self.dataset, self.path = dataset, Path(path)
        self._rows, self.chosen_logits = None, None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        """A batch's rows (torch's DataLoader passes the batch's indices): one gather from the top-k file, one per
        tensor from the cache (`CachedEmbeddingDataset.__getitems__`)."""
        indices = np.asarray(indices, dtype=np.int64)
        rows = self.candidate_rows()[indices]
        bank_index, bank_logits = torch.from_numpy(rows["index"].astype(np.int64)), torch.from_numpy(rows["logit"].copy())
        return [
            {**row, "bank_index": entries, "bank_logits": logits, "bank_row": row_number}
            for row, entries, logits, row_number in zip(self.dataset.__getitems__(indices), bank_index, bank_logits, torch.from_numpy(indices))
        ]

    def candidate_rows(self) -> np.ndarray:
        """The whole top-k file, memory-mapped: a `ROW` array (N, k), the prior's candidates and logits."""
        if self._rows is None:
            self._rows = np.load(self.path, mmap_mode="r")
        return self._rows

    def use_choice(self, path: str | os.PathLike, device: str | torch.device = "cpu") -> None:
        """Batches take their ``bank_logits`` from the choice at ``path`` (`vdl_diffusion.e_step.write_choice`)
        from now on; it is held on ``device`` (N × k floats) and indexed there, without a host sync."""
        try:
            rows = np.load(path, mmap_mode="r")
        except (ValueError, OSError) as error:
            raise ValueError(f"{path} is not an E-step's choice (a run's e_step/choice-stepN.npy): {error}") from error
        if rows.dtype != ROW or rows.shape != self.candidate_rows().shape or not np.array_equal(rows["index"], self.candidate_rows()["index"]):
            raise ValueError(f"{path} does not list this dataset's candidates ({self.path}): not a choice made for this cache and prior.")
        self.chosen_logits = torch.from_numpy(rows["logit"].copy()).to(device)

    def prepare_batch(self, batch: dict[str, torch.Tensor], encoders) -> dict[str, torch.Tensor]:
        batch = dict(self.dataset.prepare_batch(batch, encoders))
        row = batch.pop("bank_row")
        if self.chosen_logits is not None:
            batch["bank_logits"] = self.chosen_logits[row.to(self.chosen_logits.device)]
        return batch

    def __getstate__(self) -> dict:
        # A memory map does not pickle (spawned workers), and workers never need the choice (`prepare_batch` runs here).
        return {**self.__dict__, "_rows": None, "chosen_logits": None}
