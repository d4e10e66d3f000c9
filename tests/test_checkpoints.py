"""Checkpoint folders: listing, pruning, failed writes; the export that is old or new, never a mix."""

import json
from pathlib import Path

import pytest
from accelerate import PartialState

from vdl_diffusion import files
from vdl_diffusion.checkpoints import TRAINING_STATE, find_checkpoint, list_checkpoints, save_checkpoint
from vdl_diffusion.files import publish_entries


def make_checkpoint(folder: Path, step: int, complete: bool = True) -> Path:
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if complete:
        (path / TRAINING_STATE).write_text(json.dumps({"global_step": step}))
    return path


class FakeAccelerator:
    """Enough of ``Accelerator`` for one process; ``save_state`` writes a file or fails like a full disk."""

    is_main_process, process_index = True, 0

    def __init__(self, fail: bool = False):
        self.fail = fail

    def wait_for_everyone(self):
        pass

    def save_state(self, path):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "model.safetensors").write_bytes(b"weights")
        if self.fail:
            raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 4160 vs 4048")


def test_listing_ignores_foreign_names_and_half_written_folders(tmp_path):
    for step in (10, 2, 30):
        make_checkpoint(tmp_path, step)
    make_checkpoint(tmp_path, 40, complete=False)  # killed during its write
    (tmp_path / "checkpoint-old").mkdir()
    (tmp_path / "checkpoint-old" / TRAINING_STATE).write_text("{}")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-10", "checkpoint-30"]
    assert find_checkpoint("latest", tmp_path).name == "checkpoint-30"


def test_the_total_limit_counts_complete_checkpoints_only(tmp_path):
    PartialState()  # Accelerate's logger needs it
    make_checkpoint(tmp_path, 1)
    make_checkpoint(tmp_path, 2)
    make_checkpoint(tmp_path, 5, complete=False)
    save_checkpoint(FakeAccelerator(), tmp_path, {"global_step": 3}, total_limit=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-3"]


def test_a_failed_write_names_the_disk_and_leaves_no_partial_folder(tmp_path):
    make_checkpoint(tmp_path, 1)
    with pytest.raises(RuntimeError, match="GiB are free on its disk") as error:
        save_checkpoint(FakeAccelerator(fail=True), tmp_path, {"global_step": 2})
    assert "checkpoint-2" in str(error.value) and "previous checkpoints are intact" in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"]


def export(folder: Path, version: str, parts=("unet", "vae")) -> Path:
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "VDLPipeline", **{p: ["x", "y"] for p in parts}}))
    for part in parts:
        (folder / part).mkdir()
        (folder / part / "weights").write_text(version)
    (folder / "README.md").write_text(version)
    return folder


def test_publishing_replaces_the_export_and_keeps_the_rest_of_the_folder(tmp_path):
    out = export(tmp_path / "out", "old", parts=("unet", "vae", "posterior"))
    make_checkpoint(out, 4)
    publish_entries(export(tmp_path / "new", "new"), out, "model_index.json", stale=["posterior"])
    assert (out / "unet" / "weights").read_text() == (out / "vae" / "weights").read_text() == "new"
    assert not (out / "posterior").exists() and (out / "checkpoint-4").is_dir() and not (tmp_path / "new").exists()
    assert "posterior" not in json.loads((out / "model_index.json").read_text())


def test_an_export_killed_midway_leaves_nothing_loadable_never_a_mix(tmp_path, monkeypatch):
    out = export(tmp_path / "out", "old")
    moves = []
    real_replace = files.os.replace

    def replace_then_die(src, dst):
        if moves:
            raise KeyboardInterrupt  # the process dies after moving one entry
        moves.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        publish_entries(export(tmp_path / "new", "new"), out, "model_index.json")
    assert len(moves) == 1 and not (out / "model_index.json").exists()  # a mix exists on disk, but nothing loads it
    monkeypatch.setattr(files.os, "replace", real_replace)
    publish_entries(export(tmp_path / "again", "new"), out, "model_index.json")  # the resumed run's export
    assert all((out / part / "weights").read_text() == "new" for part in ("unet", "vae"))


def test_publishing_refuses_a_source_without_its_marker(tmp_path):
    out = export(tmp_path / "out", "old")
    (tmp_path / "half").mkdir()
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        publish_entries(tmp_path / "half", out, "model_index.json")
    assert (out / "model_index.json").is_file()
