"""``relprop evaluate``, second step: the images of a plan evaluated in batches (resuming, interruptible),
then the results, the report and the run's timings written."""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from ..errors import RelpropError

if TYPE_CHECKING:
    from ..evaluation.progress import ProgressBar
    from ..evaluation.runner import Evaluator
    from ..evaluation.store import RecordWriter

EXIT_OK, EXIT_SKIPPED, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_CODES = f"""exit status:
  {EXIT_OK}    every image evaluated; results written
  {EXIT_SKIPPED}    results written, but some images were unreadable or some boxes invalid (named on
       stderr and in results.md; counted in results.json, never scored as misses)
  {EXIT_ERROR}    bad command line or input (named in the message); nothing was written
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C, SIGTERM); finished work is kept: rerun the same command to resume"""

# ------------------------------------------------------------------------------------------- run


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler's or torchrun's stop) raises KeyboardInterrupt, so that finished work is
    written as on Ctrl-C (main thread only; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def evaluate_images(
    evaluator: Evaluator, todo: list[int], existing: dict[int, dict], writer: RecordWriter, progress: ProgressBar
) -> list[dict]:
    """Evaluate the images ``todo`` in batches, handing each batch's records to ``writer`` as it is done.

    An image with some methods already recorded (an interrupted batch) gets only the others. On
    KeyboardInterrupt the finished methods of the batch in flight are written before it propagates.
    """
    from ..evaluation.datasets import DataError
    from ..evaluation.runner import BatchInterrupted, batches

    labels = [m.label for m in evaluator.methods]
    groups: dict[tuple[str, ...], list[int]] = {}
    for index in todo:
        record = existing.get(index)
        done = set(record["methods"]) if record is not None and record["status"] == "ok" else set()
        groups.setdefault(tuple(label for label in labels if label not in done), []).append(index)
    new: list[dict] = []
    for missing, indices in groups.items():
        specs = [m for m in evaluator.methods if m.label in missing]
        for chunk in batches(indices, evaluator.batch_size):
            samples, records = [], []
            for index in chunk:
                try:
                    sample = evaluator.dataset[index]
                except DataError as exc:
                    progress.write(f"relprop: skipping {exc}")
                    records.append(evaluator.error_record(index, exc.path, str(exc)))
                    continue
                for reason in sample.invalid.values():
                    progress.write(f"relprop: not scoring the boxes of {reason}")
                samples.append(sample)
            try:
                records += evaluator.records(samples, specs) if samples else []
            except KeyboardInterrupt as exc:
                finished = exc.records if isinstance(exc, BatchInterrupted) else []
                writer.write(sorted(records + finished, key=lambda r: r["index"]))
                raise
            writer.write(sorted(records, key=lambda r: r["index"]))
            new += records
            progress.update(len(chunk))
    return new


def resume_message(existing: dict[int, dict], indices: list[int], labels: list[str], out: Path) -> str | None:
    """What a resumed run has found in ``out`` (over every rank's records), or None for a fresh run."""
    from ..evaluation.store import is_complete

    done = sum(is_complete(existing.get(i), labels) for i in indices)
    partly = sum(i in existing and existing[i]["status"] == "ok" for i in indices) - done
    retried = sum(i in existing and existing[i]["status"] == "error" for i in indices)
    if not (done or partly or retried):
        return None
    parts = [f"{done} image(s) already done"]
    parts += [f"{partly} partly done (their other methods follow)"] if partly else []
    parts += [f"{retried} unreadable before (read again)"] if retried else []
    return f"relprop: resuming in {out}: {', '.join(parts)}"


def finish(
    args: argparse.Namespace,
    out: Path,
    evaluator: Evaluator,
    config: dict,
    records: list[dict],
    indices: list[int],
    mosaics: dict | None = None,
) -> int:
    """Aggregate every rank's records into results.json and write the report (rank 0); the exit status."""
    from ..evaluation.examples import example_figures
    from ..evaluation.report import table_rows, write_report
    from ..evaluation.results import aggregate

    by_index = {r["index"]: r for r in records}
    missing = [i for i in indices if i not in by_index]
    if missing:
        raise RelpropError(f"{len(missing)} image(s) have no result (first: {missing[0]}); rerun to resume.")
    records = [by_index[i] for i in indices]
    skipped = [r for r in records if r["status"] != "ok"]
    invalid = [reason for r in records for reason in r.get("invalid_boxes", [])]
    data = {
        **config["data"],
        "evaluated": len(records) - len(skipped),
        "unreadable": len(skipped),
        "invalid_boxes": len(invalid),
    }
    labels = [m.label for m in evaluator.methods]
    config = {**config, "data": data}
    if mosaics is not None:
        evaluated = [r["mosaic"] for r in records if r["status"] == "ok" and "mosaic" in r]
        config["grid_pointing"] = {
            **config["grid_pointing"],
            "candidates_classified": mosaics["candidates"],
            "correct": mosaics["correct"],
            "pool_size": len(mosaics["pool"]),
            "mosaics_evaluated": evaluated,
        }
    results = aggregate(records, labels, config, evaluator.dataset.class_names)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    command = "relprop " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else None
    examples = example_figures(evaluator, records, args.examples) if args.examples > 0 else {}
    md, page = write_report(out, results, skipped, examples, command, invalid)
    header, rows = table_rows(results)
    print("\n".join(" | ".join(row) for row in [header, *rows]))
    print(f"wrote {out / 'results.json'}, {md}, {page}")
    return EXIT_SKIPPED if skipped or invalid else EXIT_OK


def write_run_info(out: Path, timings: list[tuple[int, float, dict]], resumed: int, device: str) -> None:
    """``run.json``: wall time and seconds per image (overall and per method) of this invocation."""
    evaluated = sum(n for n, _, _ in timings)
    wall = max(t for _, t, _ in timings)
    per_method: dict[str, float] = {}
    for _, _, seconds in timings:
        for label, value in seconds.items():
            per_method[label] = per_method.get(label, 0.0) + value
    run = {
        "world_size": len(timings),
        "device": device,
        "images_evaluated_now": evaluated,
        "images_resumed": resumed,
        "wall_seconds": wall,
        "seconds_per_image": wall / evaluated if evaluated else None,
        "method_seconds_per_image": {k: v / evaluated for k, v in per_method.items()} if evaluated else None,
        "note": "wall time of this invocation (all ranks in parallel); method seconds summed over ranks, "
        "maps and metrics of that method included",
    }
    (out / "run.json").write_text(json.dumps(run, indent=2) + "\n")
