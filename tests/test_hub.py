"""vdl_diffusion.hub: the run's repository, uploads that survive failures, and the model card (no network)."""

import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from vdl_diffusion import hub

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def uploads(monkeypatch):
    """Fake ``upload_folder``: records each call; fails the first ``uploads.failures`` of them."""
    calls = SimpleNamespace(made=[], failures=0)

    def upload_folder(**kwargs):
        calls.made.append(kwargs)
        if len(calls.made) <= calls.failures:
            raise OSError(f"503 Service Unavailable (call {len(calls.made)})")

    monkeypatch.setattr(hub, "upload_folder", upload_folder)
    monkeypatch.setattr(hub, "RETRY_DELAY_S", 0.0)
    return calls


def test_a_failed_upload_is_retried(uploads, tmp_path, caplog):
    uploads.failures = 2
    assert hub.push_pipeline_to_hub(tmp_path, "me/vdl") == "me/vdl"
    assert len(uploads.made) == 3 and uploads.made[-1]["ignore_patterns"] == hub.IGNORE_PATTERNS
    assert "attempt 1 of 3" in caplog.text and "attempt 2 of 3" in caplog.text


def test_the_final_upload_raises_after_the_last_attempt(uploads, tmp_path):
    uploads.failures = 3
    with pytest.raises(OSError, match="call 3"):
        hub.push_pipeline_to_hub(tmp_path, "me/vdl")


def test_a_checkpoint_that_cannot_be_uploaded_is_skipped_with_a_warning(uploads, tmp_path, caplog):
    uploads.failures = 3
    checkpoint = tmp_path / "checkpoint-7"
    with caplog.at_level(logging.WARNING):
        assert hub.push_checkpoint_to_hub(checkpoint, "me/vdl") is False
    assert [call["path_in_repo"] for call in uploads.made] == ["checkpoint-7"] * 3
    assert "checkpoint-7 was not uploaded to me/vdl after 3 attempts" in caplog.text and "training goes on" in caplog.text
    uploads.made.clear()
    uploads.failures = 0
    assert hub.push_checkpoint_to_hub(checkpoint, "me/vdl") is True and len(uploads.made) == 1


def test_a_repository_that_cannot_be_created_names_the_flags_to_check(monkeypatch):
    def create_repo(repo_id, **kwargs):
        raise OSError("401 Unauthorized")

    monkeypatch.setattr(hub, "create_repo", create_repo)
    with pytest.raises(RuntimeError, match=r"repository 'vdl' \(OSError: 401 Unauthorized\).*--hub_model_id.*--hub_token"):
        hub.create_hub_repo("vdl")
    monkeypatch.setattr(hub, "create_repo", lambda repo_id, **kwargs: SimpleNamespace(repo_id=f"me/{repo_id}"))
    assert hub.create_hub_repo("vdl") == "me/vdl"


def test_the_card_of_a_run_on_real_data(tmp_path):
    sys.path.insert(0, str(ROOT))
    from train import parse_args

    (tmp_path / "my_images").mkdir()
    (tmp_path / "texts.txt").write_text("a photo of a dog\na red car\n")
    args = parse_args(["--train_data_dir", str(tmp_path / "my_images"), "--pretrained_clip", "openai/clip-vit-large-patch14",
                       "--pretrained_vae", "stabilityai/sd-vae-ft-mse", "--prior", "clip-gap", "--prior_texts", str(tmp_path / "texts.txt"),
                       "--output_dir", str(tmp_path / "run")])  # fmt: skip
    card = hub.save_model_card(args, Path(args.output_dir), steps=1234, folder=tmp_path, num_images=500).read_text()
    assert "TODO" not in card and "base_model: openai/clip-vit-large-patch14" in card
    assert "the local image folder `my_images`, 500 images" in card and str(tmp_path / "my_images") not in card
    assert "none: unsupervised" in card and "`clip-gap`" in card and "1234 steps" in card
    assert f'DiffusionPipeline.from_pretrained("{tmp_path / "run"}"' in card  # not pushed: the folder itself
    assert "## Samples" not in card and "a red circle" not in card  # no toy prompts on real data
