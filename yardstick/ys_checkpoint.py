"""Resumable training state in safetensors shards of at most 16 MiB each.

A checkpoint is a folder: ``index.json`` (the step, the run's settings and
which shard holds which tensor) and ``shard-NNNNN.safetensors`` files. A
tensor larger than a shard is cut into flat pieces. The folder is written
beside the old one and swapped in by renames, so an interrupted save leaves
the previous checkpoint whole.
"""
from __future__ import annotations

import json
import os
import shutil

import torch

SHARD_BYTES = 16 * 2 ** 20
INDEX = "index.json"


def _pieces(name: str, tensor: torch.Tensor, limit: int):
    flat = tensor.detach().to("cpu").contiguous().view(-1)
    per = max(1, limit // max(1, flat.element_size()))
    if flat.numel() <= per:
        yield name, flat.clone()
        return
    for i, start in enumerate(range(0, flat.numel(), per)):
        yield f"{name}@{i}", flat[start:start + per].clone()


def save_checkpoint(folder: str, tensors: dict[str, torch.Tensor], info: dict, limit: int = SHARD_BYTES) -> list[str]:
    """Write ``tensors`` (any names, any dtypes) and ``info`` (JSON) to ``folder``.

    Returns the shard paths. Each shard file stays under ``limit`` bytes of
    tensor data plus its small header."""
    from safetensors.torch import save_file

    tmp = folder + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    shapes = {name: [list(t.shape), str(t.dtype).removeprefix("torch.")] for name, t in tensors.items()}
    shards, current, used, where = [], {}, 0, {}

    def flush():
        nonlocal current, used
        if current:
            path = os.path.join(tmp, f"shard-{len(shards):05d}.safetensors")
            save_file(current, path)
            shards.append(os.path.basename(path))
            current, used = {}, 0

    for name, tensor in tensors.items():
        for piece_name, piece in _pieces(name, tensor, limit):
            size = piece.numel() * piece.element_size()
            if used + size > limit:
                flush()
            current[piece_name] = piece
            where[piece_name] = len(shards)
            used += size
    flush()
    index = {"info": info, "tensors": shapes, "shards": shards,
             "pieces": {name: shards[i] for name, i in where.items()}}
    with open(os.path.join(tmp, INDEX), "w") as f:
        json.dump(index, f)
    swap_in(tmp, folder)
    return [os.path.join(folder, s) for s in shards]


def swap_in(ready: str, folder: str) -> None:
    """Replace ``folder`` by the complete folder ``ready`` with renames: an
    interruption leaves the old folder or the new one (or the old one beside
    as ``folder.old``), never a half-written one."""
    old = folder + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.isdir(folder):
        os.rename(folder, old)
    os.rename(ready, folder)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(folder: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, info) as given to :func:`save_checkpoint`."""
    from safetensors.torch import load_file

    with open(os.path.join(folder, INDEX)) as f:
        index = json.load(f)
    loaded = {}
    for shard in index["shards"]:
        loaded.update(load_file(os.path.join(folder, shard)))
    tensors = {}
    for name, (shape, _dtype) in index["tensors"].items():
        if name in loaded:
            flat = loaded[name]
        else:
            parts = sorted((k for k in loaded if k.rsplit("@", 1)[0] == name), key=lambda k: int(k.rsplit("@", 1)[1]))
            flat = torch.cat([loaded[k] for k in parts])
        tensors[name] = flat.view(shape)
    return tensors, index["info"]


def has_checkpoint(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, INDEX))
