"""Sparse-vDiT → Raylight: put a plan on every Raylight worker.

Raylight (github komikndr/raylight) runs the model on Ray actors, one per
GPU; its workflows carry RAY_ACTORS instead of MODEL, so the Patch node
cannot reach the workers. This node sends the patch to each worker through
Raylight's own per-worker mechanism (`model_function_runner`), after the
loader's load-time patches. Without Raylight it passes its input through
and says why.
"""
from __future__ import annotations

import logging
import os

from comfy_api.latest import io

from ..integration.auto_patch import AUTO
from ..integration.sparse_patch import BACKENDS
from ..parallel.balance import BALANCE_MODES, balance_mode
from ..plans.format import dumps_plan
from . import plan_files
from .plan_files import load_named_plan, plan_names, register_plan_folder

log = logging.getLogger("sparse_vdit")
RayActors = io.Custom("RAY_ACTORS")
PACK_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_RAYLIGHT = ("Sparse-vDiT → Raylight: Ray is not installed here, so there are no Raylight workers to patch; "
               "the input passes through unchanged. For one GPU use the Sparse-vDiT Patch node on the MODEL link.")


def send_to_workers(ray, workers, *payload) -> None:
    """Run worker_entry.install_on_worker on every worker's model and wait."""
    from ..parallel import worker_entry

    cloudpickle = getattr(ray, "cloudpickle", None)
    if cloudpickle is not None and hasattr(cloudpickle, "register_pickle_by_value"):
        # the workers may not know this pack under the module name ComfyUI gave it here
        cloudpickle.register_pickle_by_value(worker_entry)
    ray.get([actor.model_function_runner.remote(worker_entry.install_on_worker, *payload) for actor in workers])


class SparseVDiTRaylight(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SparseVDiTRaylight",
            display_name="Sparse-vDiT → Raylight",
            category="model_patches/sparse_vdit",
            description="Use it instead of the Patch node when the model runs across GPUs on Raylight workers: "
                        "puts a Sparse-vDiT plan on every Raylight worker (RAY_ACTORS in, RAY_ACTORS out). Put it "
                        "after the Ray UNet loader and its LoRA / model-sampling nodes, before the sampler. Under "
                        "Raylight's Ulysses each GPU runs its own heads' patterns; under CFG-parallel, data-parallel "
                        "and FSDP each GPU runs the plan as on one GPU.",
            inputs=[
                RayActors.Input("ray_actors", tooltip="The Raylight workers, from the Ray UNet loader (after its "
                                                      "LoRA and model-sampling nodes)."),
                io.Combo.Input("plan", options=[AUTO] + plan_names(),
                               tooltip="As in the Sparse-vDiT Patch node. auto serves saved auto plans; under "
                                       "Ulysses it cannot calibrate a new one (that run stays dense)."),
                io.Float.Input("dense_warmup", default=-1.0, min=-1.0, max=1.0, step=0.05,
                               tooltip="Fraction of the steps run dense first. -1 uses the plan's own setting."),
                io.Combo.Input("balance_heads", options=list(BALANCE_MODES), default="auto",
                               tooltip="Under Ulysses: permute a layer's heads in the all-to-all so every GPU gets "
                                       "about the same attention work (exact: the order is undone after). auto "
                                       "permutes a layer only where the predicted saving beats the modelled cost "
                                       "and the model's error; on wherever the head costs say it is better; off "
                                       "never."),
                io.Boolean.Input("enabled", default=True, tooltip="Off passes the workers through unchanged."),
                io.Combo.Input("backend", options=list(BACKENDS), default="auto", optional=True,
                               tooltip="As in the Sparse-vDiT Patch node: auto runs the Triton kernel on GPUs, "
                                       "dense where it cannot serve a call; reference is the exact torch path."),
            ],
            outputs=[RayActors.Output(display_name="ray_actors", tooltip="The same workers, each with the plan on "
                                                                         "its model.")],
        )

    @classmethod
    def execute(cls, ray_actors, plan: str, dense_warmup: float = -1.0, balance_heads: str = "auto",
                enabled: bool = True, backend: str = "auto") -> io.NodeOutput:
        balance_heads = balance_mode(balance_heads)  # also takes the earlier true / false
        if not enabled:
            return io.NodeOutput(ray_actors)
        try:
            import ray
        except ImportError:
            log.warning(NO_RAYLIGHT)
            return io.NodeOutput(ray_actors)
        workers = ray_actors.get("workers") if isinstance(ray_actors, dict) else None
        if not workers:
            log.warning("Sparse-vDiT → Raylight: the input holds no Raylight workers; it passes through unchanged.")
            return io.NodeOutput(ray_actors)
        if plan == AUTO:
            register_plan_folder()
            payload, folder = AUTO, plan_files.user_plans_dir()
        else:  # sent as JSON: the workers need not find the file
            payload, folder = dumps_plan(load_named_plan(plan)), None
        send_to_workers(ray, workers, PACK_ROOT, payload, folder, dense_warmup, backend, balance_heads)
        log.info("Sparse-vDiT → Raylight: plan '%s' on %d workers (head balancing %s).", plan, len(workers),
                 balance_heads)
        return io.NodeOutput(ray_actors)
