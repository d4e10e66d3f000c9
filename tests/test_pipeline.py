"""VDLPipeline: sampling, guidance, schedulers, saving and loading (with and without this package)."""

import ast
import functools
import inspect
import json
import os
import sys
import textwrap

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DiffusionPipeline, DPMSolverMultistepScheduler, EulerDiscreteScheduler
from diffusers.callbacks import SDCFGCutoffCallback
from diffusers.models.attention_processor import AttnProcessor
from diffusers.utils import hub_utils

from vdl_diffusion import VDLPipeline
from vdl_diffusion.pipelines import pipeline_vdl
from vdl_diffusion.testing_utils import save_tiny_clip, tiny_clip_components, tiny_pipeline

D = 16  # the tiny pipeline's embedding width
STEPS = 2
PROMPTS = ["a red circle", "a blue square"]


def sample(pipe, seed=0, **kwargs):
    """Images as a float array, with a fresh generator per call (one per image if ``seed`` is a list)."""
    generator = (
        [torch.Generator().manual_seed(s) for s in seed]
        if isinstance(seed, list)
        else torch.Generator().manual_seed(seed)
    )
    kwargs = {"num_inference_steps": STEPS, "output_type": "np", **kwargs}
    return pipe(generator=generator, **kwargs).images


@pytest.fixture(scope="module")
def pipe():
    pipe = tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def null():
    return torch.linspace(-0.2, 0.3, D).tolist()


@pytest.fixture(scope="module")
def saved(tmp_path_factory, null):
    """A pipeline with a non-zero null embedding, saved once for the loading tests."""
    pipe = tiny_pipeline(seed=1, null_embedding=null)
    pipe.set_progress_bar_config(disable=True)
    path = tmp_path_factory.mktemp("vdl")
    pipe.save_pretrained(path)
    return pipe, path


class UNetCalls:
    """Records the batch size of every UNet forward pass (and its first input)."""

    def __init__(self, unet):
        self.batch_sizes, self.inputs = [], []
        self.handle = unet.register_forward_hook(self.record)

    def record(self, module, args, output):
        self.batch_sizes.append(args[0].shape[0])
        self.inputs.append(args[0])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


class ModelCalls:
    """Records which of the pipeline's networks ran: the CLIP encoders, the UNet, the VAE decoder."""

    def __init__(self, pipe):
        self.called = []
        modules = {
            "text_encoder": pipe.text_encoder,
            "image_encoder": pipe.image_encoder,
            "unet": pipe.unet,
            "vae.decoder": pipe.vae.decoder,
        }
        self.handles = [m.register_forward_pre_hook(functools.partial(self.record, n)) for n, m in modules.items()]

    def record(self, name, module, args):
        self.called.append(name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


# Outputs


@pytest.mark.parametrize(
    "output_type, check",
    [
        (
            "pil",
            lambda images: (
                len(images) == 4 and all(isinstance(i, PIL.Image.Image) and i.size == (32, 32) for i in images)
            ),
        ),
        ("np", lambda images: images.shape == (4, 32, 32, 3) and images.min() >= 0 and images.max() <= 1),
        ("pt", lambda images: images.shape == (4, 3, 32, 32) and images.min() >= 0 and images.max() <= 1),
        ("latent", lambda images: images.shape == (4, 4, 8, 8)),
    ],
)
def test_output_types(pipe, output_type, check):
    assert check(pipe(PROMPTS, num_images_per_prompt=2, num_inference_steps=STEPS, output_type=output_type).images)


def test_return_dict_false_gives_a_tuple(pipe):
    (latents,) = pipe(PROMPTS[0], num_inference_steps=1, output_type="latent", return_dict=False)
    assert latents.shape == (1, 4, 8, 8)


def test_same_seed_same_images(pipe):
    np.testing.assert_array_equal(sample(pipe, 0, prompt=PROMPTS[0]), sample(pipe, 0, prompt=PROMPTS[0]))
    assert not np.allclose(sample(pipe, 0, prompt=PROMPTS[0]), sample(pipe, 1, prompt=PROMPTS[0]))


def test_batch_equals_single_calls(pipe):
    batch = sample(pipe, [0, 1], prompt=PROMPTS)
    singles = np.concatenate([sample(pipe, s, prompt=p) for s, p in zip([0, 1], PROMPTS, strict=True)])
    # A batch of 2 and two batches of 1 run different matmul/conv kernels, whose float32 sums
    # round differently (1.3e-6 here; more with other thread counts, CPUs or BLAS builds): compare
    # at 1e-3 of the [0, 1] image range, a quarter of a uint8 level. A real bug moves pixels far
    # more: swapping the prompts changes them by up to 0.12, swapping the seeds by 0.9.
    np.testing.assert_allclose(batch, singles, rtol=0, atol=1e-3)


def test_prompts_give_different_images(pipe):
    assert not np.allclose(sample(pipe, 0, prompt=PROMPTS[0]), sample(pipe, 0, prompt=PROMPTS[1]))


# Conditioning


def test_conditions_are_normalised_clip_embeddings(pipe):
    text = pipe.tokenizer(
        PROMPTS, padding="max_length", max_length=pipe.tokenizer.model_max_length, return_tensors="pt"
    )
    expected = F.normalize(pipe.text_encoder(text.input_ids).text_embeds, dim=-1)
    t, null = pipe.encode_prompt(PROMPTS)
    torch.testing.assert_close(t, expected)
    torch.testing.assert_close(null, torch.zeros(2, D))  # the unconditional branch: the null embedding
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(2))
    y = pipe.encode_image([PIL.Image.new("RGB", (40, 30), "red")])
    assert y.shape == (1, D)
    torch.testing.assert_close(y.norm(dim=-1), torch.ones(1))


