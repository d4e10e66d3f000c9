import io
import json
import logging
import pickle
import shutil
import threading
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from accelerate import Accelerator
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import CLIPImageProcessor

import vdl_diffusion.cache as cache_module
from vdl_diffusion.cache import (
    METADATA,
    CachedEmbeddingDataset,
    _encode_shards,
    _encode_stream,
    _write_metadata,
    build_or_load_cache,
    cache_settings,
)
from vdl_diffusion.data import ImageDataset, ImageTransform, decode_image
from vdl_diffusion.encoders import FrozenEncoders
from vdl_diffusion.testing_utils import save_tiny_clip, save_tiny_vae

NUM_IMAGES = 10
RESOLUTION = 32


def image_cell(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (36, 48, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


@pytest.fixture(scope="module")
def dataset():
    captions = [f"a red circle {i}" if i % 3 else "" for i in range(NUM_IMAGES)]  # 6 captioned images
    table = {"image": [image_cell(i) for i in range(NUM_IMAGES)], "text": captions}
    return datasets.Dataset.from_dict(table).cast_column("image", datasets.Image(decode=False))


@pytest.fixture(scope="module")
def model_paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "clip": str(save_tiny_clip(root / "clip")),
        "vae": str(save_tiny_vae(root / "vae")),
        "other_vae": str(save_tiny_vae(root / "other_vae", seed=1)),
    }


@pytest.fixture(scope="module")
def encoders(model_paths):
    return FrozenEncoders.from_pretrained(model_paths["clip"], model_paths["vae"])


@pytest.fixture(scope="module")
def shared_cache_dir(tmp_path_factory):
    """One cache folder for the tests that only read the default cache, so it is built once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def accelerator():
    return Accelerator(cpu=True)


@pytest.fixture
def image_calls(encoders, monkeypatch):
    """Counts the image batches that go through the encoders."""
    calls = []
    encode_images = encoders.encode_images
    monkeypatch.setattr(encoders, "encode_images", lambda pixel_values: calls.append(1) or encode_images(pixel_values))
    return calls


def build(accelerator, dataset, encoders, cache_dir, **overrides):
    options = dict(resolution=RESOLUTION, random_flip=True, caption_column="text", caption_fraction=0.5, seed=0, batch_size=4)
    return build_or_load_cache(accelerator, dataset, encoders, cache_dir, **{**options, **overrides})


def test_cache_is_built_once_and_then_reused(accelerator, dataset, encoders, image_calls, tmp_path):
    first = build(accelerator, dataset, encoders, tmp_path)
    assert len(image_calls) == 3  # 10 images in batches of 4
    second = build(accelerator, dataset, encoders, tmp_path)
    assert len(image_calls) == 3
    assert second.folder == first.folder and len(second) == NUM_IMAGES
    assert [path.name for path in tmp_path.iterdir() if path.suffix != ".lock"] == [first.folder.name]


def test_concurrent_builders_of_one_cache_take_turns_and_encode_once(
    accelerator, dataset, encoders, image_calls, tmp_path, caplog, monkeypatch
):
    """A second run needing the same cache waits for the first to finish, then reads it (it once deleted it half-built)."""
    caplog.set_level(logging.INFO, logger="vdl_diffusion.files")
    waiting = threading.Event()
    waits_logged = logging.Handler()

    def signal(record):
        if record.getMessage().startswith("Waiting for another process"):
            waiting.set()

    waits_logged.emit = signal
    logging.getLogger("vdl_diffusion.files").addHandler(waits_logged)
    results = {}
    second = threading.Thread(target=lambda: results.update(second=build(accelerator, dataset, encoders, tmp_path)))
    encode_images = encoders.encode_images

    def encode_while_the_second_waits(pixel_values):
        if not second.is_alive() and not waiting.is_set():  # the first batch: start the rival mid-build
            second.start()
            assert waiting.wait(timeout=60)
        return encode_images(pixel_values)

    monkeypatch.setattr(encoders, "encode_images", encode_while_the_second_waits)
    try:
        first = build(accelerator, dataset, encoders, tmp_path)
        second.join(timeout=120)
    finally:
        logging.getLogger("vdl_diffusion.files").removeHandler(waits_logged)
    assert len(image_calls) == 3  # built once: 10 images in batches of 4
    assert results["second"].folder == first.folder and len(results["second"]) == NUM_IMAGES
    torch.testing.assert_close(results["second"][7]["y"], first[7]["y"])
    assert not (first.folder / f".{first.folder.name}.lock").exists()  # the lock lies beside the folder, not in it


def test_cached_rows_equal_encoding_on_the_fly(accelerator, dataset, encoders, shared_cache_dir):
    cache = build(accelerator, dataset, encoders, shared_cache_dir)
    images = build(accelerator, dataset, encoders, shared_cache_dir, random_flip=False, no_cache=True)
    assert isinstance(images, ImageDataset)
    batch = torch.utils.data.default_collate([images[i] for i in range(NUM_IMAGES)])
    expected = images.prepare_batch(batch, encoders)  # what --no_cache computes in the training loop
    cached = cache.prepare_batch(torch.utils.data.default_collate([cache[i] for i in range(NUM_IMAGES)]), encoders)
    for key in ("y", "features", "caption_embeds", "has_caption"):
        torch.testing.assert_close(cached[key], expected[key], atol=1e-4, rtol=1e-4)  # other batch sizes: not bitwise
    assert expected["has_caption"].sum() == 3 and not cached["caption_embeds"][~cached["has_caption"]].any()
    flipped = encoders.encode_latents(batch["pixel_values"].flip(-1))
    for i in range(NUM_IMAGES):
        assert torch.allclose(cached["latents"][i], expected["latents"][i], atol=1e-3) or torch.allclose(
            cached["latents"][i], flipped[i], atol=1e-3
        )
    captioned = int(expected["has_caption"].nonzero()[0])
    torch.testing.assert_close(
        cached["caption_embeds"][captioned], encoders.encode_text([batch["caption"][captioned]])[0], atol=1e-4, rtol=1e-4
    )


def test_flip_is_drawn_in_the_training_step_not_when_loading(accelerator, dataset, encoders, shared_cache_dir):
    cache = build(accelerator, dataset, encoders, shared_cache_dir)
    pixel_values = ImageTransform(RESOLUTION)(decode_image(dataset[0]["image"]))[None]
    plain, mirrored = encoders.encode_latents(pixel_values)[0], encoders.encode_latents(pixel_values.flip(-1))[0]
    state = torch.random.get_rng_state()
    row = cache[0]
    assert torch.equal(torch.random.get_rng_state(), state)  # loading draws nothing
    torch.testing.assert_close(row["latents"], plain, atol=1e-3, rtol=0)  # plain and mirrored differ by ~0.2
    torch.testing.assert_close(row["latents_flipped"], mirrored, atol=1e-3, rtol=0)

    batch = torch.utils.data.default_collate([cache[0]] * 20)
    torch.manual_seed(1)
    draws = cache.prepare_batch(batch, encoders)["latents"]
    is_mirrored = [torch.allclose(draw, mirrored, atol=1e-3) for draw in draws]
    assert 0 < sum(is_mirrored) < len(draws)
    assert all(m or torch.allclose(draw, plain, atol=1e-3) for draw, m in zip(draws, is_mirrored))
    torch.manual_seed(1)
    torch.testing.assert_close(cache.prepare_batch(batch, encoders)["latents"], draws)  # reproducible from the seed

    unflipped = build(accelerator, dataset, encoders, shared_cache_dir, random_flip=False)
    assert unflipped.folder != cache.folder
    assert "latents_flipped" not in unflipped[0]


def test_caption_fraction_sets_how_many_captions_are_cached(accelerator, dataset, encoders, shared_cache_dir):
    for fraction in (0.0, 0.5, 1.0):
        cache = build(accelerator, dataset, encoders, shared_cache_dir, caption_fraction=fraction)
        has_caption = torch.stack([cache[i]["has_caption"] for i in range(NUM_IMAGES)])
        assert int(has_caption.sum()) == round(fraction * 6)


@pytest.mark.parametrize("change", ["resolution", "vae", "center_crop", "caption_fraction", "dataset"])
def test_a_changed_setting_builds_a_new_cache(accelerator, dataset, encoders, model_paths, shared_cache_dir, change):
    original = build(accelerator, dataset, encoders, shared_cache_dir)
    if change == "resolution":
        changed = build(accelerator, dataset, encoders, shared_cache_dir, resolution=16)
        assert changed[0]["latents"].shape[-1] == original[0]["latents"].shape[-1] // 2
    elif change == "vae":
        other = FrozenEncoders.from_pretrained(model_paths["clip"], model_paths["other_vae"])
        changed = build(accelerator, dataset, other, shared_cache_dir)
        assert not torch.allclose(changed[0]["latents"], original[0]["latents"])
    elif change == "center_crop":
        changed = build(accelerator, dataset, encoders, shared_cache_dir, center_crop=False)
    elif change == "caption_fraction":
        changed = build(accelerator, dataset, encoders, shared_cache_dir, caption_fraction=1.0)
    else:
        changed = build(accelerator, dataset.select(range(NUM_IMAGES - 1)), encoders, shared_cache_dir)
    assert changed.folder != original.folder
    assert original.folder.exists()


def test_cache_key_ignores_the_seed_when_it_does_not_matter(dataset, encoders):
    settings = dict(image_column="image", resolution=RESOLUTION, center_crop=True, random_flip=False, caption_column="text")
    assert cache_settings(dataset, encoders, **settings, caption_fraction=1.0, seed=0) == cache_settings(
        dataset, encoders, **settings, caption_fraction=1.0, seed=1
    )
    assert cache_settings(dataset, encoders, **settings, caption_fraction=0.5, seed=0) != cache_settings(
        dataset, encoders, **settings, caption_fraction=0.5, seed=1
    )


@pytest.mark.parametrize("damage", ["no_metadata", "temporary_files", "other_settings"])
def test_a_half_written_cache_is_rebuilt_not_read(accelerator, dataset, encoders, image_calls, tmp_path, damage):
    complete = build(accelerator, dataset, encoders, tmp_path)
    reference = complete[3]["y"].clone()
    folder = complete.folder
    shard = next(folder.glob("shard-*.safetensors"))
    if damage == "no_metadata":  # killed after the shards, before the marker; a shard is garbage
        (folder / METADATA).unlink()
        shard.write_bytes(b"half a shard")
    elif damage == "temporary_files":  # killed while writing the marker
        (folder / METADATA).rename(folder / f".{METADATA}.123.tmp")
        (folder / f".{shard.name}.456.tmp").write_bytes(b"partial")
    else:  # a marker for other settings (e.g. copied from another run)
        metadata = json.loads((folder / METADATA).read_text())
        metadata["settings"]["resolution"] = 64
        (folder / METADATA).write_text(json.dumps(metadata))
        shard.write_bytes(b"garbage")
    image_calls.clear()
    rebuilt = build(accelerator, dataset, encoders, tmp_path)
    # Killed while writing the marker: every shard is whole and is kept. Otherwise the garbage one is encoded again.
    assert bool(image_calls) == (damage != "temporary_files")
    assert rebuilt.folder == folder
    torch.testing.assert_close(rebuilt[3]["y"], reference)
    assert not list(folder.glob(".*.tmp"))


def test_shards_from_several_processes_merge_into_one_dataset(accelerator, dataset, encoders, shared_cache_dir, tmp_path, monkeypatch):
    single = build(accelerator, dataset, encoders, shared_cache_dir)
    folder = tmp_path / "sharded"
    folder.mkdir()
    images = ImageDataset(dataset, ImageTransform(RESOLUTION), caption_column="text", caption_fraction=0.5, seed=0)
    monkeypatch.setattr(cache_module, "SHARD_ROWS", 4)  # blocks 0-3, 4-7, 8-9: one per process
    settings = {**single.settings, "random_flip": False}
    for rank in range(3):
        process = SimpleNamespace(process_index=rank, num_processes=3, is_local_main_process=rank == 0)
        _encode_shards(process, images, encoders, folder, random_flip=False, batch_size=2, num_workers=0, settings=settings)
    _write_metadata(folder, settings, NUM_IMAGES)
    sharded = CachedEmbeddingDataset(folder)
    assert len(sharded.shards) == 3 and len(sharded) == NUM_IMAGES
    for i in range(NUM_IMAGES):
        torch.testing.assert_close(sharded[i]["y"], single[i]["y"], atol=1e-4, rtol=1e-4)  # other batch sizes
        torch.testing.assert_close(sharded[i]["caption_embeds"], single[i]["caption_embeds"], atol=1e-4, rtol=1e-4)


def test_cached_dataset_batches_and_pickles(accelerator, dataset, encoders, shared_cache_dir):
    cache = build(accelerator, dataset, encoders, shared_cache_dir)
    batch = next(iter(torch.utils.data.DataLoader(cache, batch_size=4)))
    assert batch["latents"].shape == (4, encoders.latent_channels, 8, 8)
    assert batch["y"].shape == batch["caption_embeds"].shape == (4, encoders.embedding_dim)
    assert batch["features"].shape == (4, encoders.feature_dim)
    assert batch["has_caption"].dtype == torch.bool
    restored = pickle.loads(pickle.dumps(cache))
    torch.testing.assert_close(restored[5]["features"], cache[5]["features"])


def test_encoders_give_unit_embeddings_from_clip_normalised_pixels(encoders):
    size = encoders.image_encoder.config.image_size
    # A smooth 48×64 image, so PIL's and torch's bicubic resampling agree closely.
    rows, columns = np.meshgrid(np.linspace(0, 1, 48), np.linspace(0, 1, 64), indexing="ij")
    array = np.stack([rows, columns, np.sin(3 * rows + 2 * columns) ** 2], axis=-1)
    image = Image.fromarray((array * 255).round().astype(np.uint8))
    pixel_values = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 127.5 - 1
    processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    reference = processor(images=image, return_tensors="pt").pixel_values
    one_level = 1 / 255 / min(processor.image_std)  # one 8-bit step, after normalisation
    torch.testing.assert_close(encoders.clip_pixels(pixel_values), reference, atol=one_level, rtol=0)

    out = encoders.encode_images(pixel_values)
    torch.testing.assert_close(out["y"].norm(dim=-1), torch.ones(1))
    torch.testing.assert_close(encoders.encode_text(["a red circle", "a blue star"]).norm(dim=-1), torch.ones(2))
    assert out["features"].shape == (1, encoders.feature_dim)
    assert out["latents"].shape == (1, encoders.latent_channels, 48 // encoders.vae_scale_factor, 64 // encoders.vae_scale_factor)


def test_each_clip_tower_loads_quietly_and_a_missing_weight_fails(model_paths, tmp_path, capfd):
    """Each tower leaves the other's weights unused (no report of them); a weight it lacks is an error."""
    FrozenEncoders.from_pretrained(model_paths["clip"], model_paths["vae"])
    assert "UNEXPECTED" not in capfd.readouterr().err
    clip_dir = tmp_path / "clip"
    shutil.copytree(model_paths["clip"], clip_dir)
    weights = load_file(clip_dir / "model.safetensors")
    del weights["visual_projection.weight"]
    save_file(weights, clip_dir / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"visual_projection\.weight.*projection heads"):
        FrozenEncoders.from_pretrained(str(clip_dir), model_paths["vae"])


# --- Batched reads, in-memory mode, shards of SHARD_ROWS images, resumed builds -------------------


@pytest.fixture
def small_shards(monkeypatch):
    """Shards of 4 images: the 10 test images make three (4, 4, 2)."""
    monkeypatch.setattr(cache_module, "SHARD_ROWS", 4)


def assert_identical(batch, reference):
    assert batch.keys() == reference.keys()
    for key in reference:
        assert batch[key].dtype == reference[key].dtype and torch.equal(batch[key], reference[key]), key


def test_batched_and_in_memory_reads_equal_row_by_row_reads(accelerator, dataset, encoders, tmp_path, small_shards):
    cache = build(accelerator, dataset, encoders, tmp_path)
    assert len(cache.shards) == 3
    indices = torch.randperm(NUM_IMAGES, generator=torch.Generator().manual_seed(0)).tolist()
    # The reference reads every shard whole with safetensors' own loader, not with the cache's memory maps.
    shards = [load_file(cache.folder / shard) for shard in cache.shards]
    where = {int(image): (shard, row) for shard in shards for row, image in enumerate(shard["index"])}
    reference = {key: torch.stack([where[i][0][key][where[i][1]] for i in indices]) for key in cache.keys}
    assert_identical(torch.utils.data.default_collate([cache[i] for i in indices]), reference)
    assert_identical(torch.utils.data.default_collate(cache.__getitems__(indices)), reference)
    assert_identical(torch.utils.data.default_collate(cache.__getitems__(indices[:3])), {k: v[:3] for k, v in reference.items()})

    memory = CachedEmbeddingDataset(cache.folder)
    assert not memory.load_into_memory(budget_bytes=100)  # does not fit: stays memory-mapped
    assert memory.load_into_memory()
    assert_identical(torch.utils.data.default_collate(memory.__getitems__(indices)), reference)
    assert_identical(torch.utils.data.default_collate([memory[i] for i in indices]), reference)
    assert_identical(pickle.loads(pickle.dumps(memory))[indices[0]], cache[indices[0]])


def test_the_data_loader_reads_a_batch_with_one_gather_not_row_by_row(accelerator, dataset, encoders, tmp_path, small_shards, monkeypatch):
    cache = build(accelerator, dataset, encoders, tmp_path)
    reference = [torch.utils.data.default_collate([cache[i] for i in range(start, start + 5)]) for start in (0, 5)]
    monkeypatch.setattr(CachedEmbeddingDataset, "__getitem__", lambda *_: pytest.fail("read row by row"))
    for batch, expected in zip(torch.utils.data.DataLoader(cache, batch_size=5), reference):
        assert_identical(batch, expected)


def test_a_build_writes_each_shard_when_its_block_is_encoded(accelerator, dataset, encoders, tmp_path, small_shards, monkeypatch):
    """The memory bound: a build never holds more than one block of SHARD_ROWS images."""
    events = []
    save_file = cache_module.save_file
    monkeypatch.setattr(cache_module, "save_file", lambda shard, path, **kw: events.append(len(shard["index"])) or save_file(shard, path, **kw))
    encode_images = encoders.encode_images
    monkeypatch.setattr(encoders, "encode_images", lambda pixels: events.append("encode") or encode_images(pixels))
    build(accelerator, dataset, encoders, tmp_path, batch_size=2)
    assert events == ["encode", "encode", 4, "encode", "encode", 4, "encode", 2]


def killed_at_the_second_batch(encoders, monkeypatch, build_once) -> list[int]:
    """Runs ``build_once()`` with the encoders killed at their second batch (a KeyboardInterrupt), then returns
    a list that records the size of every batch later builds encode."""
    encode_images, calls = encoders.encode_images, []

    def killed(pixel_values):
        calls.append(len(pixel_values))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return encode_images(pixel_values)

    monkeypatch.setattr(encoders, "encode_images", killed)
    with pytest.raises(KeyboardInterrupt):
        build_once()
    calls.clear()
    monkeypatch.setattr(encoders, "encode_images", lambda pixel_values: calls.append(len(pixel_values)) or encode_images(pixel_values))
    return calls


def test_a_killed_build_resumes_from_its_finished_shards(accelerator, dataset, encoders, tmp_path, small_shards, monkeypatch):
    straight = build(accelerator, dataset, encoders, tmp_path / "straight", center_crop=False)
    calls = killed_at_the_second_batch(encoders, monkeypatch, lambda: build(accelerator, dataset, encoders, tmp_path / "resumed", center_crop=False))
    folder = next(path for path in (tmp_path / "resumed").iterdir() if path.is_dir())
    assert [path.name for path in folder.glob("shard-*")] == ["shard-00000.safetensors"]
    resumed = build(accelerator, dataset, encoders, tmp_path / "resumed", center_crop=False)
    assert calls == [4, 2]  # blocks 1 and 2 only
    # Random crops are seeded per block: the resumed cache is the straight one, row for row.
    assert_identical(
        torch.utils.data.default_collate(resumed.__getitems__(list(range(NUM_IMAGES)))),
        torch.utils.data.default_collate(straight.__getitems__(list(range(NUM_IMAGES)))),
    )


def test_a_shard_of_other_settings_or_block_size_is_encoded_again(accelerator, dataset, encoders, tmp_path, small_shards, monkeypatch, image_calls):
    cache = build(accelerator, dataset, encoders, tmp_path)
    folder = cache.folder
    shard = folder / "shard-00001.safetensors"
    tensors = load_file(shard)
    header = load_header(shard)
    save_file(tensors, shard, metadata={**header, "settings": "{}"})  # encoded with other settings
    save_file(tensors, folder / "shard-00003.safetensors", metadata=header)  # past the end: from a build with smaller blocks
    (folder / METADATA).unlink()
    image_calls.clear()
    rebuilt = build(accelerator, dataset, encoders, tmp_path)
    assert len(image_calls) == 1  # block 1 only, in one batch of 4
    assert sorted(path.name for path in folder.iterdir()) == [METADATA, *(f"shard-0000{k}.safetensors" for k in range(3))]
    assert len(rebuilt) == NUM_IMAGES


def load_header(path):
    with safe_open(path, framework="pt") as file:
        return file.metadata()


# --- Streamed datasets: the cache built in one pass ------------------------------------------------


def stream_of(dataset, broken=()):
    """``dataset`` as a ``datasets.IterableDataset`` (as `stream_dataset` returns one), rows ``broken`` not images."""
    if broken:
        cells = [{"bytes": b"not an image", "path": f"broken-{i}.png"} if i in broken else cell for i, cell in enumerate(dataset["image"])]
        dataset = dataset.remove_columns("image").add_column("image", cells).cast_column("image", datasets.Image(decode=False))
    stream = dataset.to_iterable_dataset()
    stream._fingerprint = dataset._fingerprint
    return stream


def test_a_stream_is_cached_in_one_pass_as_its_dataset_would_be(accelerator, dataset, encoders, tmp_path, small_shards, monkeypatch):
    """The rows of the map-style dataset's cache; a broken image is skipped and listed, not fatal."""
    mapped = build(accelerator, dataset, encoders, tmp_path / "mapped", caption_fraction=1.0)
    passes, iterate = [], datasets.IterableDataset.__iter__
    monkeypatch.setattr(datasets.IterableDataset, "__iter__", lambda self: passes.append(1) or iterate(self))
    streamed = build(accelerator, stream_of(dataset, broken={5}), encoders, tmp_path / "streamed", caption_fraction=1.0)
    assert passes == [1] and len(streamed) == NUM_IMAGES - 1 and len(streamed.shards) == 3
    assert len(streamed.skipped) == 1 and streamed.skipped[0].startswith("row 5 (broken-5.png): UnidentifiedImageError")
    kept = [i for i in range(NUM_IMAGES) if i != 5]
    for row, image in enumerate(kept):
        for key in ("y", "features", "caption_embeds", "has_caption"):
            torch.testing.assert_close(streamed[row][key], mapped[image][key], atol=1e-4, rtol=1e-4)  # other batches
    assert streamed.num_captions == mapped.num_captions - 1  # image 5 had a caption
    assert CachedEmbeddingDataset(streamed.folder).load_into_memory()  # in-memory rows follow the same order


def test_a_killed_stream_build_resumes_and_several_processes_write_what_one_does(
    accelerator, dataset, encoders, tmp_path, small_shards, monkeypatch
):
    straight = build(accelerator, stream_of(dataset, broken={1}), encoders, tmp_path / "straight", center_crop=False)
    calls = killed_at_the_second_batch(
        encoders, monkeypatch, lambda: build(accelerator, stream_of(dataset, broken={1}), encoders, tmp_path / "resumed", center_crop=False)
    )
    resumed = build(accelerator, stream_of(dataset, broken={1}), encoders, tmp_path / "resumed", center_crop=False)
    assert calls == [4, 2]  # blocks 1 and 2 only; block 0 (3 images and the broken one) was kept
    everything = list(range(NUM_IMAGES - 1))
    assert_identical(*(torch.utils.data.default_collate(cache.__getitems__(everything)) for cache in (resumed, straight)))
    assert [line.split(" at 0x")[0] for line in resumed.skipped] == [line.split(" at 0x")[0] for line in straight.skipped]

    # Three processes, each reading the whole stream and encoding its own block, write the one-process cache.
    folder, settings = tmp_path / "sharded", straight.settings
    folder.mkdir()
    transform = ImageTransform(RESOLUTION, center_crop=False)
    for rank in range(3):
        process = SimpleNamespace(process_index=rank, num_processes=3, is_local_main_process=rank == 0)
        length = _encode_stream(
            process, stream_of(dataset, broken={1}), transform, encoders, folder, True, 4, settings, "image", "text", 0.5
        )
        assert length == NUM_IMAGES
    _write_metadata(folder, settings, NUM_IMAGES)
    assert_identical(
        torch.utils.data.default_collate(CachedEmbeddingDataset(folder).__getitems__(everything)),
        torch.utils.data.default_collate(straight.__getitems__(everything)),
    )


def test_text_bank_candidates_are_read_a_batch_at_a_time(accelerator, dataset, encoders, tmp_path, small_shards):
    from vdl_diffusion.priors import TextBankPrior
    from vdl_diffusion.testing_utils import CORPUS
    from vdl_diffusion.text_bank import with_bank_candidates

    cache = build(accelerator, dataset, encoders, tmp_path)
    candidates = with_bank_candidates(cache, TextBankPrior.from_texts(CORPUS, encoders.encode_text, top_k=6))
    rows = np.load(candidates.path)
    indices = [7, 2, 9, 0]
    batch = torch.utils.data.default_collate(candidates.__getitems__(indices))
    assert_identical({k: v for k, v in batch.items() if not k.startswith("bank_")}, torch.utils.data.default_collate([cache[i] for i in indices]))
    assert torch.equal(batch["bank_index"], torch.from_numpy(rows["index"][indices].astype(np.int64)))
    assert torch.equal(batch["bank_logits"], torch.from_numpy(rows["logit"][indices]))
