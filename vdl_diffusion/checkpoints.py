"""Resumable training states: ``checkpoint-N`` folders that are complete or absent, and never unpickled.

A checkpoint holds Accelerate's state (model, optimizer, scheduler, sampler and RNG states; Accelerate
loads its own files with ``weights_only=True``), the EMA of the UNet as safetensors plus JSON, and
``training_state.json``, written last, which marks it complete. It is written under a temporary name
and renamed, so a kill or a full disk never destroys the previous good one.
"""

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import load as accelerate_load
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file

logger = get_logger(__name__)

TRAINING_STATE = "training_state.json"
EMA_WEIGHTS, EMA_STATE = "ema_unet.safetensors", "ema_unet.json"


def is_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a complete checkpoint (its ``training_state.json`` is written last)."""
    return (path / TRAINING_STATE).is_file()


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete ``checkpoint-N`` folders, oldest first; other names and half-written folders are ignored."""
    found = [p for p in Path(output_dir).glob("checkpoint-*") if p.name.split("-", 1)[1].isdigit() and is_checkpoint(p)]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def find_checkpoint(resume_from_checkpoint: str | None, output_dir: Path) -> Path | None:
    """The folder to resume from: 'latest' in ``output_dir`` (None if there is none yet) or a path."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint != "latest":
        path = Path(resume_from_checkpoint)
        if not is_checkpoint(path):
            raise FileNotFoundError(f"{path} is not a complete checkpoint (no {TRAINING_STATE}); pass a checkpoint-N folder or 'latest'.")
        return path
    done = list_checkpoints(output_dir)
    if not done:
        logger.info(f"No checkpoint in {output_dir} yet: starting a new run.")
        return None
    return done[-1]


def save_checkpoint(
    accelerator: Accelerator, output_dir: Path, training_state: dict, ema: EMAModel | None = None, total_limit: int | None = None
) -> Path:
    """Writes ``checkpoint-{global_step}`` whole or not at all; returns its path. Call on every process.

    Checkpoints beyond ``total_limit`` go only after the new one is complete. A failed write (a full
    disk) removes its partial folder, so it holds no space, and says so.
    """
    step = training_state["global_step"]
    final, partial = output_dir / f"checkpoint-{step}", output_dir / f".checkpoint-{step}.partial"
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(partial)  # every process takes part (sharded states under FSDP / DeepSpeed)
        if accelerator.is_main_process and ema is not None:
            _save_ema(ema, partial)
    except (OSError, RuntimeError) as error:
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        free = shutil.disk_usage(output_dir).free / 2**30
        raise RuntimeError(
            f"Writing checkpoint {final} failed ({error}). {free:.2f} GiB are free on its disk: if it is full, free space "
            f"or lower --checkpoints_total_limit. The previous checkpoints are intact."
        ) from error
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / TRAINING_STATE).write_text(json.dumps(training_state))
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        for old in list_checkpoints(output_dir)[:-total_limit] if total_limit else []:
            shutil.rmtree(old)
        logger.info(f"Saved {final}")
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, checkpoint: Path, ema: EMAModel | None = None) -> dict:
    """Restores everything ``save_checkpoint`` wrote and returns its training state.

    Accelerate only logs when it cannot restore the random states; a resume that draws other noise
    is not exact, so here it is an error.
    """
    pickles = sorted(p.name for p in checkpoint.glob("custom_checkpoint_*.pkl"))
    if pickles:
        raise RuntimeError(
            f"{checkpoint} holds {', '.join(pickles)}: pickles, which can run code when loaded, so they are never loaded. "
            "This project writes its own state as safetensors and JSON; resume from a checkpoint it wrote."
        )
    accelerator.load_state(checkpoint)
    _check_random_states(checkpoint, accelerator.process_index)
    if ema is not None:
        if not (checkpoint / EMA_WEIGHTS).is_file():
            raise FileNotFoundError(f"{checkpoint} has no EMA ({EMA_WEIGHTS}): it was trained without --use_ema; resume without it.")
        _load_ema(ema, checkpoint)
    return json.loads((checkpoint / TRAINING_STATE).read_text())


def _save_ema(ema: EMAModel, folder: Path) -> None:
    state = ema.state_dict()
    shadow = state.pop("shadow_params")
    save_file({str(i): p.detach().contiguous().cpu() for i, p in enumerate(shadow)}, folder / EMA_WEIGHTS)
    (folder / EMA_STATE).write_text(json.dumps(state))


def _load_ema(ema: EMAModel, folder: Path) -> None:
    state = json.loads((folder / EMA_STATE).read_text())
    weights = load_file(folder / EMA_WEIGHTS)
    if len(weights) != len(ema.shadow_params):
        raise ValueError(f"{folder / EMA_WEIGHTS} holds {len(weights)} tensors, the UNet has {len(ema.shadow_params)}: another UNet's checkpoint.")
    state["shadow_params"] = [weights[str(i)].to(p.device) for i, p in enumerate(ema.shadow_params)]
    ema.load_state_dict(state)


def _check_random_states(checkpoint: Path, process_index: int) -> None:
    path = checkpoint / f"random_states_{process_index}.pkl"
    try:
        saved = accelerate_load(path)  # weights_only: numbers and arrays, never code
        restored = (
            random.getstate() == saved["random_state"]
            and all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), saved["numpy_random_seed"]))
            and torch.equal(torch.get_rng_state(), saved["torch_manual_seed"])
        )
    except Exception as error:  # a missing, truncated or foreign file
        raise RuntimeError(f"Cannot read the random states {path} ({error}): resuming from {checkpoint} would not be exact.") from error
    if not restored:
        raise RuntimeError(f"The random states of {path} were not restored: resuming from {checkpoint} would not be exact.")
