"""A picture of a plan a person can read at a glance: the layer x head grid
coloured by mode, density and block speedup per layer, and (with
calibration statistics) small attention maps of a few heads of each mode."""
from __future__ import annotations

from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from ..patterns import Geometry, LayerPattern, Pattern, compile_layer
from .describe import mode_counts
from .format import Plan
from .statistics import Statistics

COLOURS = {"full": (150, 150, 150), "skip": (25, 25, 25), "diagonal": (60, 120, 220),
           "multi_diagonal": (60, 180, 90), "vertical_stripe": (235, 150, 40), "window_3d": (170, 80, 200),
           "routed": (220, 60, 90)}
DEFAULT_GEOMETRY = Geometry(21, 30, 52)  # Wan2.1 480p, 81 frames
# Densities are computed on the grid rows (frames x rows); past this many
# the picture uses fewer frames (said on it), so a plan claiming a huge
# video cannot make the preview take minutes. 1080p, 81 frames: 21 x 68.
PREVIEW_GRID_ROWS = 1536
PREVIEW_PATTERNS = 256  # distinct sparse patterns a picture computes densities for
BACKGROUND, INK = (255, 255, 255), (20, 20, 20)


def plan_geometry(plan: Plan) -> Geometry:
    """The plan's own geometry (checked on load), else Wan2.1 480p."""
    from .validation import geometry

    data = plan.provenance.get("geometry")
    return geometry(data, f"plan '{plan.name}': provenance.geometry") if isinstance(data, dict) else DEFAULT_GEOMETRY


