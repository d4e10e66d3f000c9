"""train.py end to end: the real ``accelerate launch train.py`` in a subprocess, on tiny models."""

import copy
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import datasets
import pytest
import torch
from accelerate import PartialState
from diffusers import DPMSolverMultistepScheduler
from huggingface_hub import constants as hub_constants
from huggingface_hub.utils import filter_repo_objects
from safetensors.torch import load_file

from vdl_diffusion import VDLPipeline
from vdl_diffusion.data import is_saved_dataset
from vdl_diffusion.hub import IGNORE_PATTERNS
from vdl_diffusion.models import PRESET_LEARNING_RATES
from vdl_diffusion.testing_utils import CORPUS, save_tiny_clip, save_tiny_vae
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


def launch(world, output_dir, *args, num_processes=1, check=True, data=True, vae=True, cache=True, script=ROOT / "train.py", env=None):
    """``accelerate launch train.py`` (or ``script``, which runs it) on the tiny models, offline; ``cache=False``
    leaves --embedding_cache_dir at its default."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        *(["--multi_gpu", "--main_process_port", "29517"] if num_processes > 1 else ["--cpu"]),
        str(script),
        "--pretrained_clip", str(world / "clip"), *(["--pretrained_vae", str(world / "vae")] if vae else []),
        *(["--train_data_dir", str(world / "images")] if data else []), *(["--embedding_cache_dir", str(world / "cache")] if cache else []),
        "--output_dir", str(output_dir), "--unet_preset", "tiny", "--train_batch_size", "8",
        "--lr_scheduler", "constant", "--lr_warmup_steps", "0", "--validation_prompts", "--report_to", "none",
        *args,
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
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
        ("vdl", ["--streaming", "--caption_column", "text", "--caption_fraction", "0.5"]),  # broken images found as it is cached
        ("lafite", ["--snr_gamma", "0"]),  # Min-SNR off
        ("image", []),
        ("prior-sample", []),
        ("supervised", ["--caption_column", "text"]),
    ],
)
def test_every_method_trains_and_exports_a_pipeline(world, tmp_path, method, extra):
    if "clip-gap" in extra:  # its unpaired texts: never the training images' captions
        (tmp_path / "texts.txt").write_text("\n".join(CORPUS))
        extra = [*extra, "--prior_texts", str(tmp_path / "texts.txt")]
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
                  enumerate([["--embedding_cache_dir", str(tmp_path / "cache")]] * 2 + [["--embedding_cache_dir", str(tmp_path / "cache"), "--resolution", "16"]])]  # fmt: skip
    assert "Encoding" in cache_runs[0] and "Reusing" in cache_runs[1] and "Encoding" in cache_runs[2]
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 2


def test_without_data_it_trains_on_the_toy_world_saved_once_under_hf_home(world, tmp_path):
    """The toy world's images as one saved dataset (no PNG file) named by its fingerprint, in $HF_HOME/vdl-diffusion
    beside the embedding cache, built once and reused; two checkpoints kept by default, left out of an upload; the
    end of the log says where the pipeline is; no launcher or loading noise."""
    sys.path.insert(0, str(ROOT))
    from train import parse_args, toy_train_dataset

    out, home = tmp_path / "out", tmp_path / "hf"
    cache = home / "vdl-diffusion"
    PartialState()  # train.py's logger needs one; the launched run makes its own
    main_process = types.SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None)
    images = toy_train_dataset(main_process, parse_args(["--toy_train_images", "16", "--embedding_cache_dir", str(cache)]))
    assert images == cache / f"toy-world-{ToyWorld(0).fingerprint()}-16"
    # Another training seed on the same world finds the same images; without --toy_world_seed, --seed picks the world.
    retrain = parse_args(["--toy_train_images", "16", "--embedding_cache_dir", str(cache), "--seed", "1", "--toy_world_seed", "0"])
    assert toy_train_dataset(main_process, retrain) == images
    assert parse_args(["--seed", "1"]).toy_world_seed == 1 and ToyWorld(1).fingerprint() != ToyWorld(0).fingerprint()
    assert is_saved_dataset(images) and len(datasets.load_from_disk(str(images))) == 16
    assert not list(home.rglob("*.png")) and not list(cache.glob(".*partial"))

    command = ["--num_train_epochs", "2", "--toy_train_images", "16", "--checkpointing_steps", "1", "--resume_from_checkpoint", "latest"]
    result = launch(world, out, *command, data=False, cache=False, env={"HF_HOME": str(home)})
    assert "Drawing" not in result.stderr and "16 training images" in result.stderr  # found under $HF_HOME, reused
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 2  # the toy dataset and the embedding cache
    # Without --max_train_steps, the epochs set the length: 16 images in batches of 8, 2 steps an epoch.
    assert "for 4 steps" in result.stderr and sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]
    assert "Done after 4 steps." in result.stderr and f"pipeline:    {out.resolve()}" in result.stderr
    assert f"VDLPipeline.from_pretrained({str(out.resolve())!r})" in result.stderr
    for noise in ("were not passed to `accelerate launch`", "falling back to", "Loading weights"):
        assert noise not in result.stderr
    assert generates(out)
    # The checkpoints sit beside the pipeline, but an upload of the folder (upload_folder's own filter) leaves them out.
    files = [str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()]
    uploaded = list(filter_repo_objects(files, ignore_patterns=IGNORE_PATTERNS))
    assert "model_index.json" in uploaded and not [f for f in uploaded if "checkpoint" in f]


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
        (["--checkpoints_total_limit", "-1"], "argument --checkpoints_total_limit: must be ≥ 0"),
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
        (["--prior", "text-bank", "--posterior_samples", "2"], "--posterior_samples > 1 trains the bank-mixture posterior"),
        (["--posterior_samples", "0"], "argument --posterior_samples: must be > 0"),
        (["--streaming", "--no_cache"], "--streaming reads the stream once, into the embedding cache: drop --no_cache"),
        (["--prior", "text-bank", "--dataset_name", "user/images"], "--prior text-bank on your data needs unpaired texts"),
        (["--resume_from_checkpoint", "/no/such/checkpoint-3"], "is not a complete checkpoint"),
        (["--pretrained_model_name_or_path", "./no/such/sd"], "--pretrained_model_name_or_path ./no/such/sd: no such folder"),
        (["--pretrained_model_name_or_path", "a/sd", "--pretrained_vae", "b/vae"], "supplies only the VAE (its vae/): give it or --pretrained_vae, not both"),
        (["--dataset_name", "./no/such/dataset"], "--dataset_name ./no/such/dataset: no such folder (a Hub dataset is named like"),
        (["--non_ema_revision", "main"], "--non_ema_revision applies to a pretrained UNet trained with an EMA"),
        (["--non_ema_revision", "main", "--use_ema"], "add --use_ema and --pretrained_unet or --pretrained_pipeline"),
        (["--image_interpolation_mode", "cubic"], "argument --image_interpolation_mode: invalid choice: 'cubic'"),
        (["--e_step_at", "3"], "--e_step_at reweighs the text-bank prior's candidates"),
        (["--prior", "text-bank", "--e_step_at", "3", "--no_cache"], "and without --no_cache"),
        (["--prior", "text-bank", "--e_step_at", "8", "--max_train_steps", "8"], "--e_step_at 8 is not before the run's end"),
        (["--prior", "text-bank", "--e_step_at", "2", "--e_step_min_timestep", "1000"], "below the scheduler's 1000 timesteps"),
        (["--train_data_dir", "images", "--toy_world_seed", "1"], "--toy_world_seed picks the toy world to train on: drop it"),
        (["--prior", "text-bank", "--e_step_balance"], "--e_step_balance balances the E-step's choice: add --e_step_at STEP"),
        (["--prior", "text-bank", "--e_step_at", "0.5", "--e_step_balance", "1.5"], "argument --e_step_balance: must be in (0, 1]"),
        (["--prior", "text-bank", "--e_step_at", "2.5"], "argument --e_step_at: must be a whole number of steps or a fraction of the run in (0, 1)"),
        (["--bank_choice", "judge"], "--bank_choice replaces the text-bank prior's weights of each cached image by an E-step's"),
        (["--prior", "text-bank", "--bank_choice", "judge", "--e_step_at", "3"], "and without --e_step_at (which makes its own)"),
        (["--prior", "text-bank", "--bank_choice", "./no/such/run"], "--bank_choice ./no/such/run: give a run's e_step/choice-stepN.npy, or the --output_dir of a run with one E-step; no such folder"),
        (["--prior", "text-bank", "--stop_after_e_step"], "--stop_after_e_step ends the run with its E-step: add --e_step_at STEP"),
    ]
    + ([(["--use_8bit_adam"], "--use_8bit_adam needs bitsandbytes")] if importlib.util.find_spec("bitsandbytes") is None else [])
    + ([(["--mixed_precision", "fp16"], "fp16 needs a GPU")] if not torch.accelerator.is_available() else []),
)
def test_inconsistent_flags_fail_before_any_model_loads(capsys, args, message):
    sys.path.insert(0, str(ROOT))
    from train import parse_args

    with pytest.raises(SystemExit) as exit_info:
        parse_args(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_fresh_run_may_not_train_in_its_judges_folder(capsys, tmp_path):
    sys.path.insert(0, str(ROOT))
    from train import parse_args

    (tmp_path / "judge" / "e_step").mkdir(parents=True)
    (tmp_path / "judge" / "e_step" / "choice-step000003.npy").touch()
    with pytest.raises(SystemExit):
        parse_args(["--prior", "text-bank", "--bank_choice", str(tmp_path / "judge"), "--output_dir", str(tmp_path / "judge")])
    assert "is this run's own --output_dir: it would resume the judge's checkpoint" in capsys.readouterr().err
    assert parse_args(["--prior", "text-bank", "--bank_choice", str(tmp_path / "judge"), "--output_dir", str(tmp_path / "fresh")]).bank_choice.endswith("choice-step000003.npy")


def test_the_learning_rate_defaults_to_the_unet_presets():
    sys.path.insert(0, str(ROOT))
    from train import parse_args

    assert parse_args([]).learning_rate == PRESET_LEARNING_RATES["tiny"]
    assert parse_args(["--unet_preset", "base"]).learning_rate == PRESET_LEARNING_RATES["base"] != PRESET_LEARNING_RATES["tiny"]
    assert parse_args(["--unet_preset", "base", "--learning_rate", "3e-5"]).learning_rate == 3e-5


# The Hub, flags known from diffusers' training scripts


def fake_hub(tmp_path, fail=""):
    """``launch`` keywords that run train.py through tests/fake_hub.py, and the file its calls go to."""
    log = tmp_path / "hub_calls.jsonl"
    env = {"VDL_FAKE_HUB_LOG": str(log), "VDL_FAKE_HUB_FAIL": fail, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    return {"script": ROOT / "tests" / "fake_hub.py", "env": env}, log


def hub_calls(log):
    return [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []


def test_push_to_hub_creates_the_repository_first_and_a_bad_one_fails_before_training(world, tmp_path):
    kwargs, log = fake_hub(tmp_path, fail="create_repo")
    start = time.perf_counter()
    result = launch(world, tmp_path / "out", "--max_train_steps", "2", "--push_to_hub", "--hub_model_id", "someone/vdl", check=False, **kwargs)
    assert result.returncode != 0 and "cannot create or open the Hub repository 'someone/vdl'" in result.stderr
    assert "401 Client Error" in result.stderr and "nothing was trained" in result.stderr
    # Before the encoders, the data and the first step: seconds, not hours.
    assert "training images" not in result.stderr and not (tmp_path / "out" / "checkpoint-1").exists()
    assert time.perf_counter() - start < 60
    assert [call["call"] for call in hub_calls(log)] == ["create_repo"]


def test_a_semi_supervised_run_from_a_saved_dataset_pushed_to_the_hub(world, tmp_path):
    """One run for several flags: --dataset_name on a save_to_disk folder, --pretrained_model_name_or_path
    (a Stable Diffusion layout), --image_interpolation_mode, --validation_epochs, steps over epochs, the
    number of captions used, checkpoint uploads that fail (retried, warned about, the run goes on) and
    the final upload with its model card."""
    datasets.load_dataset("imagefolder", data_dir=str(world / "images"), cache_dir=str(tmp_path / "hf")).save_to_disk(tmp_path / "saved")
    shutil.copytree(world / "vae", tmp_path / "sd" / "vae")
    (tmp_path / "sd" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline", "vae": ["diffusers", "AutoencoderKL"]}')
    kwargs, log = fake_hub(tmp_path, fail="checkpoints")
    out = tmp_path / "out"
    result = launch(
        world, out, "--dataset_name", str(tmp_path / "saved"), "--pretrained_model_name_or_path", str(tmp_path / "sd"),
        "--caption_column", "text", "--caption_fraction", "0.5", "--image_interpolation_mode", "lanczos",
        "--num_train_epochs", "1", "--max_train_steps", "6", "--checkpointing_steps", "3", "--validation_epochs", "1",
        "--validation_prompts", "a red circle", "--num_validation_images", "1",
        "--push_to_hub", "--push_checkpoints", "--hub_model_id", "vdl-semi", data=False, vae=False, **kwargs,
    )  # fmt: skip
    # 40 decodable images, batches of 8: 5 steps an epoch; 6 steps were asked for and trained.
    assert "--num_train_epochs 1 is not used" in result.stderr and "for 6 steps" in result.stderr
    assert (out / "checkpoint-6").is_dir() and generates(out)
    assert "has no VAE at its top; loaded the one in its vae/ subfolder" not in result.stderr  # named, not guessed
    assert "Training reads the captions of 20 of 40 images" in result.stderr
    assert sorted(p.name for p in (out / "samples").glob("step-*.png")) == ["step-000005.png", "step-000006.png"]
    [cache] = [json.loads(m.read_text())["settings"] for m in (world / "cache").glob("*/metadata.json")
               if json.loads(m.read_text())["settings"].get("interpolation") == "lanczos"]  # fmt: skip
    assert cache["num_images"] == 40 and cache["caption_fraction"] == 0.5

    calls = hub_calls(log)
    assert calls[0] == {"call": "create_repo", "repo_id": "vdl-semi"}
    failed = [call["path_in_repo"] for call in calls if call["call"] == "upload_folder" and call["path_in_repo"]]
    assert failed == ["checkpoint-3"] * 3 + ["checkpoint-6"] * 3  # every attempt, then the run went on
    assert result.stderr.count("was not uploaded to someone/vdl-semi after 3 attempts") == 2
    [final] = [call for call in calls if call["call"] == "upload_folder" and not call["path_in_repo"]]
    assert final["repo_id"] == "someone/vdl-semi" and {"model_index.json", "pipeline_vdl.py", "README.md"} <= set(final["files"])
    card = final["card"]
    assert 'DiffusionPipeline.from_pretrained("someone/vdl-semi", custom_pipeline="pipeline_vdl", trust_remote_code=True)' in card
    assert "TODO" not in card and "| captions read in training | 20 (`--caption_fraction 0.5`" in card
    assert "| method | `vdl` |" in card and "6 steps" in card and "![validation samples](samples/latest.png)" in card


def test_the_flags_of_diffusers_scripts_mean_what_they_mean_there():
    sys.path.insert(0, str(ROOT))
    from train import DEFAULT_MAX_TRAIN_STEPS, TOY_VALIDATION_PROMPTS, hub_kwargs, parse_args

    toy, real = parse_args([]), parse_args(["--train_data_dir", str(ROOT / "tests")])
    # Steps win over epochs; neither given: the toy world's default run.
    assert toy.max_train_steps == real.max_train_steps == DEFAULT_MAX_TRAIN_STEPS == 6000
    assert parse_args(["--num_train_epochs", "3"]).max_train_steps is None  # counted from the data in main()
    assert parse_args(["--num_train_epochs", "3", "--max_train_steps", "5"]).max_train_steps == 5
    # The toy prompts only on the toy world: on real data they would land in the model card.
    assert toy.validation_prompts == TOY_VALIDATION_PROMPTS and real.validation_prompts == []
    assert parse_args(["--validation_prompts"]).validation_prompts == []
    # --cache_dir is the Hub download cache, as in diffusers; the embedding cache has its own flag.
    assert toy.cache_dir is None and toy.tracker_project_name == "vdl-diffusion"
    # Caches beside the Hugging Face ones ($HF_HOME), two checkpoints kept unless told otherwise (0: all).
    assert toy.embedding_cache_dir == os.path.join(hub_constants.HF_HOME, "vdl-diffusion")
    assert toy.checkpoints_total_limit == 2 and parse_args(["--checkpoints_total_limit", "0"]).checkpoints_total_limit == 0
    args = parse_args(["--cache_dir", "/tmp/hub", "--variant", "fp16", "--revision", "v2"])
    assert hub_kwargs(args) == {"cache_dir": "/tmp/hub", "variant": "fp16", "revision": "v2"}


def test_use_8bit_adam_takes_bitsandbytes_adamw(monkeypatch):
    sys.path.insert(0, str(ROOT))
    from train import adamw

    class AdamW8bit(torch.optim.AdamW):
        pass

    monkeypatch.setitem(sys.modules, "bitsandbytes", types.SimpleNamespace(optim=types.SimpleNamespace(AdamW8bit=AdamW8bit)))
    assert adamw(True, torch.device("cuda")) is AdamW8bit  # bitsandbytes has its own kernels
    assert adamw(False, torch.device("meta")) is torch.optim.AdamW


def test_adamw_is_fused_where_torch_has_the_kernel_and_takes_the_same_steps():
    sys.path.insert(0, str(ROOT))
    from train import adamw

    for device in ("cpu", "cuda"):
        fused_adamw = adamw(False, torch.device(device))
        assert fused_adamw.func is torch.optim.AdamW and fused_adamw.keywords == {"fused": True}
    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.SiLU(), torch.nn.Linear(16, 1))
    fused, initial = copy.deepcopy(reference), copy.deepcopy(reference)
    optimizers = [
        make(model.parameters(), lr=1e-2, weight_decay=1e-2)
        for model, make in ((reference, torch.optim.AdamW), (fused, adamw(False, torch.device("cpu"))))
    ]
    for _ in range(5):
        x = torch.randn(4, 8)
        for model, optimizer in zip((reference, fused), optimizers):
            model(x).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
    for a, b, start in zip(reference.parameters(), fused.parameters(), initial.parameters()):
        assert (b - start).abs().max() > 1e-2  # five steps of lr 1e-2 moved every weight
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_a_busy_machine_is_named_with_what_to_do():
    sys.path.insert(0, str(ROOT))
    from train import busy_machine_warning

    assert busy_machine_warning(1.9, 2, False) is None and busy_machine_warning(7.0, 8, True) is None
    warning = busy_machine_warning(5.3, 2, False)
    assert "load average is 5.3, above the 2 cores" in warning and "GOMP_SPINCOUNT=1000" in warning
    assert "GOMP_SPINCOUNT" not in busy_machine_warning(5.3, 2, True)  # already set: only the fact


def test_resuming_with_other_model_flags_fails_before_anything_loads(tmp_path):
    sys.path.insert(0, str(ROOT))
    from train import check_resume_flags, parse_args, public_args

    trained = parse_args(["--output_dir", str(tmp_path)])  # the clip prior, train.py's default
    (tmp_path / "training_args.json").write_text(json.dumps(public_args(trained)))
    checkpoint = tmp_path / "checkpoint-100"
    check_resume_flags(parse_args(["--output_dir", str(tmp_path), "--max_train_steps", "9000"]), checkpoint)  # a longer run: fine
    with pytest.raises(SystemExit, match=r"checkpoint-100 was trained with --prior clip; this command asks for --prior text-bank"):
        check_resume_flags(parse_args(["--output_dir", str(tmp_path), "--prior", "text-bank"]), checkpoint)
    check_resume_flags(parse_args(["--prior", "text-bank"]), None)  # nothing to resume: nothing to check
