"""The plans folder ComfyUI knows about: models/sparse_vdit_plans (the
user's, where calibration writes) plus the plans shipped in this pack."""
from __future__ import annotations

import os

import folder_paths

from ..plans.format import Plan, PlanError, load_plan

FOLDER = "sparse_vdit_plans"
EXTENSIONS = {".json"}
SHIPPED_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "plans")


def user_plans_dir() -> str:
    return os.path.join(folder_paths.models_dir, FOLDER)


def register_plan_folder() -> None:
    """Register (or extend) the folder with a JSON-only extension set; an
    extra_model_paths.yaml entry for it is kept."""
    paths, _ = folder_paths.folder_names_and_paths.get(FOLDER, ([], set()))
    paths = list(paths)
    for path in (user_plans_dir(), SHIPPED_DIR):
        if path not in paths:
            paths.append(path)
    folder_paths.folder_names_and_paths[FOLDER] = (paths, set(EXTENSIONS))


def plan_names() -> list[str]:
    register_plan_folder()
    return sorted(folder_paths.get_filename_list(FOLDER))


def load_named_plan(name: str) -> Plan:
    register_plan_folder()
    path = folder_paths.get_full_path(FOLDER, name)
    if path is None:
        raise PlanError(f"no plan named '{name}' in {', '.join(folder_paths.get_folder_paths(FOLDER))}")
    return load_plan(path)
