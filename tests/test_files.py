"""atomic_folder: the old folder survives a failed write, and a finished write replaces it whole."""

import pytest

from vdl_diffusion.files import atomic_folder


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
