"""The static baseline plans shipped in plans/: file name -> (family,
layers, heads, head_dim). Kept apart from the generator (static.py) so the
file-name checks can read it without importing the plan format."""

SHIPPED = {
    "wan2.1-1.3b_static-baseline.json": ("wan2.1 t2v 1.3b", 30, 12, 128),
    "wan2.1-14b_static-baseline.json": ("wan2.1/2.2 14b", 40, 40, 128),
    "wan2.2-ti2v-5b_static-baseline.json": ("wan2.2 ti2v 5b", 30, 24, 128),
    "hunyuanvideo-t2v_static-baseline.json": ("hunyuan_video t2v", 60, 24, 128),  # 20 double + 40 single blocks
    "cogvideox-2b_static-baseline.json": ("cogvideox 2b", 30, 30, 64),
    "cogvideox-5b_static-baseline.json": ("cogvideox 5b / 1.5 5b", 42, 48, 64),
    "kandinsky5-lite_static-baseline.json": ("kandinsky5 lite video", 32, 14, 128),
}