def test_prompt_embeds_stand_for_the_prompt(pipe):
    np.testing.assert_allclose(
        sample(pipe, prompt=PROMPTS[0]), sample(pipe, prompt_embeds=pipe.encode_prompt(PROMPTS[0])[0]), atol=1e-6
    )


def test_image_variations(pipe):
    images = [PIL.Image.new("RGB", (48, 40), "blue"), PIL.Image.new("RGB", (48, 40), "red")]
    variations = sample(pipe, image=images, num_images_per_prompt=2)
    assert variations.shape == (4, 32, 32, 3)
    # The same batch through the same kernels, so bitwise equal (comparing a batch of 4 with a batch
    # of 1 at atol 1e-6 failed: they differ by ~1e-6 from float32 rounding alone). `image=`
    # conditions each row on its own image's normalised CLIP embedding.
    np.testing.assert_array_equal(
        variations, sample(pipe, prompt_embeds=pipe.encode_image(images), num_images_per_prompt=2)
    )
    swapped = sample(pipe, image=images[::-1], num_images_per_prompt=2)
    assert not np.allclose(variations, swapped, atol=1e-3)  # the image, not only the noise, sets each row


# Classifier-free guidance


@pytest.mark.parametrize("guidance_scale, unet_batch", [(1.0, 2), (4.0, 4)])
def test_one_unet_call_per_step(pipe, guidance_scale, unet_batch):
    with UNetCalls(pipe.unet) as calls:
        sample(pipe, prompt=PROMPTS, guidance_scale=guidance_scale, num_inference_steps=3)
    assert calls.batch_sizes == [unet_batch] * 3


def test_guidance_changes_images(pipe):
    assert not np.allclose(
        sample(pipe, prompt=PROMPTS[0], guidance_scale=1.0), sample(pipe, prompt=PROMPTS[0], guidance_scale=4.0)
    )


