"""train.py end to end: the real ``accelerate launch train.py`` in a subprocess, on tiny models."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler
from safetensors.torch import load_file

from vdl_diffusion import VDLPipeline
from vdl_diffusion.models import PRESET_LEARNING_RATES
from vdl_diffusion.testing_utils import save_tiny_clip, save_tiny_vae
from vdl_diffusion.toy import ToyWorld, write_imagefolder

ROOT = Path(__file__).resolve().parents[1]
NUM_IMAGES, NUM_BROKEN = 40, 2


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny CLIP and VAE saved like pretrained ones, and an image folder with captions and broken files."""
    root = tmp_path_factory.mktemp("train")
    save_tiny_clip(root / "clip")
    save_tiny_vae(root / "vae")
    images = write_imagefolder(ToyWorld(0), root / "images", NUM_IMAGES, split="train")
    (images / "broken.png").write_bytes(b"<html>not an image</html>")
    (images / "truncated.png").write_bytes((images / "000000.png").read_bytes()[:60])
    with open(images / "metadata.jsonl", "a") as metadata:
        metadata.write('{"file_name": "broken.png", "text": "a red circle"}\n')
        metadata.write('{"file_name": "truncated.png", "text": "a blue square"}\n')
    return root


def launch(world, output_dir, *args, num_processes=1, check=True, data=True):
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        *(["--multi_gpu", "--main_process_port", "29517"] if num_processes > 1 else ["--cpu"]),
        str(ROOT / "train.py"),
        "--pretrained_clip", str(world / "clip"), "--pretrained_vae", str(world / "vae"),
        *(["--train_data_dir", str(world / "images")] if data else []), "--cache_dir", str(world / "cache"),
        "--output_dir", str(output_dir), "--unet_preset", "tiny", "--train_batch_size", "8",
        "--lr_scheduler", "constant", "--lr_warmup_steps", "0", "--validation_prompts", "--report_to", "none",
        *args,
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=world, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"train.py failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def weights(folder, name="unet"):
    return load_file(next(Path(folder, name).glob("*.safetensors")))


def generates(folder):
    pipe = VDLPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red circle", num_inference_steps=2, output_type="np", generator=torch.manual_seed(0)).images
    return image.shape == (1, 32, 32, 3) and bool((image >= 0).all() and (image <= 1).all())


@pytest.mark.parametrize(
    "method, extra",
    [
        ("vdl", ["--random_flip", "--use_ema", "--validation_prompts", "a red circle", "--num_validation_images", "1"]),
        ("vdl", ["--prior", "clip-gap", "--posterior_family", "gaussian"]),
        ("vdl", ["--no_cache", "--random_flip", "--caption_column", "text", "--caption_fraction", "0.25"]),
        ("vdl", ["--prior", "learned", "--caption_column", "text", "--caption_fraction", "0.5"]),
        ("lafite", ["--snr_gamma", "0"]),  # Min-SNR off
        ("image", []),
        ("prior-sample", []),
        ("supervised", ["--caption_column", "text"]),
    ],
)
def test_every_method_trains_and_exports_a_pipeline(world, tmp_path, method, extra):
    result = launch(world, tmp_path, "--method", method, "--max_train_steps", "2", *extra)
    assert generates(tmp_path)
    scheduler = DPMSolverMultistepScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    scheduler.set_timesteps(25)
    # Sampling must start where ᾱ is well above 0; at t = 999 of the cosine schedule (ᾱ ≈ 2e-9) the
    # first step blows the noise estimate's error up 20000-fold and the samples lose their condition.
    assert scheduler.alphas_cumprod[scheduler.timesteps[0]] > 1e-3
    assert (tmp_path / "README.md").is_file() and (tmp_path / "checkpoint-2" / "training_state.json").is_file()
    assert (tmp_path / "posterior").is_dir() == (method == "vdl")
    assert f"{NUM_BROKEN} could not be decoded" in result.stderr
    if "--validation_prompts" in extra:
        assert (tmp_path / "samples" / "latest.png").is_file()


def test_resume_continues_exactly(world, tmp_path):
    """2N steps in one run equal N steps, then a resume for N more (mid-epoch, across an epoch end)."""
    common = ["--random_flip", "--use_ema", "--checkpointing_steps", "4", "--seed", "3"]
    launch(world, tmp_path / "straight", "--max_train_steps", "8", *common)
    launch(world, tmp_path / "resumed", "--max_train_steps", "4", *common)
    result = launch(world, tmp_path / "resumed", "--max_train_steps", "8", "--resume_from_checkpoint", "latest", *common)
    assert "Resumed from" in result.stderr and "at step 4" in result.stderr
    for name in ("unet", "posterior"):
        straight, resumed = weights(tmp_path / "straight", name), weights(tmp_path / "resumed", name)
        for key in straight:
            torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=1e-6, msg=f"{name}.{key}")


