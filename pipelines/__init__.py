from .pipeline_vdl import VDLPipeline

__all__ = ["VDLPipeline"]
