"""Sparse-vDiT Plan Preview: the plan as an image."""
from __future__ import annotations

import logging

import numpy as np
import torch
from comfy_api.latest import io

from ..plans.format import PlanError
from ..plans.preview import render_plan
from .plan_files import find_statistics
from .types import PlanType

log = logging.getLogger("sparse_vdit")


class SparseVDiTPlanPreview(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SparseVDiTPlanPreview",
            display_name="Sparse-vDiT Plan Preview",
            category="model_patches/sparse_vdit",
            description="Use it to see what a plan does before (or without) running a model: draws the plan, "
                        "layers x heads coloured by mode, density and block speedup per layer, and attention maps "
                        "of a few heads of each mode when calibration statistics are found. Needs no model.",
            inputs=[PlanType.Input("plan", tooltip="A plan from Load Plan, Calibrate or Solve Plan.")],
            outputs=[io.Image.Output(display_name="IMAGE", tooltip="The picture of the plan: connect a Preview "
                                                                   "Image or Save Image node.")],
        )

    @classmethod
    def execute(cls, plan) -> io.NodeOutput:
        try:  # the maps are extras: a damaged statistics file costs them, not the picture
            stats = find_statistics(plan.provenance.get("statistics") or "")
        except PlanError as error:
            log.warning("Sparse-vDiT preview: drawing '%s' without attention maps: %s", plan.name, error)
            stats = None
        image = np.asarray(render_plan(plan, stats).convert("RGB"), dtype=np.float32) / 255.0
        return io.NodeOutput(torch.from_numpy(image)[None])
