"""The plan picture: every cell of every step range shows its head's mode."""
from dataclasses import replace

import pytest

pytest.importorskip("PIL", reason="the plan picture needs Pillow (pip install -e .[test] brings it)")

from sparse_vdit.patterns import Diagonal, Full, LayerPattern, MultiDiagonal, Skip, VerticalStripe  # noqa: E402
from sparse_vdit.plans.format import DenseSchedule, ModelShape, Plan, StepRange  # noqa: E402
from sparse_vdit.plans.preview import COLOURS, grid_layout, render_plan  # noqa: E402

FIRST = (LayerPattern((Diagonal(1), Full(), VerticalStripe((0,)))), LayerPattern((Skip(), MultiDiagonal(1), Full())))
LATER = (LayerPattern((Full(), Full(), Skip())), LayerPattern((Diagonal(0), VerticalStripe((0,)), MultiDiagonal(1))))
PLAN = Plan("preview test", ModelShape("wan", 2, 3, 64), FIRST, DenseSchedule(0.2), {"kind": "static-baseline"})


def cell_colours(image, plan):
    layout = grid_layout(plan)
    centre = layout.cell // 2 - 1
    return [[[image.getpixel((x + centre, y + centre)) for x, y in
              (layout.cell_origin(r, l, h) for h in range(plan.model.heads))] for l in range(plan.model.layers)]
            for r in range(len(plan.step_ranges))]


def expected_colours(*ranges):
    return [[[COLOURS[p.name] for p in layer.heads] for layer in layers] for layers in ranges]


def test_one_range_draws_one_grid():
    image = render_plan(PLAN)
    assert cell_colours(image, PLAN) == expected_colours(FIRST)


def test_each_step_range_gets_its_own_grid():
    ranged = replace(PLAN, later_ranges=(StepRange(0.6, LATER),))
    image = render_plan(ranged)
    assert cell_colours(image, ranged) == expected_colours(FIRST, LATER)
    assert image.width >= grid_layout(ranged).left + 2 * grid_layout(ranged).panel_w


def test_attention_maps_only_from_scored_layers():
    from types import SimpleNamespace

    import torch

    from sparse_vdit.plans.preview import thumbnail_picks

    stats = SimpleNamespace(thumbnails=torch.rand(2, 3, 32, 64).half(), info={"probed_layers": [1]})
    picks = dict(thumbnail_picks(PLAN, stats, 3))
    assert picks == {"skip": [(1, 0)], "multi_diagonal": [(1, 1)], "full": [(1, 2)]}
    stats.info["probed_layers"] = "all"
    assert dict(thumbnail_picks(PLAN, stats, 3))["full"] == [(0, 1), (1, 2)]
    assert render_plan(PLAN, stats).height > render_plan(PLAN).height  # the maps are drawn


def test_a_long_header_wraps_inside_the_picture_and_the_grid_moves_down():
    from PIL import Image, ImageDraw, ImageFont

    from sparse_vdit.plans.preview import plan_header

    long = replace(PLAN, name="a plan with a very long name " * 8, later_ranges=(StepRange(0.4, LATER), StepRange(0.7, FIRST)))
    image = render_plan(long)
    header = plan_header(long)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength
    font = ImageFont.load_default()
    assert len(header.lines) > 2
    assert all(8 + measure(line, font=font) <= image.width for line in header.lines)
    assert all(x + 14 + measure(label, font=font) <= image.width for row in header.legend for _, label, x in row)
    assert grid_layout(long).top > grid_layout(PLAN).top
    assert cell_colours(image, long) == expected_colours(FIRST, LATER, FIRST)



def test_a_name_without_spaces_is_cut_to_the_width():
    from sparse_vdit.plans.preview import wrap

    lines = wrap("short " + "x" * 50 + " end", 20, len)
    assert lines == ["short", "x" * 20, "x" * 20, "x" * 10 + " end"]
    assert all(len(line) <= 20 for line in wrap("y" * 95, 20, len))


def test_a_layer_with_every_head_skipped_reads_skip():
    from sparse_vdit.plans.preview import speedup_text

    assert speedup_text(0.0) == "skip" and speedup_text(0.25) == "4.0x"
    skipped = replace(PLAN, layers=(LayerPattern((Skip(),) * 3), FIRST[1]))
    image = render_plan(skipped)  # drawn, the skipped layer's label "d 0.00  skip" inside its panel
    assert cell_colours(image, skipped)[0][0] == [COLOURS["skip"]] * 3
