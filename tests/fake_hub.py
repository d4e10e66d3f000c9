"""Runs train.py (the arguments after this script's name) with the Hub replaced: no network, every call recorded.

``vdl_diffusion.hub``'s ``create_repo`` and ``upload_folder`` are swapped for fakes that append one JSON
line per call to the file named by ``VDL_FAKE_HUB_LOG``; ``VDL_FAKE_HUB_FAIL`` makes ``create_repo`` fail
(``create_repo``) or every checkpoint upload fail (``checkpoints``). Retries wait 0 s. Used by
tests/test_train.py as the script of ``accelerate launch``.
"""

import json
import os
import runpy
import sys
from pathlib import Path
from types import SimpleNamespace

import vdl_diffusion.hub as hub

TRAIN = Path(__file__).resolve().parents[1] / "train.py"
LOG, FAIL = os.environ["VDL_FAKE_HUB_LOG"], os.environ.get("VDL_FAKE_HUB_FAIL", "")


def record(**call):
    with open(LOG, "a") as log:
        log.write(json.dumps(call) + "\n")


def create_repo(repo_id, **kwargs):
    record(call="create_repo", repo_id=repo_id)
    if FAIL == "create_repo":
        raise OSError("401 Client Error: Unauthorized (invalid user token)")
    return SimpleNamespace(repo_id=repo_id if "/" in repo_id else f"someone/{repo_id}")


def upload_folder(repo_id, folder_path, path_in_repo=None, **kwargs):
    files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
    card = Path(folder_path, "README.md").read_text() if not path_in_repo else None
    record(call="upload_folder", repo_id=repo_id, path_in_repo=path_in_repo, files=files, card=card)
    if FAIL == "checkpoints" and path_in_repo:
        raise OSError("503 Server Error: Service Unavailable")


hub.create_repo, hub.upload_folder, hub.RETRY_DELAY_S = create_repo, upload_folder, 0.0
sys.argv[0] = str(TRAIN)
runpy.run_path(str(TRAIN), run_name="__main__")
