"""Sparse-vDiT Calibrate: a dense sampling run that also finds a plan."""
from __future__ import annotations

import comfy.model_management
import comfy.samplers
from comfy_api.latest import io

from ..integration.calibrate import calibrate
from ..integration.install import apply_plan
from ..integration.sampling import sample_latent
from ..plans.calibrator import parse_indices
from ..kernels.dispatch import PRECISIONS
from ..plans.candidates import MENUS
from ..plans.format import PlanError
from ..plans.step_ranges import CHOICES as STEP_RANGE_CHOICES
from ..plans.validation import MAX_PROBES, check_plan_name
from . import plan_files
from .plan_files import register_plan_folder
from .types import PLAN_OUTPUT_TOOLTIP, STEP_RANGES_TOOLTIP, PlanType


class SparseVDiTCalibrate(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SparseVDiTCalibrate",
            display_name="Sparse-vDiT Calibrate",
            category="model_patches/sparse_vdit",
            description="Use it in place of the KSampler, once per model and resolution, to make a plan for your "
                        "model with settings you choose (the Patch node's 'auto' does the same with defaults). It "
                        "samples with dense attention (a normal video comes out, about 1.35x the time of a dense run) "
                        "while scoring, per layer and head, every candidate pattern against dense at a few steps; "
                        "writes the plan and its statistics to models/sparse_vdit_plans and outputs the model "
                        "patched with it.",
            inputs=[
                io.Model.Input("model", tooltip="The video model to calibrate for (as the KSampler would get it)."),
                io.Conditioning.Input("positive", tooltip="As in the KSampler: a typical prompt for your videos."),
                io.Conditioning.Input("negative", tooltip="As in the KSampler."),
                io.Latent.Input("latent_image", tooltip="As in the KSampler: calibrate at the resolution and length "
                                                        "you will generate at (the plan is made for that grid)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="As in the KSampler."),
                io.Int.Input("steps", default=20, min=1, max=10000, tooltip="As in the KSampler."),
                io.Float.Input("cfg", default=6.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="As in the KSampler."),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, tooltip="As in the KSampler."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, tooltip="As in the KSampler."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01, tooltip="As in the KSampler."),
                io.Float.Input("lambda_cost", default=0.5, min=0.0, max=10.0, step=0.05,
                               tooltip="Weight of a pattern's cost against its error: higher favours cheaper patterns."),
                io.Float.Input("epsilon", default=1.0, min=0.0, max=100.0, step=0.1,
                               tooltip="Error budget: 1 lets a head's error power reach 1% of its layer's output "
                                       "power. Larger is sparser and faster."),
                io.Int.Input("probe_steps", default=3, min=1, max=50, tooltip="How many steps (after the warm-up) are scored."),
                io.Float.Input("query_fraction", default=0.1, min=0.01, max=1.0, step=0.01,
                               tooltip="Share of query blocks scored per call."),
                io.String.Input("plan_name", default="my_calibrated_plan",
                                tooltip="File name of the plan (and of its .stats.safetensors) in "
                                        "models/sparse_vdit_plans; a plan of that name is replaced."),
                io.Combo.Input("candidate_menu", options=list(MENUS), default="standard", optional=True,
                               tooltip="The patterns scored per head. standard: skip, diagonals, multi-diagonals, "
                                       "vertical stripes (the paper's modes); wide adds more sizes (longer "
                                       "calibration); extended / extended-wide add 3-D windows and routed heads "
                                       "(experimental: not yet shown to improve videos)."),
                io.Float.Input("dense_warmup", default=0.2, min=0.0, max=0.95, step=0.05, optional=True,
                               tooltip="Fraction of steps the plan keeps dense; probes start after it."),
                io.Combo.Input("step_ranges", options=list(STEP_RANGE_CHOICES), default="auto", optional=True,
                               tooltip=STEP_RANGES_TOOLTIP),
                io.String.Input("probe_at_steps", default="", optional=True,
                                tooltip="Empty: probe_steps steps spread after the warm-up. Or the sampling steps to "
                                        "score, counted from 0, such as 4, 10, 16 (then probe_steps is ignored)."),
                io.String.Input("probe_layers", default="all", optional=True,
                                tooltip="all, or the layers to score, counted from 0, such as 0-9, 20. Layers not "
                                        "scored stay dense (full) in the plan."),
                io.Combo.Input("precision", options=list(PRECISIONS), default="bf16", optional=True,
                               tooltip="The precision the plan will run at: the cost of each pattern is measured "
                                       "at it, and the MODEL output is patched with it. At 8-bit and auto, routed "
                                       "heads come without the pooled tail (the 8-bit kernel has none)."),
            ],
            outputs=[io.Model.Output(display_name="MODEL", tooltip="The model patched with the new plan."),
                     PlanType.Output(display_name="PLAN", tooltip=PLAN_OUTPUT_TOOLTIP),
                     io.Latent.Output(display_name="LATENT", tooltip="The dense result of the calibration run: "
                                                                     "decode it as usual.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent_image, seed, steps, cfg, sampler_name, scheduler, denoise,
                lambda_cost, epsilon, probe_steps, query_fraction, plan_name, candidate_menu="standard",
                dense_warmup=0.2, step_ranges="auto", probe_at_steps="", probe_layers="all",
                precision="bf16") -> io.NodeOutput:
        register_plan_folder()
        check_plan_name(plan_name)  # before minutes of sampling: the files must be writable under it
        probes = parse_indices(probe_at_steps, steps, "probe steps")
        if len(probes or ()) > MAX_PROBES:
            raise PlanError(f"{len(probes)} probe steps; at most {MAX_PROBES} (their statistics would not load)")

        def sample(hooked):
            return sample_latent(hooked, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise)

        settings = {"seed": seed, "steps": steps, "cfg": cfg, "sampler": sampler_name, "scheduler": scheduler,
                    "denoise": denoise}
        result = calibrate(model, sample, plan_name=plan_name, folder=plan_files.user_plans_dir(), lam=lambda_cost,
                           eps=epsilon, probe_steps=probe_steps, query_fraction=query_fraction, menu=candidate_menu,
                           warmup=dense_warmup, step_ranges=step_ranges, settings=settings,
                           probe_at=probe_at_steps, probe_layers=probe_layers, steps=steps,
                           check_interrupt=comfy.model_management.throw_exception_if_processing_interrupted,
                           cost_cache=None, precision=precision)
        return io.NodeOutput(apply_plan(model, result.plan, precision=precision), result.plan, result.samples)
