"""The output folder: its config, the per-image JSONL records, and the resume / refuse rules.

``--out`` holds ``config.json`` (the run's configuration and the fingerprints of its inputs),
``records.jsonl`` (one line per image, appended and flushed as soon as its batch is done;
``records.rank{R}.jsonl`` per process under ``torchrun``), ``mosaics.json`` (the grid pointing
game's pool and mosaics, written before the first record), then ``results.json``, ``results.md``,
``report.html`` and ``run.json`` (timings). A folder that is not empty is used only for a resumable
run of the same configuration and inputs (the image limit, batch size and device may change, and
methods may be added: the images are then evaluated for the new methods alone), or with ``force``
— which removes only the files listed here, never anything else.

While a run uses the folder it holds a lock on it (``flock``, where the platform has it): a second
run on the same folder, with or without ``force``, is refused instead of mixing or deleting records.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Iterable

from ..errors import RelpropError
from .fingerprint import Inputs

CONFIG = "config.json"
RECORDS_GLOB = "records*.jsonl"
OUTPUTS = ("results.json", "results.md", "report.html", "run.json", "mosaics.json")
MOSAIC_RESULTS = ("grid_pointing",)
"""Per-method results with one value per cell of the record's ``mosaic`` (not one per unit)."""
VOLATILE = ("limit", "batch_size", "device")
"""Config keys that may differ between a run and its resumption."""
INPUTS = "inputs"
"""Config key of the input fingerprints, compared by :meth:`Inputs.compare` rather than for equality."""


def records_name(rank: int, world: int) -> str:
    return "records.jsonl" if world == 1 else f"records.rank{rank}.jsonl"


def _comparable(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in VOLATILE and k != INPUTS}


def _without_methods(value: object, labels: set[str], dropped: set[str]) -> object:
    """``value`` with the entries of the methods ``dropped`` removed from every method-keyed dict
    (a dict whose keys are all method ``labels``, such as ``channel_reduction``)."""
    if not isinstance(value, dict):
        return value
    if value and set(value) <= labels:
        return {k: v for k, v in value.items() if k not in dropped}
    return {k: _without_methods(v, labels, dropped) for k, v in value.items()}


def _differences(old: dict, new: dict) -> list[str]:
    """The config keys in which ``new`` differs from ``old``. Methods added by ``new`` (its method
    list a superset of the old one, in any order) are no difference: their images are evaluated
    for them alone, the records of the other methods are kept."""
    old_methods, new_methods = set(old.get("methods", [])), set(new.get("methods", []))
    labels, unshared = old_methods | new_methods, old_methods ^ new_methods
    a: dict = _without_methods(_comparable(old), labels, unshared)  # type: ignore[assignment]
    b: dict = _without_methods(_comparable(new), labels, unshared)  # type: ignore[assignment]
    if old_methods <= new_methods:
        a["methods"] = b["methods"] = sorted(old_methods)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def _flock(fd: int) -> bool:
    """Take an exclusive lock on ``fd`` without waiting: False when another process holds it
    (True also where the platform has no flock)."""
    try:
        import fcntl
    except ImportError:  # no flock on this platform
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # a file system without locks: run unlocked, as on platforms without flock
        return True
    return True


class OutLock:
    """An exclusive lock on the ``--out`` folder for the duration of a run (created if missing)."""

    def __init__(self, out: Path) -> None:
        if out.exists() and not out.is_dir():
            raise RelpropError(f"--out {out} is a file; give a folder.")
        out.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = None
        if not hasattr(os, "O_DIRECTORY"):  # no directory file descriptors (Windows): unlocked, as without flock
            return
        self._fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
        if not _flock(self._fd):
            os.close(self._fd)
            raise RelpropError(
                f"--out {out} is in use by another relprop evaluate; wait for it to finish or use another "
                "--out (--force does not override a running evaluation)."
            )

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)


