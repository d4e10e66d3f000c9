"""Folders written whole or not at all, and by one writer at a time.

`atomic_folder`: a killed or failed write never leaves a half-written folder. `locked`: two runs
that would write the same folder at once (a shared cache) take turns instead of deleting each
other's work.
"""

import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

logger = logging.getLogger(__name__)


@contextmanager
def locked(path: str | os.PathLike):
    """Holds an exclusive lock on ``path`` across processes (and threads) for the block; waits for it as long as needed.

    Check and write under it, so the second writer finds the first one's finished folder::

        with locked(folder):
            if not folder.is_dir():
                with atomic_folder(folder) as partial:
                    ...

    The lock file is the sibling ``.<name>.lock``, never inside ``path``, so replacing or deleting
    the folder cannot drop a held lock. The operating system releases the lock of a killed process.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path.with_name(f".{path.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.info(f"Waiting for another process to finish writing {path} (it holds {lock.lock_file}).")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


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


def write_atomically(path: str | os.PathLike, write) -> None:
    """``write(temporary)`` under a temporary name beside ``path``, then renamed: readers see the whole file
    or none of it, and a failed write leaves no temporary file behind."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(str(temporary))
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, path)


def publish_entries(source: str | os.PathLike, folder: str | os.PathLike, marker: str, stale: list[str] = ()) -> None:
    """Moves every entry of ``source`` into ``folder``, which may hold other things (checkpoints, logs).

    ``marker`` (a pipeline's ``model_index.json``) is removed first and moved in last, so ``folder``
    loads only once every entry is the new one: a kill midway leaves no loadable mix of old and new.
    ``stale`` names entries of an earlier export to remove if the new one has none of that name.
    """
    source, folder = Path(source), Path(folder)
    if not (source / marker).is_file():
        raise FileNotFoundError(f"{source} has no {marker}: nothing complete to publish.")
    (folder / marker).unlink(missing_ok=True)
    for name in {*stale, *(entry.name for entry in source.iterdir())} - {marker}:
        old = folder / name
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        elif old.exists() or old.is_symlink():
            old.unlink()
        if (source / name).exists():
            os.replace(source / name, old)
    os.replace(source / marker, folder / marker)
    source.rmdir()