def test_null_embedding_is_the_unconditional_branch(pipe, null):
    default = sample(pipe, prompt=PROMPTS[0])
    np.testing.assert_allclose(
        default, sample(pipe, prompt=PROMPTS[0], negative_prompt_embeds=torch.zeros(1, D)), atol=1e-6
    )
    with_null = VDLPipeline(**pipe.components, null_embedding=null)
    with_null.set_progress_bar_config(disable=True)
    moved = sample(with_null, prompt=PROMPTS[0])
    assert not np.allclose(default, moved)
    np.testing.assert_allclose(
        moved, sample(pipe, prompt=PROMPTS[0], negative_prompt_embeds=torch.tensor([null])), atol=1e-6
    )


def test_negative_prompt_replaces_the_null_embedding(pipe):
    negative = sample(pipe, prompt=PROMPTS, negative_prompt="a black ring")
    assert not np.allclose(negative, sample(pipe, prompt=PROMPTS))
    embeds, _ = pipe.encode_prompt(["a black ring"] * 2, do_classifier_free_guidance=False)
    np.testing.assert_allclose(negative, sample(pipe, prompt=PROMPTS, negative_prompt_embeds=embeds), atol=1e-6)


# Schedulers


@pytest.mark.parametrize("scheduler_class", [DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler])
def test_schedulers(pipe, scheduler_class):
    scheduler = scheduler_class.from_config(pipe.scheduler.config)
    other = VDLPipeline(**{**pipe.components, "scheduler": scheduler})
    other.set_progress_bar_config(disable=True)
    with UNetCalls(other.unet) as calls:
        images = sample(other, prompt=PROMPTS)
    assert images.shape == (2, 32, 32, 3) and np.isfinite(images).all()
    # init_noise_sigma and scale_model_input together give the UNet unit-variance input at the
    # first step, whatever the scheduler's parametrisation (Euler starts at sigma ≈ 14).
    assert 0.7 < calls.inputs[0].std().item() < 1.3


@pytest.mark.parametrize("schedule", [{"timesteps": [900, 500, 100]}, {"sigmas": [10.0, 3.0, 1.0, 0.3]}])
def test_custom_timesteps_and_sigmas(pipe, schedule):
    euler = VDLPipeline(**{**pipe.components, "scheduler": EulerDiscreteScheduler.from_config(pipe.scheduler.config)})
    euler.set_progress_bar_config(disable=True)
    with UNetCalls(euler.unet) as calls:
        images = sample(euler, prompt=PROMPTS[0], num_inference_steps=50, **schedule)  # the schedule wins
    assert len(calls.batch_sizes) == euler.num_timesteps == 3 and np.isfinite(images).all()
    if "timesteps" in schedule:
        assert euler.scheduler.timesteps.tolist() == schedule["timesteps"]


def test_eta_reaches_ddim_and_other_schedulers_ignore_it(pipe):
    assert not np.allclose(sample(pipe, prompt=PROMPTS[0]), sample(pipe, prompt=PROMPTS[0], eta=1.0))
    euler = VDLPipeline(**{**pipe.components, "scheduler": EulerDiscreteScheduler.from_config(pipe.scheduler.config)})
    euler.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(sample(euler, prompt=PROMPTS[0]), sample(euler, prompt=PROMPTS[0], eta=1.0))


# Attention processors


class ScaledAttnProcessor(AttnProcessor):
    """The classic processor, its output multiplied by ``multiplier``: an option only `cross_attention_kwargs` can set."""

    def __init__(self):
        self.multipliers = []

    def __call__(self, attn, hidden_states, *args, multiplier=1.0, **kwargs):
        self.multipliers.append(multiplier)
        return multiplier * super().__call__(attn, hidden_states, *args, **kwargs)


def test_cross_attention_kwargs_reach_the_attention_processors():
    pipe = tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    processor = ScaledAttnProcessor()
    pipe.unet.set_attn_processor(processor)
    default = sample(pipe, prompt=PROMPTS[0])
    assert set(processor.multipliers) == {1.0}
    processor.multipliers.clear()
    scaled = sample(pipe, prompt=PROMPTS[0], cross_attention_kwargs={"multiplier": 0.5})
    assert set(processor.multipliers) == {0.5} and pipe.cross_attention_kwargs == {"multiplier": 0.5}
    assert not np.allclose(default, scaled)


