"""Where training reads from, as diffusers' scripts allow: datasets saved to disk, Stable Diffusion-layout
repositories, Hub download options, resize filters."""

import datasets
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from vdl_diffusion import encoders as encoders_module
from vdl_diffusion.cache import cache_settings
from vdl_diffusion.data import INTERPOLATION_MODES, ImageDataset, ImageTransform, load_image_dataset
from vdl_diffusion.encoders import FrozenEncoders
from vdl_diffusion.testing_utils import save_tiny_clip, save_tiny_vae


def images(n: int) -> datasets.Dataset:
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)) for _ in range(n)]
    return datasets.Dataset.from_dict(
        {"image": pictures, "text": [f"caption {i}" for i in range(n)]},
        features=datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")}),
    )


def test_dataset_name_may_be_a_save_to_disk_folder(tmp_path):
    images(5).save_to_disk(tmp_path / "dataset")
    datasets.DatasetDict({"train": images(4), "test": images(2)}).save_to_disk(tmp_path / "dict")
    datasets.DatasetDict({"validation": images(2)}).save_to_disk(tmp_path / "no_train")
    dataset, skipped = load_image_dataset(dataset_name=str(tmp_path / "dataset"), caption_column="text")
    assert len(dataset) == 5 and skipped == [] and dataset[0]["text"] == "caption 0"
    assert len(load_image_dataset(dataset_name=str(tmp_path / "dict"))[0]) == 4  # its train split
    with pytest.raises(ValueError, match=r"holds the splits \['validation'\], none of them \"train\""):
        load_image_dataset(dataset_name=str(tmp_path / "no_train"))
    with pytest.raises(ValueError, match="written by save_to_disk.*leave out `dataset_config_name`"):
        load_image_dataset(dataset_name=str(tmp_path / "dataset"), dataset_config_name="default")


def test_image_interpolation_mode_picks_the_resize_filter():
    picture = Image.fromarray(np.random.default_rng(1).integers(0, 256, (61, 83, 3), dtype=np.uint8))
    resized = {mode: ImageTransform(16, interpolation=mode)(picture) for mode in ("bilinear", "lanczos", "nearest")}
    expected = np.asarray(picture.resize((22, 16), Image.Resampling.LANCZOS).crop((3, 0, 19, 16)), dtype=np.float32) / 127.5 - 1
    torch.testing.assert_close(resized["lanczos"], torch.from_numpy(expected).permute(2, 0, 1))
    assert not torch.allclose(resized["lanczos"], resized["bilinear"]) and not torch.allclose(resized["nearest"], resized["bilinear"])
    assert set(INTERPOLATION_MODES) == {"nearest", "nearest_exact", "bilinear", "bicubic", "box", "hamming", "lanczos"}
    with pytest.raises(ValueError, match="`interpolation` must be one of .*got 'cubic'"):
        ImageTransform(16, interpolation="cubic")


def test_the_resize_filter_names_the_cache_and_bilinear_keeps_the_earlier_names(tmp_path):
    save_tiny_clip(tmp_path / "clip")
    save_tiny_vae(tmp_path / "vae")
    frozen = FrozenEncoders.from_pretrained(str(tmp_path / "clip"), str(tmp_path / "vae"))
    dataset = images(2)
    common = dict(image_column="image", resolution=16, center_crop=True, random_flip=False, caption_column=None, caption_fraction=0.0, seed=0)
    bilinear = cache_settings(dataset, frozen, **common, interpolation="bilinear")
    assert "interpolation" not in bilinear and bilinear == cache_settings(dataset, frozen, **common)
    assert cache_settings(dataset, frozen, **common, interpolation="lanczos") == {**bilinear, "interpolation": "lanczos"}
    assert ImageDataset(dataset, ImageTransform(16), caption_column="text", caption_fraction=0.5).num_captions == 1


def test_a_stable_diffusion_repository_gives_its_vae(tmp_path):
    save_tiny_clip(tmp_path / "clip")
    save_tiny_vae(tmp_path / "sd" / "vae", seed=3)
    (tmp_path / "sd" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    # Given as --pretrained_vae (found by itself) or --pretrained_model_name_or_path (vae_subfolder="vae").
    for subfolder in (None, "vae"):
        frozen = FrozenEncoders.from_pretrained(str(tmp_path / "clip"), str(tmp_path / "sd"), vae_subfolder=subfolder)
        expected = AutoencoderKL.from_pretrained(tmp_path / "sd" / "vae").state_dict()
        assert all(torch.equal(value, expected[key]) for key, value in frozen.vae.state_dict().items())
    (tmp_path / "empty").mkdir()
    with pytest.raises(OSError, match=r"no file named config.json found in directory .*empty\.$"):  # the first error
        FrozenEncoders.from_pretrained(str(tmp_path / "clip"), str(tmp_path / "empty"))


def test_hub_options_reach_the_vae_and_clip(tmp_path, monkeypatch):
    """--cache_dir and --revision go to every download; --variant to the diffusers weights only."""
    save_tiny_clip(tmp_path / "clip")
    save_tiny_vae(tmp_path / "vae")
    seen = {}
    load_vae, load_tower = AutoencoderKL.from_pretrained, encoders_module._clip_tower

    def vae(path, **kwargs):
        seen["vae"] = kwargs
        return load_vae(path, **{k: v for k, v in kwargs.items() if k == "subfolder"})

    def tower(cls, path, **kwargs):
        seen[cls.__name__] = kwargs
        return load_tower(cls, path)

    monkeypatch.setattr(AutoencoderKL, "from_pretrained", vae)
    monkeypatch.setattr(encoders_module, "_clip_tower", tower)
    FrozenEncoders.from_pretrained(str(tmp_path / "clip"), str(tmp_path / "vae"), revision="v2", cache_dir="/tmp/hub", variant="fp16")
    assert seen["vae"] == {"revision": "v2", "cache_dir": "/tmp/hub", "variant": "fp16"}
    assert seen["CLIPVisionModelWithProjection"] == seen["CLIPTextModelWithProjection"] == {"revision": "v2", "cache_dir": "/tmp/hub"}
