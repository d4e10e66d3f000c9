"""Folders written whole or not at all: a killed or failed write never leaves a half-written one."""

import os
import shutil
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_folder(final: str | os.PathLike):
    """Yields a temporary sibling of ``final`` to write into; moves it into place only if the block succeeds.

    An existing ``final`` stays untouched until the new folder is complete, then is replaced whole::

        with atomic_folder("weights/clip") as folder:
            model.save_pretrained(folder)
    """
    final = Path(final)
    if final.exists() and not final.is_dir():
        raise NotADirectoryError(f"{final} is a file, not a folder: give a folder path (or move the file away).")
    partial, previous = final.with_name(f".{final.name}.partial"), final.with_name(f".{final.name}.previous")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(previous, ignore_errors=True)
    if final.exists():
        os.replace(final, previous)
    os.replace(partial, final)
    shutil.rmtree(previous, ignore_errors=True)
