"""vdl-diffusion installed from its wheel: the package alone trains, and a checkout's train.py runs beside it.

The wheel goes into a fresh virtual environment that reuses this interpreter's installed packages (torch,
diffusers, ...) as plain paths, so no index is needed, and that, unlike ``--system-site-packages``, does not
run their ``.pth`` files: the editable install of this checkout, if there is one, cannot stand in for the
wheel or for the checkout's own imports.
"""

import importlib.util
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*command, cwd, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, command))} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory):
    """(the wheel, the python of a fresh environment where it is installed)."""
    if importlib.util.find_spec("setuptools.command.bdist_wheel") is None and importlib.util.find_spec("wheel") is None:
        pytest.skip("building a wheel without build isolation needs setuptools >= 70.1 or the wheel package")
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"  # what the wheel is built from, copied: the build leaves nothing in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("vdl_diffusion", "pipelines"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", tmp / "dist", source, cwd=tmp)
    [wheel] = (tmp / "dist").glob("vdl_diffusion-*.whl")

    run(sys.executable, "-m", "venv", "--without-pip", tmp / "venv", cwd=tmp)
    python = tmp / "venv" / "bin" / "python"
    purelib = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp).stdout.strip()
    Path(purelib, "_installed_packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    run(python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", wheel, cwd=tmp)
    return wheel, python


@pytest.mark.slow
def test_the_wheel_holds_the_pipeline_and_the_toy_weights(wheel_env):
    wheel, _ = wheel_env
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"vdl_diffusion/pipelines/pipeline_vdl.py", "vdl_diffusion/hub.py", "vdl_diffusion/toy/weights/clip/config.json"} <= names
    # The package's __init__ is pipelines/__init__.py; the checkout's stand-in for it is not installed.
    installed = zipfile.ZipFile(wheel).read("vdl_diffusion/pipelines/__init__.py").decode()
    assert installed == (ROOT / "pipelines" / "__init__.py").read_text()
    assert not any(name.startswith("pipelines/") for name in names)


@pytest.mark.slow
def test_the_installed_wheel_trains_and_the_checkouts_train_py_runs_beside_it(wheel_env, tmp_path):
    _, python = wheel_env
    where = run(python, "-c", "import vdl_diffusion.pipelines.pipeline_vdl as m; print(m.__file__)", cwd=tmp_path).stdout
    assert f"{os.sep}venv{os.sep}" in where and "site-packages" in where  # the wheel's copy, not the checkout's

    # train.py outside any checkout: everything it needs (toy CLIP and VAE included) comes from the wheel.
    shutil.copy(ROOT / "train.py", tmp_path / "train.py")
    run(python, "train.py", "--help", cwd=tmp_path)
    run(python, "train.py", "--max_train_steps", "1", "--toy_train_images", "16", "--train_batch_size", "8",
        "--validation_prompts", "--report_to", "none", "--embedding_cache_dir", "cache", "--output_dir", "out",
        cwd=tmp_path)  # fmt: skip
    assert (tmp_path / "out" / "model_index.json").is_file() and (tmp_path / "out" / "pipeline_vdl.py").is_file()

    # The checkout's train.py after a plain `pip install .`: its vdl_diffusion/ comes first on sys.path.
    assert "--embedding_cache_dir" in run(python, ROOT / "train.py", "--help", cwd=tmp_path).stdout