# Callbacks


def test_callbacks_read_num_timesteps_and_change_the_guidance_scale(pipe):
    """diffusers' own callbacks work: SDCFGCutoffCallback reads `num_timesteps` and sets `_guidance_scale`,
    which the loop reads at every step (a local copy would ignore it)."""
    with UNetCalls(pipe.unet) as calls:
        sample(pipe, prompt=PROMPTS[0], num_inference_steps=4, callback_on_step_end=SDCFGCutoffCallback(cutoff_step_ratio=0.5))
    assert pipe.num_timesteps == 4 and pipe.guidance_scale == 0.0
    assert calls.batch_sizes == [2, 2, 2, 1]  # guidance off after step int(4 × 0.5) = 2

    def raise_guidance(pipeline, i, timestep, callback_kwargs):
        pipeline._guidance_scale += 1.0
        return callback_kwargs

    raised = sample(pipe, prompt=PROMPTS[0], guidance_scale=2.0, callback_on_step_end=raise_guidance)
    assert pipe.guidance_scale == 2.0 + pipe.num_timesteps
    assert not np.allclose(raised, sample(pipe, prompt=PROMPTS[0], guidance_scale=2.0))


def test_interrupt_stops_denoising_where_it_is(pipe):
    seen = []

    def record(pipeline, i, timestep, callback_kwargs):
        seen.append(callback_kwargs["latents"].clone())
        return {}

    def interrupt_after_step_1(pipeline, i, timestep, callback_kwargs):
        pipeline._interrupt = i == 1
        return {}

    common = dict(prompt=PROMPTS, num_inference_steps=4, output_type="latent")
    sample(pipe, callback_on_step_end=record, **common)
    with UNetCalls(pipe.unet) as calls:
        interrupted = sample(pipe, callback_on_step_end=interrupt_after_step_1, **common)
    assert pipe.interrupt and len(calls.batch_sizes) == 2
    torch.testing.assert_close(interrupted, seen[1])


def test_callback_on_step_end(pipe):
    seen = []

    def callback(pipeline, i, timestep, callback_kwargs):
        seen.append((i, sorted(callback_kwargs)))
        if i == STEPS - 1:
            return {"latents": torch.zeros_like(callback_kwargs["latents"])}
        return {}

    latents = pipe(
        PROMPTS[0],
        num_inference_steps=STEPS,
        output_type="latent",
        callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=["latents", "prompt_embeds", "negative_prompt_embeds"],
    ).images
    assert seen == [(i, ["latents", "negative_prompt_embeds", "prompt_embeds"]) for i in range(STEPS)]
    assert torch.count_nonzero(latents) == 0  # the returned tensors replace the pipeline's own


# Optional components and embeddings from elsewhere


def without(pipe, *names):
    return VDLPipeline(**{**pipe.components, **dict.fromkeys(names)})


def test_encode_prompt_works_in_isolation(pipe):
    """As diffusers' pipeline tests check it: `encode_prompt` on a pipeline that has only the text encoder and
    tokenizer; its outputs, named as `__call__`'s arguments, drive a pipeline without them to the same images."""
    text_only = without(pipe, "vae", "unet", "scheduler", "image_encoder", "feature_extractor")
    returned = [
        [element.id for element in node.value.elts]
        for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(VDLPipeline.encode_prompt))))
        if isinstance(node, ast.Return)
    ]
    assert returned == [["prompt_embeds", "negative_prompt_embeds"]]
    assert set(returned[0]) <= set(inspect.signature(VDLPipeline.__call__).parameters)
    with torch.no_grad():
        embeds = dict(zip(returned[0], text_only.encode_prompt(PROMPTS, negative_prompt="a black ring", num_images_per_prompt=2)))
    no_text = without(pipe, "text_encoder", "tokenizer")
    no_text.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(
        sample(no_text, **embeds), sample(pipe, prompt=PROMPTS, negative_prompt="a black ring", num_images_per_prompt=2), atol=1e-6
    )
    with pytest.raises(ValueError, match="`prompt` needs `text_encoder` and `tokenizer`.*pass `prompt_embeds`"):
        no_text("a red circle")
    with pytest.raises(ValueError, match="Sampling needs `unet` and `scheduler`.*without unet and scheduler"):
        text_only(prompt_embeds=embeds["prompt_embeds"])
    with pytest.raises(ValueError, match="`output_type='np'` needs `vae`"):
        without(pipe, "vae")(PROMPTS[0], output_type="np")
    latents = without(pipe, "vae")(PROMPTS[0], output_type="latent", num_inference_steps=1).images
    assert latents.shape == (1, 4, 8, 8)


