"""ComfyUI-Sparse-vDiT: per-layer, per-head sparse attention for video DiTs.

ComfyUI loads this folder as a custom node pack (through comfy_entrypoint);
outside ComfyUI it is the Python package `sparse_vdit`. Nothing here imports
ComfyUI until ComfyUI asks for the nodes.
"""
__version__ = "0.1.0"


async def comfy_entrypoint():
    from .nodes.extension import SparseVDiTExtension

    return SparseVDiTExtension()
