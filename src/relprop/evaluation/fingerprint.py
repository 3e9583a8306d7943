"""Fingerprints of what a run's results depend on besides its command line: the model's weights and
the data set's annotation files (images are not fingerprinted).

A resumed run compares them with those recorded when the run began and is refused when one changed,
so that records of two models or two versions of the annotations are never mixed. Files are
compared by size and modification time first and hashed only when those differ.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn as nn

MODEL = "model weights"


def model_digest(model: nn.Module) -> str:
    """SHA-256 of the model's state dict: every name, dtype, shape and byte of its parameters and buffers."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()


def _stamp(paths: list[Path]) -> str:
    """Digest of (path, size, mtime) of every file; a missing file counts as such."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            info = path.stat()
            digest.update(f"{path}|{info.st_size}|{info.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}|missing\n".encode())
    return digest.hexdigest()


def _content(paths: list[Path]) -> str:
    """Digest of the path and bytes of every file; a missing or unreadable file counts as such."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{path}|".encode())
        try:
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        except OSError:
            digest.update(b"missing")
        digest.update(b"\n")
    return digest.hexdigest()


class Inputs:
    """The fingerprintable inputs of a run: the model's digest (None without a model) and the data
    set's annotation files by group (``EvaluationDataset.annotation_files()``)."""

    def __init__(self, model: str | None, files: dict[str, list[Path]]) -> None:
        self.model, self.files = model, files

    def record(self) -> dict:
        """What ``config.json`` stores: the model digest, and per file group its count, stamp and content digest."""
        return {
            "model": self.model,
            "annotations": {
                group: {"files": len(paths), "stamp": _stamp(paths), "sha256": _content(paths)}
                for group, paths in self.files.items()
            },
        }

    def compare(self, stored: dict) -> tuple[list[str], dict]:
        """(the inputs that differ from ``stored``, as "model weights" or "annotations: GROUP (N files)";
        the record to store: ``stored`` with the stamps of files whose content is unchanged refreshed)."""
        changed = [MODEL] if stored.get("model") != self.model else []
        old = stored.get("annotations", {})
        refreshed = {}
        for group in sorted(old.keys() | self.files.keys()):
            paths = self.files.get(group, [])
            entry = old.get(group)
            stamp = _stamp(paths)
            if entry is not None and group in self.files and entry["stamp"] == stamp:
                refreshed[group] = entry
                continue
            content = _content(paths)
            if entry is None or group not in self.files or entry["sha256"] != content:
                changed.append(f"annotations: {group} ({len(paths)} file(s))")
            refreshed[group] = {"files": len(paths), "stamp": stamp, "sha256": content}
        return changed, {"model": self.model, "annotations": refreshed}
