"""The hook a calibration run installs: every call runs dense (the run still
yields a normal video), and at the probed steps each video self-attention
call is also handed to the calibrator."""
from __future__ import annotations

from ..kernels.dispatch import as_blhd
from ..plans.calibrator import Calibrator
from .forward_info import ForwardInfo
from .model_info import ModelInfo
from .video_hook import VideoAttentionHook, call_layout


def observe(hook: VideoAttentionHook, calibrator: Calibrator, call: dict, layer: int, info: ForwardInfo) -> None:
    """Hand a video self-attention call to the calibrator if its step is probed."""
    probe = calibrator.probe_index(info.step, info.total_steps)
    if probe is None or not calibrator.probes_layer(layer):
        hook.count("dense")
        return
    geometry, qkv = hook.kept_tokens(call)
    if not calibrator.accepts(geometry):
        hook.log_once("geometry", "calibration keeps the first latent grid; %s is not scored.", geometry.describe())
        return
    layout, heads = call_layout(call), int(call["heads"])
    calibrator.record(probe, layer, *(as_blhd(x, layout, heads) for x in qkv), geometry=geometry)
    hook.count("scored")


class CalibrationHook(VideoAttentionHook):
    def __init__(self, model: ModelInfo, calibrator: Calibrator, previous=None):
        super().__init__(model, previous)
        self.calibrator = calibrator

    def handle(self, func, call: dict, layer: int, info: ForwardInfo, args, kwargs):
        out = self.chain(func, args, kwargs, info)
        observe(self, self.calibrator, call, layer, info)
        return out
