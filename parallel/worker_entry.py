"""The function the Raylight node sends to every worker (standard library
only: Ray pickles this module by value, so the worker need not import the
pack under the module name ComfyUI gave it on the driver)."""


def load_pack(pack_root):
    """The pack as the package `sparse_vdit`: installed, or from its folder."""
    import importlib
    import importlib.util
    import os
    import sys

    if "sparse_vdit" not in sys.modules:
        try:
            importlib.import_module("sparse_vdit")
        except ImportError:  # the pack as a ComfyUI custom node folder, not pip-installed
            spec = importlib.util.spec_from_file_location(
                "sparse_vdit", os.path.join(pack_root, "__init__.py"), submodule_search_locations=[pack_root])
            module = importlib.util.module_from_spec(spec)
            sys.modules["sparse_vdit"] = module
            spec.loader.exec_module(module)
    return sys.modules["sparse_vdit"]


def install_on_worker(model_patcher, pack_root, plan, folder, dense_warmup, backend, balance):
    import importlib

    load_pack(pack_root)
    raylight = importlib.import_module("sparse_vdit.parallel.raylight")
    return raylight.patch_worker(model_patcher, plan, folder, dense_warmup, backend, balance)
