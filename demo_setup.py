"""What `python -m sparse_vdit demo` needs settled before any work: which
ComfyUI to use (given, $COMFYUI_PATH, or the one this pack sits in as a
custom node), whether its Python packages are here, where the picture goes,
and the device and grid asked for. Each problem is one clear sentence
(DemoError), never a traceback."""
from __future__ import annotations

import importlib.util
import os
import tempfile

PACK_ROOT = os.path.dirname(os.path.abspath(__file__))
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# What importing ComfyUI's model code needs (module -> pip name); torch is
# checked by being here at all. torchvision is stubbed by the harness.
COMFY_MODULES = {"numpy": "numpy", "einops": "einops", "psutil": "psutil", "safetensors": "safetensors",
                 "scipy": "scipy", "torchsde": "torchsde", "tqdm": "tqdm", "PIL": "Pillow", "yaml": "pyyaml",
                 "av": "av"}


class DemoError(ValueError):
    """A command-line problem, said in one sentence."""


def is_comfyui(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "comfy", "model_management.py"))


def comfyui_around(pack_root: str = PACK_ROOT) -> str | None:
    """The ComfyUI whose custom_nodes folder holds this pack, if it does."""
    custom_nodes = os.path.dirname(os.path.abspath(pack_root))
    root = os.path.dirname(custom_nodes)
    return root if os.path.basename(custom_nodes) == "custom_nodes" and is_comfyui(root) else None


def find_comfyui(given: str | None, environ=os.environ, pack_root: str = PACK_ROOT) -> str | None:
    """--comfyui, else $COMFYUI_PATH, else the ComfyUI around the pack; a
    path that was named but is not a ComfyUI tree is an error naming it."""
    for source, path in (("--comfyui", given), ("COMFYUI_PATH", environ.get("COMFYUI_PATH", "").strip())):
        if path:
            if not is_comfyui(path):
                raise DemoError(f"{source} {path}: not a ComfyUI tree (no comfy/model_management.py there)")
            return os.path.abspath(path)
    return comfyui_around(pack_root)


def missing_packages(modules: dict[str, str] | None = None) -> list[str]:
    """pip names of the modules (default COMFY_MODULES) that are not importable here."""
    return [pip for module, pip in (modules or COMFY_MODULES).items() if importlib.util.find_spec(module) is None]


def missing_packages_error(comfyui: str, missing: list[str]) -> DemoError:
    requirements = os.path.join(comfyui, "requirements.txt")
    install = f"pip install -r {requirements}" if os.path.isfile(requirements) else f"pip install {' '.join(missing)}"
    return DemoError(f"ComfyUI at {comfyui} needs Python packages missing here: {', '.join(missing)}; "
                     f"install them with: {install}")


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder + os.sep)


def default_out(name: str, cwd: str | None = None, pack_root: str = PACK_ROOT) -> str:
    """./output/<name>; never inside the pack's repository: run from there,
    the output folder of the ComfyUI it sits in, else a temporary folder."""
    cwd = cwd or os.getcwd()
    if not _inside(cwd, pack_root):
        return os.path.join(cwd, "output", name)
    comfyui = comfyui_around(pack_root)
    folder = os.path.join(comfyui, "output") if comfyui else os.path.join(tempfile.gettempdir(), "sparse_vdit_demo")
    return os.path.join(folder, name)


def out_path(given: str | None, name: str, cwd: str | None = None) -> str:
    """The image file to write: --out (a file; an existing folder gets `name`
    in it), or the default. Checked before any work."""
    if not given:
        return default_out(name, cwd)
    path = os.path.join(given, name) if os.path.isdir(given) else given
    if not path.lower().endswith(IMAGE_SUFFIXES):
        raise DemoError(f"--out {given}: give an image file name ending in {', '.join(IMAGE_SUFFIXES)} (or a folder)")
    return os.path.abspath(path)


def parse_grid(text: str | None):
    """'frames,rows,cols' as a Geometry (None when not given)."""
    from .patterns import Geometry

    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise DemoError(f"--grid {text}: give three positive whole numbers, frames,rows,cols (such as 4,30,52)")
    return Geometry(*(int(p) for p in parts))


def check_device(device: str) -> str:
    """auto, cpu or cuda (the current GPU: choose another with CUDA_VISIBLE_DEVICES); cuda only where
    this torch has a GPU."""
    import torch

    if device not in ("auto", "cpu", "cuda"):
        raise DemoError(f"--device {device}: use auto, cpu or cuda (another GPU: CUDA_VISIBLE_DEVICES)")
    if device == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else "no usable CUDA GPU here"
        raise DemoError(f"--device cuda: torch {torch.__version__} has {build}; use --device cpu (or auto)")
    return device