def test_loads_only_the_parts_asked_for(saved):
    _, path = saved
    text_only = VDLPipeline.from_pretrained(path, unet=None, vae=None)
    assert text_only.unet is None and text_only.vae is None and text_only.text_encoder is not None
    prompt_embeds, negative_prompt_embeds = text_only.encode_prompt(PROMPTS)
    assert prompt_embeds.shape == negative_prompt_embeds.shape == (2, D)
    no_text = VDLPipeline.from_pretrained(path, text_encoder=None, tokenizer=None)
    no_text.set_progress_bar_config(disable=True)
    assert sample(no_text, prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds).shape == (2, 32, 32, 3)


def test_optional_components_save_and_load_as_none(pipe, tmp_path):
    assert set(pipe.components) == {"vae", "unet", "scheduler", "tokenizer", "text_encoder", "image_encoder", "feature_extractor"}
    text_to_image = without(pipe, *VDLPipeline._optional_components)
    text_to_image.set_progress_bar_config(disable=True)
    text_to_image.save_pretrained(tmp_path)
    loaded = VDLPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert all(getattr(loaded, name) is None for name in VDLPipeline._optional_components)
    np.testing.assert_array_equal(sample(text_to_image, prompt=PROMPTS), sample(loaded, prompt=PROMPTS))


# Saving and loading


