"""Atomic file writes: a reader sees the old file or the new one, never half.

Temporaries are named ".tmp-<name>-<random>.partial": hidden, and with an
extension no folder listing looks for, so a process killed mid-write leaves
nothing a node would list or load; remove_stale_temporaries() clears them
on the next start.
"""
from __future__ import annotations

import os
import tempfile
import time
from typing import Callable

TMP_PREFIX, TMP_SUFFIX = ".tmp-", ".partial"
STALE_SECONDS = 600  # a temporary this old belongs to no write still going on


def _temporary_beside(path: str) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{os.path.basename(path)[:80]}-", suffix=TMP_SUFFIX, dir=folder)
    os.close(fd)
    _normal_mode(tmp)  # mkstemp makes 0600
    return tmp


def _normal_mode(path: str) -> None:
    """The mode a plain new file gets (0666 less the umask, 0644 usually)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Call write(tmp_path) on a temporary file beside `path`, then rename it
    over `path`. If write raises (or the process is interrupted) no file
    appears at `path` and the temporary is removed."""
    atomic_write_pair([(path, write)])


def atomic_write_pair(writes: list[tuple[str, Callable[[str], None]]]) -> None:
    """Write several files as one: every file is written to its temporary
    first; only when all succeeded are they renamed into place. If a rename
    fails, the files already renamed are put back as they were (a file that
    did not exist is removed), so the set is written whole or not at all."""
    temps: list[str] = []
    try:
        for path, write in writes:
            temps.append(_temporary_beside(path))
            write(temps[-1])
            _normal_mode(temps[-1])  # again: a writer may replace the file (safetensors' save_file makes it 0600)
        _rename_all([path for path, _ in writes], temps)
    finally:
        for tmp in temps:
            _remove(tmp)


def _rename_all(paths: list[str], temps: list[str]) -> None:
    backups: list[tuple[str, str | None]] = []  # (path, its old content moved aside, or None: was absent)
    try:
        for path, tmp in zip(paths, temps):
            backup = None
            if len(paths) > 1 and os.path.exists(path):
                backup = _temporary_beside(path)
                os.replace(path, backup)
            backups.append((path, backup))
            os.replace(tmp, path)
    except BaseException:
        for path, backup in reversed(backups):
            try:  # put back what can be put back, each file on its own
                if backup is None:
                    _remove(path)
                else:
                    os.replace(backup, path)
            except OSError:
                continue
        raise
    for _, backup in backups:
        if backup is not None:
            _remove(backup)


def atomic_write_text(path: str, text: str) -> None:
    atomic_write(path, text_writer(text))


def text_writer(text: str) -> Callable[[str], None]:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    return write


def is_temporary(name: str) -> bool:
    """A name (or relative path) that is an atomic write's temporary or any
    hidden file: never a plan to list."""
    return any(part.startswith(".") for part in name.replace("\\", "/").split("/"))


def remove_stale_temporaries(folder: str, now: float | None = None) -> list[str]:
    """Delete temporaries a killed process left in `folder` (this pack's
    current and earlier naming); returns the names removed."""
    now = time.time() if now is None else now
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        path = os.path.join(folder, name)
        try:
            if name.startswith(TMP_PREFIX) and os.path.isfile(path) and now - os.path.getmtime(path) > STALE_SECONDS:
                os.remove(path)
                removed.append(name)
        except OSError:  # gone already, or not ours to remove
            continue
    return removed
