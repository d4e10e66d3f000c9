"""``vdl_diffusion.pipelines`` in a source checkout: the top-level ``pipelines/`` folder.

The pipeline's code lives in ``pipelines/`` at the repository's top (``pipeline_vdl.py``, the one file
``save_pretrained`` copies beside the weights). The wheel installs that folder as this package
(``package-dir`` in pyproject.toml), so an installed vdl-diffusion never runs this file. In a checkout,
where the checkout's ``vdl_diffusion/`` comes first on ``sys.path`` (``python train.py``, editable or
not), it makes the package that same folder, so both layouts import ``vdl_diffusion.pipelines.pipeline_vdl``.
"""

import os

__path__.append(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "pipelines"))

from .pipeline_vdl import VDLPipeline  # noqa: E402

__all__ = ["VDLPipeline"]
