"""Training checkpoints: everything a killed run needs to continue as if it had not stopped.

One file, `checkpoint.pt`, holding the fp32 adapter weights, the optimizer state, the
step, the random-number state, the best adapter so far, the history and the monitor's
state. The learning-rate schedule is a pure function of the step, so the step is its
whole state. The file is written to a temporary name, fsynced and renamed over the old
one: a kill at any moment leaves either the previous checkpoint or the new one, never a
torn file.

A checkpoint carries the fingerprint of what produced it (settings that change the
result, the base model, the starting adapter, the tokenized data); a run resumes only
from a checkpoint with its own fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

FILE = "checkpoint.pt"


def fingerprint(config_fields: dict, base_location: str, init_adapter: str | None, rows) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({"config": config_fields, "base": str(base_location),
                              "init_adapter": str(init_adapter) if init_adapter else None},
                             sort_keys=True, default=str).encode())
    for ids, labels in rows:
        digest.update(json.dumps([ids, labels]).encode())
    return digest.hexdigest()


def save(directory: Path, state: dict) -> Path:
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / FILE
    tmp = directory / (FILE + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(directory, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def load(directory: Path | None, expected_fingerprint: str) -> dict | None:
    """The checkpoint in `directory` if it was written by this same run, else None."""
    import torch

    if directory is None or not (directory / FILE).exists():
        return None
    try:
        state = torch.load(directory / FILE, map_location="cpu", weights_only=True)
    except Exception:  # unreadable (another torch version, a disk error): start over
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != expected_fingerprint:
        return None
    return state


def remove(directory: Path | None) -> None:
    if directory is None:
        return
    for name in (FILE, FILE + ".tmp"):
        (directory / name).unlink(missing_ok=True)
    try:
        directory.rmdir()
    except OSError:  # not empty (something else lives there) or already gone
        pass
