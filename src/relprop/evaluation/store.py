"""The output folder: its config, the per-image JSONL records, and the resume / refuse rules.

``--out`` holds ``config.json`` (the run's configuration), ``records.jsonl`` (one line per image,
appended and flushed as soon as the image is done; ``records.rank{R}.jsonl`` per process under
``torchrun``), then ``results.json``, ``results.md``, ``report.html`` and ``run.json`` (timings).
A folder that is not empty is used only for a resumable run of the same configuration (the image
limit, batch size and device may change), or with ``force`` — which removes only the files listed
here, never anything else.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Iterable

from ..errors import RelpropError

CONFIG = "config.json"
RECORDS_GLOB = "records*.jsonl"
OUTPUTS = ("results.json", "results.md", "report.html", "run.json")
VOLATILE = ("limit", "batch_size", "device")
"""Config keys that may differ between a run and its resumption."""


def records_name(rank: int, world: int) -> str:
    return "records.jsonl" if world == 1 else f"records.rank{rank}.jsonl"


def _comparable(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in VOLATILE}


def _differences(old: dict, new: dict) -> list[str]:
    a, b = _comparable(old), _comparable(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def prepare_out(out: Path, config: dict, force: bool) -> bool:
    """Make ``out`` ready for ``config``; True when earlier records will be resumed.

    Raises RelpropError when ``out`` is a file, or holds other content without ``force``.
    """
    if out.exists() and not out.is_dir():
        raise RelpropError(f"--out {out} is a file; give a folder.")
    out.mkdir(parents=True, exist_ok=True)
    contents = list(out.iterdir())
    config_path = out / CONFIG
    if contents and not force:
        if not config_path.is_file():
            raise RelpropError(
                f"--out {out} is not empty and holds no relprop evaluation; use an empty folder or --force "
                "(which removes only relprop's own result files)."
            )
        try:
            old = json.loads(config_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RelpropError(f"{config_path} is unreadable ({exc}); use --force to start again.") from exc
        changed = _differences(old, config)
        if changed:
            raise RelpropError(
                f"--out {out} holds a run with another configuration (differs in: {', '.join(changed)}); "
                "use another folder, or --force to replace it."
            )
        config_path.write_text(json.dumps(config, indent=2) + "\n")
        return any(out.glob(RECORDS_GLOB))
    if force:
        for path in [config_path, *out.glob(RECORDS_GLOB), *(out / name for name in OUTPUTS)]:
            path.unlink(missing_ok=True)
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    return False


def load_records(out: Path, own: str | None = None) -> dict[int, dict]:
    """Every complete record in ``out/records*.jsonl`` by image index.

    A last line cut off by an interruption is dropped (and removed from ``own``, this process's
    file, so that appending continues cleanly); a damaged line elsewhere is an error.
    """
    records: dict[int, dict] = {}
    for path in sorted(out.glob(RECORDS_GLOB)):
        data = path.read_bytes()
        lines = data.split(b"\n")
        complete, tail = lines[:-1], lines[-1]
        if tail:
            print(
                f"relprop: dropping an incomplete last record in {path}; that image is evaluated again.",
                file=sys.stderr,
            )
            if path.name == own:
                with path.open("r+b") as f:
                    f.truncate(len(data) - len(tail))
        for number, line in enumerate(complete, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RelpropError(f"{path} line {number} is damaged ({exc}); use --force to start again.") from exc
            if records.setdefault(int(record["index"]), record) is not record:
                print(
                    f"relprop: {path} line {number} repeats image {record['index']}; the first record is kept.",
                    file=sys.stderr,
                )
    return records


class RecordWriter:
    """Appends records to one JSONL file, each batch flushed to disk before the next one starts.

    The file is locked (``flock``, where the platform has it) while open: a second run writing to
    the same folder at the same time is refused instead of duplicating work.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("a", encoding="utf-8")
        try:
            import fcntl
        except ImportError:  # no flock on this platform
            return
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.close()
            raise RelpropError(
                f"{path} is being written by another relprop evaluate; wait for it or use another --out."
            ) from None

    def write(self, records: Iterable[dict]) -> None:
        for record in records:
            self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()
