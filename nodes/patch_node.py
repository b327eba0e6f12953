"""Sparse-vDiT Patch: put a plan on a model (thin: the work is in integration/)."""
from __future__ import annotations

from comfy_api.latest import io

from ..integration.auto_patch import AUTO, apply_auto
from ..integration.install import apply_plan
from ..integration.model_info import describe_model
from ..plans.format import PlanError
from ..integration.sparse_patch import BACKENDS
from ..kernels.dispatch import PRECISIONS
from . import plan_files
from .plan_files import load_named_plan, plan_names, register_plan_folder


class SparseVDiTPatch(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SparseVDiTPatch",
            display_name="Sparse-vDiT Patch",
            category="model_patches/sparse_vdit",
            description="Use it on every generation you want faster: it replaces the video self-attention of the "
                        "model (Wan, HunyuanVideo, ...) with per-layer, per-head sparse patterns from a plan. Put it "
                        "on the MODEL link just before the sampler. Plan 'auto' suits most users: the first run of a "
                        "model and resolution stays dense and calibrates a plan for it; later runs use that plan.",
            inputs=[
                io.Model.Input("model", tooltip="The video model to speed up (after its LoRA and model-sampling "
                                                "nodes); it is cloned, never changed."),
                io.Combo.Input("plan", options=[AUTO] + plan_names(),
                               tooltip="A plan file from models/sparse_vdit_plans or the plans shipped with the pack. "
                                       "auto: the first run with a new model or resolution stays dense and calibrates "
                                       "a plan; later runs use it."),
                io.Float.Input("dense_warmup", default=-1.0, min=-1.0, max=1.0, step=0.05,
                               tooltip="Fraction of the steps run dense first. -1 uses the plan's own setting."),
                io.Boolean.Input("enabled", default=True, tooltip="Off passes the model through unchanged."),
                io.Combo.Input("backend", options=list(BACKENDS), default="auto", optional=True,
                               tooltip="auto: the Triton kernel on GPUs, dense where it cannot serve a call. "
                                       "triton: the kernel only; a call it cannot serve, or a kernel error, runs "
                                       "dense with a warning in the log (for checking that the kernel runs). "
                                       "reference: the exact torch path everywhere (slow; for checking)."),
                io.Combo.Input("precision", options=list(PRECISIONS), default="bf16", optional=True,
                               tooltip="bf16: the exact path (default). 8-bit: INT8 QK + FP8 PV (SageAttention2's recipe; faster per block on GPUs with FP8 tensor cores, about 0.04 relative L1 error). auto: 8-bit for layers whose rows are long enough to repay the quantization on this card (7,500 keys per query on Hopper, measured; modelled per card class in kernels/launch_table.py, far fewer on RTX 30/40/50); bf16 on a card the table does not know."),
            ],
            outputs=[io.Model.Output(tooltip="A patched copy; the input model is not changed.")],
        )

    @classmethod
    def execute(cls, model, plan: str, dense_warmup: float = -1.0, enabled: bool = True,
                backend: str = "auto", precision: str = "bf16") -> io.NodeOutput:
        if not enabled:
            return io.NodeOutput(model)
        if plan == AUTO:
            register_plan_folder()
            return io.NodeOutput(apply_auto(model, plan_files.user_plans_dir(), dense_warmup, backend, precision))
        chosen = load_named_plan(plan)
        try:
            return io.NodeOutput(apply_plan(model, chosen, dense_warmup, backend, precision))
        except PlanError as error:  # say which plans would fit, where that can be known
            info = describe_model(model)
            fitting = plan_files.plans_fitting(info.layers, info.heads, info.head_dim) if info else []
            hint = f" Plans that fit it: {', '.join(fitting)}." if fitting else " No plan in the folders fits it: use 'auto' or calibrate."
            raise PlanError(f"{error}.{hint}") from None
