"""A model directory is written whole or not at all, and carries our JSON record beside the weights.

The files go into a sibling `.partial-<name>` directory first, which then replaces the old one by
rename, so a crash mid-save never leaves a half-written model under the real name. Shared by the
project's Hugging Face-format models (nodes/clip, nodes/shapes_vlm).
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

PARTIAL_PREFIX, OLD_PREFIX = ".partial-", ".old-"

DEVICE_AUTO = "auto"  # CUDA when present, else CPU


def write_model_dir(directory: str | Path, write: Callable[[Path], None], meta_file: str, record: dict[str, Any]) -> Path:
    """`write(partial_dir)` saves the model files; `record` goes to `meta_file`; then the swap."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    partial = directory.with_name(PARTIAL_PREFIX + directory.name)
    old = directory.with_name(OLD_PREFIX + directory.name)
    for leftover in (partial, old):
        shutil.rmtree(leftover, ignore_errors=True)
    write(partial)
    (partial / meta_file).write_text(json.dumps(record, indent=1))
    if directory.exists():
        os.replace(directory, old)
    os.replace(partial, directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def read_model_meta(directory: str | Path, meta_file: str) -> dict[str, Any]:
    """Our record of a model directory ({} for a checkpoint that is not one of ours)."""
    path = Path(directory) / meta_file
    return json.loads(path.read_text()) if path.is_file() else {}


def resolve_device(spec: str) -> Any:
    """A torch.device: "auto" is CUDA when present, else CPU; anything else is passed to torch.device."""
    import torch

    if spec == DEVICE_AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save beside `path`, then renamed into place: a run killed mid-save leaves the old file."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial_path = path.with_name(path.name + ".partial")
    torch.save(obj, partial_path)
    os.replace(partial_path, path)


def load_train_state(path: Path, resume: bool, state_format: str, what: str) -> dict[str, Any] | None:
    """A trainer's resumable state at `path` when `resume` asks for it (None to start afresh, also when
    there is none yet); a file of another format is an error naming `what` it should have been."""
    import torch

    if not resume:
        return None
    if not path.is_file():
        print(f"--resume: no {path} yet, starting from scratch")
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("format") != state_format:
        raise ValueError(f"{path} is not a {what} training state (format {state_format})")
    return state
