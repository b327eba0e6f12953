"""Sparse-vDiT Plan Preview: the plan as an image."""
from __future__ import annotations

import numpy as np
import torch
from comfy_api.latest import io

from ..plans.preview import render_plan
from .plan_files import find_statistics
from .types import PlanType


class SparseVDiTPlanPreview(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SparseVDiTPlanPreview",
            display_name="Sparse-vDiT Plan Preview",
            category="model_patches/sparse_vdit",
            description="Draws the plan: layers x heads coloured by mode, density and block speedup per layer, "
                        "and attention maps of a few heads of each mode when calibration statistics are found.",
            inputs=[PlanType.Input("plan")],
            outputs=[io.Image.Output(display_name="IMAGE")],
        )

    @classmethod
    def execute(cls, plan) -> io.NodeOutput:
        stats = find_statistics(plan.provenance.get("statistics", ""))
        image = np.asarray(render_plan(plan, stats).convert("RGB"), dtype=np.float32) / 255.0
        return io.NodeOutput(torch.from_numpy(image)[None])
