"""train.py end to end: the real ``accelerate launch train.py`` in a subprocess, on tiny models."""

import json
import os
import re
import shutil
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


def test_an_interrupted_run_resumed_with_the_same_command_ends_as_a_straight_run(world, tmp_path):
    """Killed after step 5 of 8 (mid-epoch, past the warm-up of a cosine schedule), then resumed: same weights.

    No file of the project is unpickled: the EMA is safetensors + JSON, Accelerate's own states load
    with ``weights_only=True``.
    """
    common = ["--max_train_steps", "8", "--random_flip", "--use_ema", "--checkpointing_steps", "5", "--seed", "3",
              "--lr_scheduler", "cosine", "--lr_warmup_steps", "2"]  # fmt: skip
    launch(world, tmp_path / "straight", *common)
    checkpoint = tmp_path / "straight" / "checkpoint-5"
    assert (checkpoint / "ema_unet.safetensors").is_file() and not list(checkpoint.glob("custom_checkpoint*"))
    shutil.copytree(checkpoint, tmp_path / "resumed" / "checkpoint-5")
    result = launch(world, tmp_path / "resumed", *common, "--resume_from_checkpoint", "latest")
    assert "Resumed from" in result.stderr and "at step 5" in result.stderr
    for name in ("unet", "posterior"):
        straight, resumed = weights(tmp_path / "straight", name), weights(tmp_path / "resumed", name)
        for key in straight:
            assert torch.equal(resumed[key], straight[key]), f"{name}.{key}"  # same ops, same threads: bitwise


class _RunsCode:
    """Unpickling this creates the file ``path``: proof that a pickle was loaded with code execution."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_resuming_a_finished_run_trains_no_step_and_never_unpickles(world, tmp_path):
    launch(world, tmp_path, "--max_train_steps", "2", "--use_ema", "--hub_token", "hf_SECRET_token_123")
    exported = weights(tmp_path)
    result = launch(world, tmp_path, "--max_train_steps", "2", "--use_ema", "--resume_from_checkpoint", "latest")
    assert "at step 2" in result.stderr and not (tmp_path / "checkpoint-3").exists()
    assert all(torch.equal(exported[k], v) for k, v in weights(tmp_path).items())
    # A pickle planted in the checkpoint is refused, never loaded (Accelerate would load it with weights_only=False).
    pwned, planted = tmp_path / "pwned", tmp_path / "checkpoint-2" / "custom_checkpoint_0.pkl"
    torch.save(_RunsCode(pwned), planted)
    result = launch(world, tmp_path, "--max_train_steps", "2", "--use_ema", "--resume_from_checkpoint", "latest", check=False)
    assert result.returncode != 0 and "are never loaded" in result.stderr and not pwned.exists()
    # A forged random-state file is refused too (Accelerate loads it with weights_only=True), never run.
    planted.unlink()
    torch.save(_RunsCode(pwned), tmp_path / "checkpoint-2" / "random_states_0.pkl")
    result = launch(world, tmp_path, "--max_train_steps", "2", "--use_ema", "--resume_from_checkpoint", "latest", check=False)
    assert result.returncode != 0 and "would not be exact" in result.stderr and not pwned.exists()
    # The Hub token is in no file of the run (training_args.json, the model card, tracker logs, checkpoints).
    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and b"hf_SECRET_token_123" in p.read_bytes()]
    assert not leaks and "hub_token" not in json.loads((tmp_path / "training_args.json").read_text())


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


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "supervised", "--train_data_dir", "x"], "pass --caption_column"),
        (["--caption_fraction", "0.5", "--train_data_dir", "x"], "pass --caption_column"),
        (["--prior", "learned", "--caption_column", "text"], "--caption_fraction > 0"),
        (["--method", "supervised", "--caption_fraction", "0.5"], "uses every caption"),
        (["--resolution", "30"], "multiple of 8"),
        (["--snr_gamma", "-1"], "argument --snr_gamma: must be ≥ 0"),
        (["--learning_rate", "0"], "argument --learning_rate: must be > 0"),
        (["--learning_rate", "nan"], "argument --learning_rate: must be > 0, got nan"),
        (["--dataset_name", "a", "--train_data_dir", "b"], "not both"),
        (["--max_train_steps", "0"], "argument --max_train_steps: must be > 0"),
        (["--num_train_epochs", "-1"], "argument --num_train_epochs: must be > 0"),
        (["--checkpoints_total_limit", "-1"], "argument --checkpoints_total_limit: must be > 0"),
        (["--checkpointing_steps", "0"], "argument --checkpointing_steps: must be > 0"),
        (["--logging_steps", "0"], "argument --logging_steps: must be > 0"),
        (["--validation_steps", "0"], "argument --validation_steps: must be > 0"),
        (["--gradient_accumulation_steps", "0"], "argument --gradient_accumulation_steps: must be > 0"),
        (["--train_batch_size", "0"], "argument --train_batch_size: must be > 0"),
        (["--train_batch_size", "2.5"], "argument --train_batch_size: expected a whole number"),
        (["--resolution", "0"], "argument --resolution: must be > 0"),
        (["--resolution", "-8"], "argument --resolution: must be > 0"),
        (["--lr_warmup_steps", "-10"], "argument --lr_warmup_steps: must be ≥ 0"),
        (["--beta", "-1"], "argument --beta: must be ≥ 0"),
        (["--ema_decay", "2"], "argument --ema_decay: must be in [0, 1)"),
        (["--p_uncond", "1"], "argument --p_uncond: must be in [0, 1)"),
        (["--caption_fraction", "1.5"], "argument --caption_fraction: must be in [0, 1]"),
        (["--toy_train_images", "0"], "argument --toy_train_images: must be > 0"),
        (["--pretrained_clip", "./no/such/clip"], "--pretrained_clip ./no/such/clip: no such folder"),
        (["--pretrained_vae", "/no/such/vae"], "--pretrained_vae /no/such/vae: no such folder"),
        (["--train_data_dir", "/no/such/images"], "--train_data_dir /no/such/images: no such folder"),
        (["--prior_texts", "/no/such/texts.txt"], "--prior_texts /no/such/texts.txt: no such file"),
        (["--posterior_family", "bank_mixture"], "add --prior text-bank"),
        (["--prior", "text-bank", "--posterior_family", "gaussian"], "use power_spherical or bank_mixture"),
        (["--resume_from_checkpoint", "/no/such/checkpoint-3"], "is not a complete checkpoint"),
    ]
    + ([(["--mixed_precision", "fp16"], "fp16 needs a GPU")] if not torch.accelerator.is_available() else []),
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