def test_save_load_round_trip(saved, null):
    pipe, path = saved
    assert json.loads((path / "model_index.json").read_text())["null_embedding"] == null
    loaded = VDLPipeline.from_pretrained(path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is VDLPipeline and loaded.config.null_embedding == null
    np.testing.assert_array_equal(sample(pipe, prompt=PROMPTS), sample(loaded, prompt=PROMPTS))
    np.testing.assert_array_equal(
        sample(pipe, image=PIL.Image.new("RGB", (32, 32))), sample(loaded, image=PIL.Image.new("RGB", (32, 32)))
    )


def test_saved_pipeline_file_needs_only_torch_diffusers_transformers(saved):
    _, path = saved
    tree = ast.parse((path / "pipeline_vdl.py").read_text())
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert all(n.level == 0 for n in ast.walk(tree) if isinstance(n, ast.ImportFrom))  # no relative imports
    allowed = {"torch", "diffusers", "transformers", "PIL", "huggingface_hub"} | set(sys.stdlib_module_names)
    assert {m.split(".")[0] for m in modules} <= allowed


def test_model_index_names_the_code_and_classes_every_supported_version_has(saved):
    _, path = saved
    index = json.loads((path / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_vdl", "VDLPipeline"]
    # transformers 5 without torchvision builds CLIPImageProcessorPil, a class transformers 4 lacks.
    assert index["feature_extractor"] == ["transformers", "CLIPImageProcessor"]
    assert index["tokenizer"] == ["transformers", "CLIPTokenizerFast"]  # transformers 4 reads tokenizer.json with this one only


@pytest.mark.parametrize("custom_pipeline", [None, "pipeline_vdl"])
def test_loads_with_plain_diffusers(saved, null, custom_pipeline):
    pipe, path = saved
    try:
        DiffusionPipeline.from_pretrained(path, custom_pipeline=custom_pipeline)
    except ValueError as error:  # recent diffusers ask before running a folder's code; 0.32 runs it
        assert "trust_remote_code" in str(error)
    loaded = DiffusionPipeline.from_pretrained(path, custom_pipeline=custom_pipeline, trust_remote_code=True)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded).__name__ == "VDLPipeline" and type(loaded) is not VDLPipeline  # the saved file's class
    assert loaded.config.null_embedding == null
    np.testing.assert_array_equal(sample(pipe, prompt=PROMPTS), sample(loaded, prompt=PROMPTS))


@pytest.mark.parametrize("via", ["push_to_hub", "save_pretrained"])
def test_push_to_hub_uploads_weights_code_and_card(pipe, tmp_path, monkeypatch, via):
    uploads = []

    class Repo:
        repo_id = "someone/vdl-tiny"

    def fake_upload_folder(repo_id, folder_path, **kwargs):
        files = {os.path.relpath(os.path.join(d, f), folder_path) for d, _, fs in os.walk(folder_path) for f in fs}
        card = open(os.path.join(folder_path, "README.md")).read()
        uploads.append((repo_id, files, card))

    def no_remote_card(*args, **kwargs):
        raise hub_utils.EntryNotFoundError("no model card on the Hub")

    monkeypatch.setattr(pipeline_vdl, "create_repo", lambda *a, **k: Repo())
    monkeypatch.setattr("diffusers.pipelines.pipeline_utils.create_repo", lambda *a, **k: Repo())
    monkeypatch.setattr(hub_utils.ModelCard, "load", no_remote_card)
    monkeypatch.setattr(hub_utils, "upload_folder", fake_upload_folder)
    if via == "push_to_hub":
        pipe.push_to_hub("vdl-tiny")
    else:
        pipe.save_pretrained(tmp_path / "vdl-tiny", push_to_hub=True)

    [(repo_id, files, card)] = uploads
    assert repo_id == "someone/vdl-tiny"
    assert {"README.md", "model_index.json", "pipeline_vdl.py", "unet/diffusion_pytorch_model.safetensors"} <= files
    assert "library_name: diffusers" in card and "TODO" not in card and "- vdl" in card
    # Our card says how to load the repository, by its id, without vdl-diffusion.
    assert 'DiffusionPipeline.from_pretrained("someone/vdl-tiny", custom_pipeline="pipeline_vdl", trust_remote_code=True)' in card


# Test builders


def test_builders_are_deterministic():
    a, b, c = tiny_pipeline(seed=0), tiny_pipeline(seed=0), tiny_pipeline(seed=1)
    for name in ("unet", "vae", "text_encoder", "image_encoder"):
        weights = [next(iter(getattr(p, name).state_dict().values())) for p in (a, b, c)]
        assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])


def test_tiny_clip_folder_loads_like_openai_clip(tmp_path):
    from transformers import (
        CLIPImageProcessor,
        CLIPModel,
        CLIPTextModelWithProjection,
        CLIPTokenizerFast,
        CLIPVisionModelWithProjection,
    )

    save_tiny_clip(tmp_path, embedding_dim=D, seed=3)
    clip = CLIPModel.from_pretrained(tmp_path)
    tokenizer = CLIPTokenizerFast.from_pretrained(tmp_path)
    pixels = CLIPImageProcessor.from_pretrained(tmp_path)(
        PIL.Image.new("RGB", (50, 40)), return_tensors="pt"
    ).pixel_values
    assert pixels.shape == (1, 3, 32, 32)
    ids = tokenizer(
        PROMPTS, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt"
    ).input_ids
    parts = tiny_clip_components(embedding_dim=D, seed=3)
    with torch.no_grad():
        clip_output = clip(input_ids=ids, pixel_values=pixels)  # its embeddings come normalised
        t = parts["text_encoder"](ids).text_embeds
        y = parts["image_encoder"](pixels).image_embeds
        torch.testing.assert_close(clip_output.text_embeds, F.normalize(t, dim=-1))
        torch.testing.assert_close(clip_output.image_embeds, F.normalize(y, dim=-1))
        torch.testing.assert_close(CLIPTextModelWithProjection.from_pretrained(tmp_path)(ids).text_embeds, t)
        torch.testing.assert_close(CLIPVisionModelWithProjection.from_pretrained(tmp_path)(pixels).image_embeds, y)


