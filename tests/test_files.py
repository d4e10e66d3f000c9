"""atomic_folder: the old folder survives a failed write, and a finished write replaces it whole.
locked: concurrent writers of one folder take turns, so it is written once."""

import logging
import threading

import pytest
from filelock import FileLock

from vdl_diffusion.files import atomic_folder, locked


def test_finished_write_replaces_the_folder_whole(tmp_path):
    final = tmp_path / "weights"
    final.mkdir()
    (final / "stale.bin").write_text("old")
    with atomic_folder(final) as folder:
        assert folder != final and (final / "stale.bin").exists()  # untouched while writing
        (folder / "model.safetensors").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights"]  # no temporary left behind


def test_failed_write_leaves_the_old_folder_and_no_temporary(tmp_path):
    final = tmp_path / "weights"
    final.mkdir()
    (final / "model.safetensors").write_text("old")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_folder(final) as folder:
            (folder / "model.safetensors").write_text("half")
            raise RuntimeError("killed mid-save")
    assert (final / "model.safetensors").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights"]


def test_first_write_creates_missing_parents(tmp_path):
    with atomic_folder(tmp_path / "a" / "b") as folder:
        (folder / "config.json").write_text("{}")
    assert (tmp_path / "a" / "b" / "config.json").read_text() == "{}"


def test_a_file_in_the_way_is_refused_and_kept(tmp_path):
    final = tmp_path / "weights"
    final.write_text("not a folder")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        with atomic_folder(final):
            pass
    assert final.read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights"]


class WaitSignal(logging.Handler):
    """Sets ``event`` when `locked` logs that it waits for another holder."""

    def __init__(self):
        super().__init__()
        self.event = threading.Event()

    def emit(self, record):
        if record.getMessage().startswith("Waiting for another process"):
            self.event.set()


@pytest.fixture
def waiting(caplog):
    """An event set once some `locked` call waits for the lock."""
    caplog.set_level(logging.INFO, logger="vdl_diffusion.files")
    signal = WaitSignal()
    logging.getLogger("vdl_diffusion.files").addHandler(signal)
    yield signal.event
    logging.getLogger("vdl_diffusion.files").removeHandler(signal)


def test_locked_writers_take_turns_and_the_second_finds_the_folder_written(tmp_path, waiting):
    final = tmp_path / "toy-world"
    writes, seen = [], []

    def write_once(hold_until_the_other_waits):
        with locked(final):
            if not final.is_dir():
                with atomic_folder(final) as folder:
                    writes.append(1)
                    (folder / "image.png").write_text("pixels")
                    if hold_until_the_other_waits:
                        second.start()
                        assert waiting.wait(timeout=60)
            seen.append(sorted(p.name for p in final.iterdir()))

    second = threading.Thread(target=write_once, args=(False,))
    write_once(True)
    second.join(timeout=60)
    assert len(writes) == 1 and seen == [["image.png"], ["image.png"]]
    assert {p.name for p in tmp_path.iterdir()} <= {".toy-world.lock", "toy-world"}  # the lock lies beside the folder


def test_locked_releases_on_error(tmp_path):
    with pytest.raises(RuntimeError, match="killed"):
        with locked(tmp_path / "cache" / "abc"):
            raise RuntimeError("killed mid-build")
    lock = FileLock(tmp_path / "cache" / ".abc.lock")
    lock.acquire(timeout=0)  # free again: raises Timeout otherwise
    lock.release()