def drawn_geometry(geometry: Geometry) -> Geometry:
    """The geometry densities are computed at: the plan's, with fewer frames when it is too large."""
    if geometry.frames * geometry.rows <= PREVIEW_GRID_ROWS:
        return geometry
    frames = max(1, PREVIEW_GRID_ROWS // geometry.rows)
    rows = min(geometry.rows, PREVIEW_GRID_ROWS)
    return Geometry(frames, rows, geometry.cols, geometry.prefix, geometry.suffix)


def layer_densities(layers: tuple[LayerPattern, ...], geometry: Geometry,
                    cache: dict[Pattern, float]) -> list[float]:
    """Share of (query, key) pairs each layer computes: the mean of its
    heads', each pattern's computed once (plans repeat a few patterns)."""
    from .validation import PlanError

    densities = []
    for layer in layers:
        for pattern in layer.heads:
            if pattern not in cache:
                if len(cache) >= PREVIEW_PATTERNS:
                    raise PlanError(f"the plan has more than {PREVIEW_PATTERNS} different patterns: too many to draw")
                cache[pattern] = compile_layer(LayerPattern((pattern,)), geometry).density()
        densities.append(sum(cache[p] for p in layer.heads) / len(layer.heads))
    return densities


def _range_title(plan: Plan, index: int) -> str:
    ranges = plan.step_ranges
    end = f"{100 * ranges[index + 1].start:.0f}%" if index + 1 < len(ranges) else "end"
    return f"steps {100 * ranges[index].start:.0f}% - {end}"


def speedup_text(density: float) -> str:
    """'4.2x', or 'skip' where nothing is computed (a layer whose heads are all skipped)."""
    return f"{1 / density:.1f}x" if density > 0 else "skip"


@dataclass(frozen=True)
class GridLayout:
    """Where the cells are: head h of layer l in panel (step range) r has its
    top-left corner at (left + r * panel_w + h * cell, top + l * cell)."""
    cell: int
    left: int
    top: int
    panel_w: int

    def cell_origin(self, r: int, l: int, h: int) -> tuple[int, int]:
        return self.left + r * self.panel_w + h * self.cell, self.top + l * self.cell


@dataclass(frozen=True)
class Header:
    """The text above the grid, wrapped to the picture's width: lines, then
    legend rows of (mode, label, x)."""
    lines: list[str]
    legend: list[list[tuple[str, str, int]]]

    @property
    def height(self) -> int:
        return 6 + LINE_H * len(self.lines) + LINE_H * len(self.legend) + 10


LINE_H = 14  # px per line of the default font
LABEL_W = 96  # px for a layer's "d 0.05  20.0x" beside its bar (57 px in Pillow's default font)


def _panel_width(plan: Plan) -> tuple[int, int]:
    ranges, heads, layers = len(plan.step_ranges), plan.model.heads, plan.model.layers
    cell = max(6, min(24, 720 // max(heads * ranges, 1), 900 // max(layers, 1)))
    return cell, heads * cell + 12 + 64 + LABEL_W


def wrap(text: str, width: int, measure) -> list[str]:
    """Words onto lines no wider than `width`; a word longer than a line is cut."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and measure(lines[-1] + " " + word) <= width:
            lines[-1] += " " + word
            continue
        while len(word) > 1 and measure(word) > width:  # a long name without spaces
            cut = 1
            while cut < len(word) and measure(word[:cut + 1]) <= width:
                cut += 1
            lines.append(word[:cut])
            word = word[cut:]
        lines.append(word)
    return lines


def plan_header(plan: Plan, mean_density: float | None = None) -> Header:
    """The title, the summary and the legend, wrapped to the grid's width."""
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength
    own = plan_geometry(plan)
    geometry = drawn_geometry(own)
    if mean_density is None and len(plan.step_ranges) == 1:
        mean_density = sum(layer_densities(plan.layers, geometry, {})) / plan.model.layers
    kind = plan.provenance.get("kind", "?")
    if len(plan.step_ranges) > 1:
        summary = f"{kind}; at {geometry.describe()}; {plan.describe_step_ranges()}; the legend counts heads over all ranges"
    else:
        summary = (f"{kind}; at {geometry.describe()}: mean density {mean_density:.3f}, block speedup "
                   f"{speedup_text(mean_density)}")
    if geometry != own:
        summary += f" (the plan's {own.describe()} is too large to draw: fewer frames)"
    _, panel_w = _panel_width(plan)
    width = max(44 + len(plan.step_ranges) * panel_w, 560) - 16
    lines = [line for text in (f"{plan.name}  |  {plan.model.describe()}", summary)
             for line in wrap(text, width, lambda t: measure(t, font=font))]
    counts = mode_counts(plan)
    legend: list[list[tuple[str, str, int]]] = [[]]
    x = 8
    for mode in COLOURS:
        label = f"{mode} {counts.get(mode, 0)}"
        item_w = 24 + int(measure(label, font=font))
        if legend[-1] and x + item_w > width + 8:
            legend.append([])
            x = 8
        legend[-1].append((mode, label, x))
        x += item_w
    return Header(lines, legend)


def grid_layout(plan: Plan, header: Header | None = None) -> GridLayout:
    header = header or plan_header(plan)
    cell, panel_w = _panel_width(plan)
    return GridLayout(cell, 44, header.height + (14 if len(plan.step_ranges) > 1 else 0), panel_w)


def thumbnail_picks(plan: Plan, stats: Statistics | None, per_mode: int) -> list[tuple[str, list[tuple[int, int]]]]:
    """(mode, [(layer, head), ...]) for the attention maps to draw: up to
    per_mode heads of each mode of the first range (the maps come from the
    first probed step), spread over the layers; never a layer not scored."""
    shape = (plan.model.layers, plan.model.heads)
    if stats is None or not stats.thumbnails.numel() or tuple(stats.thumbnails.shape[:2]) != shape:
        return []  # no maps, or maps of another model
    probed = stats.info.get("probed_layers", "all")
    rows = []
    for mode in COLOURS:
        found = [(l, h) for l, layer in enumerate(plan.layers) for h, p in enumerate(layer.heads)
                 if p.name == mode and (probed == "all" or l in probed)]
        if found:
            rows.append((mode, found[::max(1, len(found) // per_mode)][:per_mode]))
    return rows


def render_plan(plan: Plan, stats: Statistics | None = None, thumbs_per_mode: int = 3) -> Image.Image:
    """One panel per step range (most plans have one), side by side."""
    font = ImageFont.load_default()
    geometry = drawn_geometry(plan_geometry(plan))
    layers, heads, ranges = plan.model.layers, plan.model.heads, plan.step_ranges
    cache: dict[Pattern, float] = {}
    densities = [layer_densities(r.layers, geometry, cache) for r in ranges]
    header = plan_header(plan, sum(densities[0]) / len(densities[0]))
    layout = grid_layout(plan, header)
    cell, left, top, panel_w = layout.cell, layout.left, layout.top, layout.panel_w
    grid_w, grid_h = heads * cell, layers * cell

    thumb_rows = thumbnail_picks(plan, stats, thumbs_per_mode)
    thumb_scale = 2
    th, tw = (stats.thumbnails.shape[-2] * thumb_scale, stats.thumbnails.shape[-1] * thumb_scale) if thumb_rows else (0, 0)
    thumbs_h = (len(thumb_rows) * (th + 18) + 24) if thumb_rows else 0

    width = max(left + len(ranges) * panel_w, 560, left + thumbs_per_mode * (tw + 10) + 120)
    height = top + grid_h + 30 + thumbs_h
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)

    y = 6
    for line in header.lines:
        draw.text((8, y), line, fill=INK, font=font)
        y += LINE_H
    for row in header.legend:
        for mode, label, x in row:
            draw.rectangle([x, y + 2, x + 10, y + 12], fill=COLOURS[mode], outline=INK)
            draw.text((x + 14, y + 1), label, fill=INK, font=font)
        y += LINE_H

    for r, step_range in enumerate(ranges):
        x_panel = left + r * panel_w
        if len(ranges) > 1:
            mean = sum(densities[r]) / len(densities[r])
            draw.text((x_panel, top - 16), f"{_range_title(plan, r)}: density {mean:.2f}, {speedup_text(mean)}",
                      fill=INK, font=font)
        for l, layer in enumerate(step_range.layers):
            y = top + l * cell
            if r == 0 and (cell >= 10 or l % 5 == 0):
                draw.text((4, y + max(0, cell // 2 - 6)), f"{l:>3}", fill=INK, font=font)
            for h, pattern in enumerate(layer.heads):
                x0, y = layout.cell_origin(r, l, h)
                draw.rectangle([x0, y, x0 + cell - 2, y + cell - 2], fill=COLOURS.get(pattern.name, (255, 0, 255)))
            bar_x = x_panel + grid_w + 12
            density = densities[r][l]
            draw.rectangle([bar_x, y + 1, bar_x + int(60 * density), y + cell - 3], fill=(120, 120, 200))
            if cell >= 10 or l % 5 == 0:
                draw.text((bar_x + 64, y + max(0, cell // 2 - 6)), f"d {density:.2f}  {speedup_text(density)}",
                          fill=INK, font=font)
    draw.text((left, top + grid_h + 6), "heads ->", fill=INK, font=font)
    y = top + grid_h + 30
    if thumb_rows:
        draw.text((8, y), "attention maps (sampled queries x keys, calibration)", fill=INK, font=font)
        y += 16
        for mode, picks in thumb_rows:
            draw.text((8, y + th // 2 - 6), mode, fill=COLOURS[mode], font=font)
            for i, (l, h) in enumerate(picks):
                values = stats.thumbnails[l, h].float().clamp(0, 1).pow(0.5)  # sqrt: faint structure shows
                tile = Image.fromarray((255 - values * 255).byte().numpy(), mode="L").resize((tw, th), Image.NEAREST)
                x0 = 120 + i * (tw + 10)
                image.paste(tile.convert("RGB"), (x0, y))
                draw.text((x0, y + th + 1), f"L{l} H{h}", fill=INK, font=font)
            y += th + 18
    return image
