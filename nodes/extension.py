"""The node list ComfyUI loads through comfy_entrypoint."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .calibrate_node import SparseVDiTCalibrate
from .load_plan_node import SparseVDiTLoadPlan
from .patch_node import SparseVDiTPatch
from .preview_node import SparseVDiTPlanPreview
from .raylight_node import SparseVDiTRaylight
from .solve_node import SparseVDiTSolvePlan
from .plan_files import register_plan_folder


class SparseVDiTExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        register_plan_folder()
        return [SparseVDiTPatch, SparseVDiTLoadPlan, SparseVDiTPlanPreview, SparseVDiTCalibrate, SparseVDiTSolvePlan,
                SparseVDiTRaylight]
