"""The folders ComfyUI knows about: models/sparse_vdit_plans (the user's,
where calibration writes) plus the plans shipped in this pack. Plans are
JSON; calibration statistics are .safetensors in the same folders.

A bad file never breaks a node that does not use it: listings leave out
hidden files and write temporaries, and a node that loads a bad file says
which file to fix or delete."""
from __future__ import annotations

import logging
import os

import folder_paths

from ..plans.atomic import is_temporary, remove_stale_temporaries
from ..plans.format import Plan, PlanError, load_plan
from ..plans.static import SHIPPED
from ..plans.statistics import Statistics, load_statistics
from ..plans.validation import check_plan_name as _check_name

FOLDER = "sparse_vdit_plans"
STATS_FOLDER = "sparse_vdit_statistics"
EXTENSIONS = {FOLDER: {".json"}, STATS_FOLDER: {".safetensors"}}
SHIPPED_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "plans")
FIX_HINT = "fix or delete that file"
log = logging.getLogger("sparse_vdit")


def _naming(error: PlanError, path: str) -> PlanError:
    """The error, saying which file to fix or delete."""
    where = "" if path in str(error) else f": {path}"
    return PlanError(f"{error} ({FIX_HINT}{where})")


_cleaned: set[str] = set()  # folders whose stale write temporaries were removed by this process


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
    folder = user_plans_dir()
    if folder not in _cleaned:  # once per start: the folder a user drops plans into, and what a killed write left
        _cleaned.add(folder)
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as error:  # a read-only models folder: listing still works, calibration says why on write
            log.warning("Sparse-vDiT: cannot create the plans folder %s: %s", folder, error)
        remove_stale_temporaries(folder)



def plan_names() -> list[str]:
    register_plan_folder()
    return sorted(name for name in folder_paths.get_filename_list(FOLDER) if not is_temporary(name))


def statistics_names() -> list[str]:
    register_plan_folder()
    return sorted(name for name in folder_paths.get_filename_list(STATS_FOLDER) if not is_temporary(name))


def _full_path(folder: str, name: str, what: str) -> str:
    register_plan_folder()
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        raise PlanError(f"no {what} named '{name}' in {', '.join(folder_paths.get_folder_paths(folder))}")
    return path


def load_named_plan(name: str) -> Plan:
    """The plan a node was given by name; a bad file's error says to fix or delete it."""
    path = _full_path(FOLDER, name, "plan")
    try:
        return load_plan(path)
    except PlanError as error:
        raise _naming(error, path) from None


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


def statistics_present(plan: Plan) -> bool | None:
    """Whether the statistics file a plan names is in the folders (None: it names none)."""
    name = plan.provenance.get("statistics")
    if not isinstance(name, str) or not name:
        return None
    register_plan_folder()
    return not is_temporary(name) and folder_paths.get_full_path(STATS_FOLDER, name) is not None


def unused_plan_name(name: str) -> str:
    """`name`, or `name_2`, `name_3`, ... : the first that no plan in the
    folders and no file in the user's folder has (a new solve never
    overwrites a plan)."""
    taken = {n.lower() for n in plan_names()}
    folder = user_plans_dir()
    candidate, number = name, 1
    while (candidate + ".json").lower() in taken or os.path.exists(os.path.join(folder, candidate + ".json")):
        number += 1
        candidate = _check_name(f"{name}_{number}")
    return candidate


def load_named_statistics(name: str) -> Statistics:
    path = _full_path(STATS_FOLDER, name, "statistics file")
    try:
        return load_statistics(path)
    except PlanError as error:
        raise _naming(error, path) from None


def find_statistics(name: str) -> Statistics | None:
    """The statistics a plan names, if they are in the folders; a bad file
    raises PlanError naming it."""
    register_plan_folder()
    if not name or is_temporary(name):
        return None
    path = folder_paths.get_full_path(STATS_FOLDER, name)
    if path is None:
        return None
    try:
        return load_statistics(path)
    except PlanError as error:
        raise _naming(error, path) from None