# Bad input


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({}, ValueError, "exactly one of `prompt`, `prompt_embeds` or `image`"),
        (
            {"prompt": "a", "prompt_embeds": torch.zeros(1, D)},
            ValueError,
            r"exactly one of .*\['prompt', 'prompt_embeds'\]",
        ),
        (
            {"prompt": "a", "image": PIL.Image.new("RGB", (32, 32))},
            ValueError,
            r"exactly one of .*\['prompt', 'image'\]",
        ),
        ({"prompt": 3}, TypeError, "`prompt` must be a string or a list of strings, got int"),
        ({"prompt": "a", "negative_prompt": ["b", 2]}, TypeError, "`negative_prompt` must be a string"),
        (
            {"prompt_embeds": torch.zeros(1, 8)},
            ValueError,
            r"`prompt_embeds` must be a tensor of shape \(batch, 16\).*got \(1, 8\)",
        ),
        (
            {"prompt": "a", "negative_prompt_embeds": torch.zeros(1, 8)},
            ValueError,
            r"`negative_prompt_embeds` must be .*got \(1, 8\)",
        ),
        (
            {"prompt_embeds": torch.zeros(2, D), "negative_prompt_embeds": torch.zeros(3, D)},
            ValueError,
            "`negative_prompt_embeds` has batch size 3 but `prompt_embeds` has 2",
        ),
        (
            {"prompt": ["a", "b"], "negative_prompt": ["c", "d", "e"]},
            ValueError,
            "`negative_prompt` has batch size 3 but `prompt` has 2",
        ),
        ({"prompt": "a", "negative_prompt": "b", "negative_prompt_embeds": torch.zeros(1, D)}, ValueError, "not both"),
        ({"prompt": "a", "height": 30}, ValueError, "`height` must be divisible by the VAE factor 4, got 30"),
        ({"prompt": "a", "width": 18}, ValueError, "`width` must be divisible by the VAE factor 4, got 18"),
        ({"prompt": "a", "output_type": "jpg"}, ValueError, "`output_type` must be one of"),
        ({"prompt": "a", "num_images_per_prompt": 0}, ValueError, "`num_images_per_prompt` must be an integer .*got 0"),
        (
            {"prompt": "a", "callback_on_step_end_tensor_inputs": ["noise"]},
            ValueError,
            r"`callback_on_step_end_tensor_inputs` has \['noise'\]",
        ),
        (
            {"prompt": "a", "latents": torch.zeros(1, 4, 4, 4)},
            ValueError,
            r"`latents` has shape \(1, 4, 4, 4\), expected \(1, 4, 8, 8\)",
        ),
        (
            {"prompt": "a", "generator": [torch.Generator(), torch.Generator()]},
            ValueError,
            "`generator` is a list of 2 generators but 1 images",
        ),
        ({"image": "cat.png"}, TypeError, "`image` must be a PIL image"),
        ({"prompt": "a", "timesteps": [900, 100]}, ValueError, "`timesteps` needs a scheduler .* DDIMScheduler's does not"),
        ({"prompt": "a", "timesteps": [900], "sigmas": [1.0]}, ValueError, "`timesteps` or `sigmas`.*not both"),
        ({"prompt": "a", "cross_attention_kwargs": 0.5}, TypeError, "`cross_attention_kwargs` must be a dict"),
        ({"prompt": "a", "num_inference_steps": 0}, ValueError, "`num_inference_steps` must be a positive int.*got 0"),
        ({"prompt": "a", "num_inference_steps": -3}, ValueError, "`num_inference_steps` must be .*got -3"),
        ({"prompt": "a", "num_inference_steps": 2.5}, ValueError, "`num_inference_steps` must be .*got 2.5"),
        ({"prompt": []}, ValueError, "`prompt` is empty .*pass at least one prompt"),
        ({"image": []}, ValueError, "`image` is empty .*pass at least one image"),
        ({"image": torch.zeros(0, 3, 32, 32)}, ValueError, r"`image` is empty \(got shape \(0, 3, 32, 32\)\)"),
        ({"prompt_embeds": torch.zeros(0, D)}, ValueError, r"`prompt_embeds` is empty \(got shape \(0, 16\)\)"),
        ({"prompt": "a", "height": 0}, ValueError, "`height` must be a positive integer number of pixels, got 0"),
        ({"prompt": "a", "height": -32}, ValueError, "`height` must be a positive integer .*got -32"),
        ({"prompt": "a", "width": 32.0}, ValueError, "`width` must be a positive integer .*got 32.0"),
        ({"prompt": "a", "num_images_per_prompt": 2.5}, ValueError, "`num_images_per_prompt` must be an .*got 2.5"),
        ({"prompt": "a", "guidance_scale": float("nan")}, ValueError, "`guidance_scale` must be a finite .*got nan"),
        ({"prompt": "a", "guidance_scale": float("inf")}, ValueError, "`guidance_scale` must be a finite .*got inf"),
        ({"prompt": "a", "guidance_scale": None}, ValueError, "`guidance_scale` must be a finite .*got None"),
        (
            {"prompt_embeds": torch.zeros(2, D).index_fill_(1, torch.tensor([3]), float("nan"))},
            ValueError,
            r"`prompt_embeds` has 2 NaN or infinite value\(s\) among its 32",
        ),
        (
            {"prompt": "a", "negative_prompt_embeds": torch.full((1, D), float("-inf"))},
            ValueError,
            "`negative_prompt_embeds` has 16 NaN or infinite",
        ),
        (
            {"image": torch.full((1, 3, 32, 32), float("nan"))},
            ValueError,
            "`image` has 3072 NaN or infinite",
        ),
        (
            {"prompt": "a", "latents": torch.zeros(1, 4, 8, 8).index_fill_(0, torch.tensor([0]), float("inf"))},
            ValueError,
            "`latents` has 256 NaN or infinite",
        ),
        (
            {"prompt": "a", "latents": np.zeros((1, 4, 8, 8), dtype=np.float32)},
            TypeError,
            r"`latents` must be a torch.Tensor of shape \(1, 4, 8, 8\), got ndarray",
        ),
    ],
)
def test_bad_inputs(pipe, kwargs, error, match):
    with ModelCalls(pipe) as calls, pytest.raises(error, match=match):
        pipe(**{"num_inference_steps": 1, **kwargs})
    assert calls.called == []  # rejected before any encoding, denoising or decoding