def test_two_processes_end_with_identical_weights(world, tmp_path):
    result = launch(world, tmp_path, "--max_train_steps", "2", "--train_batch_size", "4", num_processes=2)
    checksums = re.findall(r"Weight checksum per process: \[([^\]]+)\]", result.stderr)
    values = [float(v) for v in checksums[-1].split(",")]
    assert len(values) == 2 and values[0] == values[1]
    assert generates(tmp_path)


def test_cache_is_built_once_and_renewed_when_a_setting_changes(world, tmp_path):
    cache_runs = [launch(world, tmp_path / str(i), "--max_train_steps", "1", *args).stderr for i, args in
                  enumerate([["--cache_dir", str(tmp_path / "cache")]] * 2 + [["--cache_dir", str(tmp_path / "cache"), "--resolution", "16"]])]  # fmt: skip
    assert "Encoding" in cache_runs[0] and "Reusing" in cache_runs[1] and "Encoding" in cache_runs[2]
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 2


def test_without_data_it_trains_on_the_toy_world_named_by_its_fingerprint(world, tmp_path):
    launch(world, tmp_path / "out", "--max_train_steps", "1", "--toy_train_images", "16", "--cache_dir", str(tmp_path), data=False)
    images = tmp_path / f"toy-world-{ToyWorld(0).fingerprint()}-16"
    assert len(list(images.glob("*.png"))) == 16 and (images / "metadata.jsonl").is_file()
    assert not list(tmp_path.glob(".*partial"))
    assert generates(tmp_path / "out")


def test_a_checkpoint_left_half_written_is_not_resumed(world, tmp_path):
    launch(world, tmp_path, "--max_train_steps", "2")
    (tmp_path / "checkpoint-9").mkdir()  # a kill during the write would leave a folder without training_state.json
    result = launch(world, tmp_path, "--max_train_steps", "3", "--resume_from_checkpoint", "latest")
    assert "Resumed from" in result.stderr and "checkpoint-2 at step 2" in result.stderr


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(world, tmp_path):
    result = launch(world, tmp_path, "--max_train_steps", "4", "--checkpointing_steps", "1", "--learning_rate", "1e30", check=False)
    assert result.returncode != 0
    assert "non-finite at step 2" in result.stderr and "last good checkpoint is" in result.stderr
    assert [p.name for p in tmp_path.glob("checkpoint-*")] == ["checkpoint-1"]
    assert torch.isfinite(torch.cat([w.flatten() for w in load_file(tmp_path / "checkpoint-1" / "model.safetensors").values()])).all()
    assert not (tmp_path / "model_index.json").exists()  # no pipeline exported from diverged weights


def test_training_continues_from_a_saved_pipeline(world, tmp_path):
    launch(world, tmp_path / "first", "--max_train_steps", "1")
    result = launch(world, tmp_path / "second", "--max_train_steps", "1", "--pretrained_pipeline", str(tmp_path / "first"))
    assert "has no TextEmbeddingPosterior" not in result.stderr
    assert generates(tmp_path / "second")
    fresh = launch(world, tmp_path / "third", "--max_train_steps", "1", "--pretrained_pipeline", str(tmp_path / "first"),
                   "--method", "vdl", "--prior", "learned", "--caption_column", "text", "--caption_fraction", "0.5")  # fmt: skip
    assert "has no LearnedPrior in prior/ (found ClipPrior)" in fresh.stderr  # the first run's prior is the clip prior


def test_a_missing_checkpoint_fails_with_a_message(world, tmp_path):
    result = launch(world, tmp_path, "--resume_from_checkpoint", str(tmp_path / "nowhere"), check=False)
    assert result.returncode != 0 and "not a complete checkpoint" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "supervised", "--train_data_dir", "x"], "pass --caption_column"),
        (["--caption_fraction", "0.5", "--train_data_dir", "x"], "pass --caption_column"),
        (["--prior", "learned", "--caption_column", "text"], "--caption_fraction > 0"),
        (["--method", "supervised", "--caption_fraction", "0.5"], "uses every caption"),
        (["--resolution", "30"], "multiple of 8"),
        (["--snr_gamma", "-1"], "0 turns Min-SNR weighting off"),
        (["--learning_rate", "0"], "--learning_rate must be > 0"),
        (["--dataset_name", "a", "--train_data_dir", "b"], "not both"),
    ],
)
def test_inconsistent_flags_fail_before_any_model_loads(capsys, args, message):
    sys.path.insert(0, str(ROOT))
    from train import parse_args

    with pytest.raises(SystemExit) as exit_info:
        parse_args(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_the_learning_rate_defaults_to_the_unet_presets():
    sys.path.insert(0, str(ROOT))
    from train import parse_args

    assert parse_args([]).learning_rate == PRESET_LEARNING_RATES["tiny"]
    assert parse_args(["--unet_preset", "base"]).learning_rate == PRESET_LEARNING_RATES["base"] != PRESET_LEARNING_RATES["tiny"]
    assert parse_args(["--unet_preset", "base", "--learning_rate", "3e-5"]).learning_rate == 3e-5
