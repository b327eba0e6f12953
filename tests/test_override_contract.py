"""What ComfyUI's attention wrapper expects of an override.

ComfyUI 0.38's wrap_attn passes q/k/v as tensor containers to an override
that has a `container_function` attribute, and calls that attribute instead
of the override; an override without one receives plain tensors. The
pack's overrides take plain tensors, so none may grow that attribute (nor a
__getattr__ that would answer for it)."""
from sparse_vdit.integration.calibration_hook import CalibrationHook
from sparse_vdit.integration.sparse_patch import SparsePatch
from sparse_vdit.integration.video_hook import VideoAttentionHook


def test_hooks_take_plain_tensors():
    for cls in (VideoAttentionHook, SparsePatch, CalibrationHook):
        assert not hasattr(cls, "container_function"), cls
        assert not hasattr(cls, "__getattr__"), cls