def prepare_out(out: Path, config: dict, force: bool, inputs: Inputs) -> bool:
    """Make ``out`` (an existing folder, locked by :class:`OutLock`) ready for ``config`` and ``inputs``;
    True when earlier records will be resumed.

    Raises RelpropError when ``out`` holds other content, another configuration, or a run whose
    inputs (model weights, annotation files) changed, unless ``force``.
    """
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
            methods = "; methods may be added to a run, not removed" if "methods" in changed else ""
            raise RelpropError(
                f"--out {out} holds a run with another configuration (differs in: {', '.join(changed)}{methods}); "
                "use another folder, or --force to replace it."
            )
        if INPUTS not in old:
            raise RelpropError(
                f"--out {out} holds a run without input fingerprints (started by an older relprop), so its "
                "model and annotations cannot be checked; use another folder, or --force to replace it."
            )
        changed, refreshed = inputs.compare(old[INPUTS])
        if changed:
            random = " (a model without --weights gets new random weights in every run)" if config.get(
                "random_weights"
            ) else ""
            raise RelpropError(
                f"--out {out} holds a run whose inputs have changed since it began ({'; '.join(changed)}){random}: "
                "its records would mix them. Restore the original files, use another folder, or --force to "
                "start again."
            )
        config_path.write_text(json.dumps({**config, INPUTS: refreshed}, indent=2) + "\n")
        return any(out.glob(RECORDS_GLOB))
    if force:
        for path in [config_path, *out.glob(RECORDS_GLOB), *(out / name for name in OUTPUTS)]:
            path.unlink(missing_ok=True)
    config_path.write_text(json.dumps({**config, INPUTS: inputs.record()}, indent=2) + "\n")
    return False


# ------------------------------------------------------------------------------------ records


def record_problem(record: object) -> str | None:
    """Why a parsed JSON line is not a record relprop wrote, or None."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not a record"
    index = record.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        return 'no image "index"'
    if not isinstance(record.get("id"), str):
        return 'no image "id"'
    status = record.get("status")
    if status == "error":
        readable = isinstance(record.get("path"), str) and isinstance(record.get("error"), str)
        return None if readable else "an error record without path and message"
    if status != "ok":
        return 'no "status"'
    units, methods = record.get("units"), record.get("methods")
    if not isinstance(units, list) or not all(isinstance(u, dict) and isinstance(u.get("label"), int) for u in units):
        return 'no "units" list'
    if not isinstance(methods, dict) or not methods:
        return 'no "methods"'
    mosaic = record.get("mosaic")
    if mosaic is not None and not (isinstance(mosaic, dict) and isinstance(mosaic.get("labels"), list)):
        return 'a "mosaic" without labels'
    cells = len(mosaic["labels"]) if mosaic is not None else None
    for label, results in methods.items():
        if not isinstance(results, dict) or any(
            not isinstance(v, list) or len(v) != (cells if k in MOSAIC_RESULTS else len(units))
            for k, v in results.items()
        ):
            return f'bad results of method "{label}"'
    return None


def _parse(line: bytes) -> tuple[dict, str | None]:
    """(the record on ``line``, None) or ({}, why the line is not a record)."""
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return {}, "not UTF-8 text"
    except json.JSONDecodeError as exc:
        return {}, f"not JSON: {exc.msg} at column {exc.colno}"
    problem = record_problem(record)
    return (record, None) if problem is None else ({}, problem)


def merge_record(records: dict[int, dict], record: dict) -> str | None:
    """Add ``record`` to ``records`` (by image index); None, or why it was not used.

    An ok record replaces an error record (an unreadable image read on a retry); lines of the same
    image with other methods (the finished part of an interrupted batch) are merged; a repeated
    method keeps its first result.
    """
    index = record["index"]
    current = records.get(index)
    if current is None or current["status"] == "error":
        records[index] = record
        return None
    if record["status"] == "error":
        return None  # the image was read on another try
    if record["id"] != current["id"] or record["units"] != current["units"] or record.get("mosaic") != current.get(
        "mosaic"
    ):
        return f"repeats image {index} with other data; the first record is kept"
    repeated = sorted(set(record["methods"]) & set(current["methods"]))
    records[index] = {**current, "methods": {**record["methods"], **current["methods"]}}
    return f"repeats image {index} for {', '.join(repeated)}; the first result is kept" if repeated else None


def is_complete(record: dict | None, labels: Iterable[str]) -> bool:
    """Whether ``record`` holds the image's results for every method of ``labels``."""
    return record is not None and record["status"] == "ok" and all(m in record["methods"] for m in labels)