def test_checks_accept_numpy_integers_and_a_tensor_guidance_scale(pipe):
    latents = pipe(
        PROMPTS[0],
        num_inference_steps=np.int64(1),
        height=np.int64(32),
        num_images_per_prompt=np.int64(2),
        guidance_scale=torch.tensor(3.0),
        output_type="latent",
    ).images
    assert latents.shape == (2, 4, 8, 8) and torch.isfinite(latents).all()


def test_image_needs_an_image_encoder(pipe):
    text_only = VDLPipeline(**{**pipe.components, "image_encoder": None, "feature_extractor": None})
    with pytest.raises(ValueError, match="`image` needs an image encoder: pass `image_encoder`"):
        text_only(image=PIL.Image.new("RGB", (32, 32)), num_inference_steps=1)


def test_components_must_match_the_unet_width(pipe):
    with pytest.raises(ValueError, match=r"len\(null_embedding\) is 3 but the UNet takes conditions of width 16"):
        VDLPipeline(**pipe.components, null_embedding=[0.0, 0.0, 0.0])
    other_width = tiny_clip_components(embedding_dim=8)
    with pytest.raises(ValueError, match="text_encoder.config.projection_dim is 8"):
        VDLPipeline(**{**pipe.components, "text_encoder": other_width["text_encoder"]})
