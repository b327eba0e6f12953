"""The folders ComfyUI knows about: models/sparse_vdit_plans (the user's,
where calibration writes) plus the plans shipped in this pack. Plans are
JSON; calibration statistics are .safetensors in the same folders."""
from __future__ import annotations

import os

import folder_paths

from ..plans.format import Plan, PlanError, load_plan
from ..plans.statistics import Statistics, load_statistics

FOLDER = "sparse_vdit_plans"
STATS_FOLDER = "sparse_vdit_statistics"
EXTENSIONS = {FOLDER: {".json"}, STATS_FOLDER: {".safetensors"}}
SHIPPED_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "plans")


def user_plans_dir() -> str:
    return os.path.join(folder_paths.models_dir, FOLDER)


def register_plan_folder() -> None:
    """Register (or extend) both folders with explicit extension sets; an
    extra_model_paths.yaml entry for them is kept."""
    for name, extensions in EXTENSIONS.items():
        paths, _ = folder_paths.folder_names_and_paths.get(name, ([], set()))
        paths = list(paths)
        for path in (user_plans_dir(), SHIPPED_DIR):
            if path not in paths:
                paths.append(path)
        folder_paths.folder_names_and_paths[name] = (paths, set(extensions))


def plan_names() -> list[str]:
    register_plan_folder()
    return sorted(folder_paths.get_filename_list(FOLDER))


def statistics_names() -> list[str]:
    register_plan_folder()
    return sorted(folder_paths.get_filename_list(STATS_FOLDER))


def _full_path(folder: str, name: str, what: str) -> str:
    register_plan_folder()
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        raise PlanError(f"no {what} named '{name}' in {', '.join(folder_paths.get_folder_paths(folder))}")
    return path


def load_named_plan(name: str) -> Plan:
    return load_plan(_full_path(FOLDER, name, "plan"))


def plans_fitting(layers: int, heads: int, head_dim: int) -> list[str]:
    """Names of the plans in the folders whose model shape fits; unreadable
    files are left out (they say why when chosen)."""
    fitting = []
    for name in plan_names():
        try:
            model = load_named_plan(name).model
        except PlanError:
            continue
        if (model.layers, model.heads, model.head_dim) == (layers, heads, head_dim):
            fitting.append(name)
    return fitting


def load_named_statistics(name: str) -> Statistics:
    return load_statistics(_full_path(STATS_FOLDER, name, "statistics file"))


def find_statistics(name: str) -> Statistics | None:
    """The statistics a plan names, if they are in the folders."""
    register_plan_folder()
    path = folder_paths.get_full_path(STATS_FOLDER, name) if name else None
    return load_statistics(path) if path else None