def load_records(out: Path, own: str | None = None, drop_damaged: bool = False) -> dict[int, dict]:
    """Every record in ``out/records*.jsonl`` by image index (lines of the same image merged).

    A last line cut off by an interruption is dropped (and removed from ``own``, this process's
    file, so that appending continues cleanly). A damaged line elsewhere (not JSON, or JSON that
    is not a record) is an error naming the file and line; with ``drop_damaged`` such lines are
    skipped (and moved from ``own`` to ``own.damaged``), so that their images are evaluated again.
    """
    records: dict[int, dict] = {}
    damaged: list[tuple[Path, int, str]] = []
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
        bad_here: list[int] = []
        for number, line in enumerate(complete, start=1):
            if not line.strip():
                continue
            record, problem = _parse(line)
            if problem:
                damaged.append((path, number, problem))
                bad_here.append(number)
                continue
            note = merge_record(records, record)
            if note:
                print(f"relprop: {path} line {number} {note}.", file=sys.stderr)
        if drop_damaged and bad_here and path.name == own:
            _set_aside(path, complete, bad_here)
    if damaged and not drop_damaged:
        path, number, problem = damaged[0]
        more = f" (and {len(damaged) - 1} more damaged line(s))" if len(damaged) > 1 else ""
        raise RelpropError(
            f"{path}, line {number} is damaged ({problem}){more}. Rerun with --drop-damaged to set the damaged "
            "line(s) aside and evaluate those images again (every other record is kept), or --force to start again."
        )
    return records


def _set_aside(path: Path, lines: list[bytes], numbers: list[int]) -> None:
    """Move lines ``numbers`` (1-based) of ``path`` to ``path.damaged`` (appended), keeping the others in place."""
    bad = set(numbers)
    with path.with_name(path.name + ".damaged").open("ab") as f:
        f.write(b"".join(lines[n - 1] + b"\n" for n in numbers))
    kept = b"".join(line + b"\n" for n, line in enumerate(lines, start=1) if n not in bad)
    with path.open("r+b") as f:
        f.seek(0)
        f.write(kept)
        f.truncate()
        f.flush()
        os.fsync(f.fileno())
    print(f"relprop: moved {len(numbers)} damaged line(s) of {path} to {path.name}.damaged.", file=sys.stderr)


class RecordWriter:
    """Appends records to one JSONL file, each batch flushed to disk before the next one starts.

    The file is locked (``flock``, where the platform has it) while open: a second run writing to
    the same folder at the same time is refused instead of duplicating work.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("a", encoding="utf-8")
        if not _flock(self._file.fileno()):
            self._file.close()
            raise RelpropError(
                f"{path} is being written by another relprop evaluate; wait for it or use another --out."
            )

    def write(self, records: Iterable[dict]) -> None:
        for record in records:
            self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


# ------------------------------------------------------------------------------------ mosaics

MOSAICS = "mosaics.json"


def load_mosaics(out: Path) -> dict | None:
    """The grid pointing game's pool and mosaics saved in ``out`` by an earlier run, or None."""
    path = out / MOSAICS
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RelpropError(f"{path} is unreadable ({exc}); use --force to start again.") from exc
    if not isinstance(saved, dict) or not isinstance(saved.get("mosaics"), list):
        raise RelpropError(f"{path} holds no mosaic list; use --force to start again.")
    return saved


def save_mosaics(out: Path, selection: dict) -> None:
    (out / MOSAICS).write_text(json.dumps(selection, indent=1) + "\n")
