"""Static baseline plans: a fixed mix of patterns, not calibrated on any
model. They let a user try the pack at once; a calibrated plan for their
own model should replace them. The shipped JSON files are this function's
output (tests/test_shipped_plans.py checks they still are)."""
from __future__ import annotations

from .. import __version__
from ..patterns import Diagonal, Full, LayerPattern, MultiDiagonal, VerticalStripe
from .format import DenseSchedule, ModelShape, Plan
from .shipped import SHIPPED  # noqa: F401  (the table lives apart: file-name checks import it)

# Per head, cycling: mostly local and same-place-in-other-frames heads, a few
# global-column heads and a few dense ones, the mix the method reports. No
# head is skipped: skipping is only safe where calibration measured it.
_CYCLE = (Diagonal(3), MultiDiagonal(1), Diagonal(3), MultiDiagonal(1), Full(),
          Diagonal(3), MultiDiagonal(1), VerticalStripe((0,)), Diagonal(3), MultiDiagonal(1))
_DENSE_LAYERS_FIRST, _DENSE_LAYERS_LAST = 2, 1



def static_baseline_plan(family: str, layers: int, heads: int, head_dim: int, warmup: float = 0.2) -> Plan:
    plan_layers = []
    for index in range(layers):
        if index < _DENSE_LAYERS_FIRST or index >= layers - _DENSE_LAYERS_LAST:
            plan_layers.append(LayerPattern((Full(),) * heads))
        else:
            plan_layers.append(LayerPattern(tuple(_CYCLE[(index + h) % len(_CYCLE)] for h in range(heads))))
    provenance = {"kind": "static-baseline", "software": f"sparse-vdit {__version__}",
                  "note": "Not calibrated on any model: a fixed pattern mix. Calibrate for your model."}
    return Plan(f"{family} static baseline", ModelShape(family, layers, heads, head_dim), tuple(plan_layers),
                DenseSchedule(warmup), provenance)


def write_shipped(folder: str) -> None:
    import os

    from .format import save_plan
    for filename, shape in SHIPPED.items():
        save_plan(static_baseline_plan(*shape), os.path.join(folder, filename))


if __name__ == "__main__":  # python -m sparse_vdit.plans.static
    import os
    write_shipped(os.path.dirname(os.path.abspath(__file__)))
