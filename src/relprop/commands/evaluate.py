"""``relprop evaluate``: pointing game, mIoU, model sensitivity, insertion/deletion, grid pointing game
and target sensitivity on a data set.

Resumable (one JSONL record per image in ``--out``), batched, and distributed under ``torchrun``
(each rank evaluates a disjoint shard; rank 0 writes ``results.json`` and the report). Everything
is validated (options, model, class count, data set, ``--out``) before anything is written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import signal
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch
import torch.nn as nn

from ..errors import RelpropError
from .classifier import add_weights_arguments, checked_classifier, has_random_weights, warn_random_weights

if TYPE_CHECKING:
    from ..evaluation.datasets import EvaluationDataset
    from ..evaluation.fingerprint import Inputs
    from ..evaluation.methods import MethodSpec
    from ..evaluation.progress import ProgressBar
    from ..evaluation.protocol import Protocol
    from ..evaluation.runner import Evaluator
    from ..evaluation.store import RecordWriter
    from ..preprocess import Preprocess

DEFAULT_METHODS = "rsp,ae,center"
DEFAULT_METRICS = "pointing,miou"
EXIT_OK, EXIT_SKIPPED, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_CODES = f"""exit status:
  {EXIT_OK}    every image evaluated; results written
  {EXIT_SKIPPED}    results written, but some images were unreadable or some boxes invalid (named on
       stderr and in results.md; counted in results.json, never scored as misses)
  {EXIT_ERROR}    bad command line or input (named in the message); nothing was written
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C, SIGTERM); finished work is kept: rerun the same command to resume"""


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


# ------------------------------------------------------------------------------------------- model


def _class_mismatch(model: str, outputs: int, dataset: str, classes: int) -> str:
    if dataset == "imagenet":
        need = f"give the weights of a {classes}-class ImageNet classifier"
    else:
        need = (
            f"{dataset} needs a multi-label classifier with {classes} outputs (e.g. a TorchRay {dataset} "
            f"checkpoint saved as a state dict): pass it with --weights FILE, adding --num-classes {classes} "
            "for a torchvision architecture (see docs/evaluation.md)"
        )
    return f"model '{model}' has {outputs} outputs but {dataset} has {classes} classes; {need}."


# ------------------------------------------------------------------------------------------- config


def _protocol(args: argparse.Namespace, dataset_name: str, preprocess: Preprocess | None) -> Protocol:
    from ..evaluation.maps import CAFFE_MEAN, CAFFE_STD
    from ..evaluation.protocol import Protocol
    from ..preprocess import IMAGENET_MEAN, IMAGENET_STD

    if args.normalisation == "model":
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if preprocess is None else (preprocess.mean, preprocess.std)
    elif args.normalisation == "caffe":
        mean, std = CAFFE_MEAN, CAFFE_STD
    else:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    size = args.input_size or (preprocess.size if preprocess is not None else 224)
    multilabel = dataset_name != "imagenet"
    return Protocol(
        metrics=_split(args.metrics),
        input_mode=args.input_mode or ("shorter_side" if multilabel else "fixed"),
        input_size=size,
        mean=tuple(mean),
        std=tuple(std),
        tolerance=args.tolerance,
        smoothing=args.smoothing,
        reduce=args.reduce,
        energy_negative=args.energy_negative,
        miou_thresholds=_split(args.miou_thresholds),
        miou_sign=args.miou_sign,
        miou_normalize=args.miou_normalize,
        sensitivity_modes=_split(args.sensitivity_modes),
        sensitivity_granularity=args.sensitivity_granularity,
        sensitivity_init=args.sensitivity_init,
        sensitivity_reset_bn=args.sensitivity_reset_bn,
        sensitivity_seed=args.sensitivity_seed,
        sensitivity_images=args.sensitivity_images,
        insdel_step=args.insdel_step,
        insdel_score="sigmoid" if multilabel else "softmax",
        grid_mosaics=args.grid_mosaics,
        grid_pool=args.grid_pool,
        grid_candidates=args.grid_candidates,
        grid_cell=args.grid_cell,
        grid_seed=args.grid_seed,
        target_seed=args.target_seed,
    )


def _check_records(records: dict[int, dict], dataset: EvaluationDataset) -> None:
    for index, record in records.items():
        if index >= len(dataset) or record["id"] != dataset.image_id(index):
            raise RelpropError(
                f"the records in --out do not match this data set (image {index} is {record['id']!r} there); "
                "use another --out or --force."
            )


@dataclass
class Plan:
    """A validated run: everything it needs, nothing written yet."""

    dataset: EvaluationDataset
    model: nn.Module | None
    methods: list[MethodSpec]
    protocol: Protocol
    explainers: dict[str, Any]
    config: dict
    inputs: Inputs
    mosaics: dict | None = None
    """The grid pointing game's pool and mosaics (:func:`relprop.evaluation.runner.select_mosaics`)."""
    mosaics_saved: bool = False
    """Whether ``mosaics`` were read from ``--out`` (a resumed run) rather than drawn now."""


def _setup(args: argparse.Namespace, device: torch.device) -> Plan:
    """Validate the command line and load the model and the data set; writes nothing.

    Cheap checks come first (options, then the model and its class count), so that a mistake is
    reported before the data set is read.
    """
    from ..evaluation.datasets import canonical_name, class_count, open_dataset
    from ..evaluation.fingerprint import Inputs, model_digest
    from ..evaluation.methods import parse_methods
    from ..evaluation.runner import build_explainers, check_model_needed

    if args.limit is not None and args.limit < 1:
        raise RelpropError(f"--limit must be at least 1; got {args.limit}.")
    if args.batch_size < 1:
        raise RelpropError(f"--batch-size must be at least 1; got {args.batch_size}.")
    name = canonical_name(args.dataset)
    methods = parse_methods(args.methods)
    protocol = _protocol(args, name, None)  # validates the protocol options before the model is loaded
    check_model_needed(methods, protocol.metrics, bool(args.model))
    classes = class_count(name, args.root)
    model, digest = None, None
    if args.model:
        model, preprocess, outputs = checked_classifier(args, args.input_size)
        if outputs != classes:
            raise RelpropError(_class_mismatch(args.model, outputs, name, classes))
        protocol = _protocol(args, name, preprocess)
        digest = model_digest(model)
        model = model.to(device)
    explainers = build_explainers(methods, model)
    dataset = open_dataset(
        name, args.root, split=args.split, difficult_flags=args.difficult_flags, annotations=args.annotations
    )
    config = {
        "dataset": name,
        "root": args.root,
        "model": args.model,
        "weights": args.weights,
        "random_weights": has_random_weights(args),
        "num_classes": args.num_classes,
        "methods": [m.label for m in methods],
        **protocol.record(methods),
        "data": dataset.describe(),
        "limit": args.limit,
        "batch_size": args.batch_size,
        "device": device.type,
    }
    plan = Plan(dataset, model, methods, protocol, explainers, config, Inputs(digest, dataset.annotation_files()))
    if "grid_pointing" in protocol.metrics:
        _plan_mosaics(plan, args, device)
    return plan


def _plan_mosaics(plan: Plan, args: argparse.Namespace, device: torch.device) -> None:
    """The mosaics of an earlier run in ``--out`` (resume), or drawn now: the model classifies the
    candidate images first (one forward pass each)."""
    from ..evaluation.runner import select_mosaics
    from ..evaluation.store import CONFIG, load_mosaics

    out = Path(args.out)
    if not args.force and (out / CONFIG).is_file():
        plan.mosaics = load_mosaics(out)
        plan.mosaics_saved = plan.mosaics is not None
    if plan.mosaics is None:
        try:
            plan.mosaics = select_mosaics(plan.dataset, plan.model, plan.protocol, device, args.batch_size)  # type: ignore[arg-type]
        except ValueError as exc:
            raise RelpropError(f"{exc} Give more candidates (--grid-candidates, --grid-pool) or another model.") from exc


# ------------------------------------------------------------------------------------------- run


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
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


def _evaluate_images(
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


def _resume_message(existing: dict[int, dict], indices: list[int], labels: list[str], out: Path) -> str | None:
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


def evaluate(args: argparse.Namespace) -> int:
    from ..evaluation.distributed import init_context
    from ..evaluation.progress import ProgressBar
    from ..evaluation.runner import Evaluator
    from ..evaluation.store import OutLock, RecordWriter, is_complete, load_records, merge_record, prepare_out
    from ..evaluation.store import save_mosaics
    from ..evaluation.store import records_name

    ctx = init_context(args.device)
    lock = None
    try:
        plan = _setup(args, ctx.device)
        if ctx.main and plan.config["random_weights"]:
            warn_random_weights(args.model)
        out = Path(args.out)
        problem = None
        if ctx.main:
            try:
                lock = OutLock(out)
                prepare_out(out, plan.config, args.force, plan.inputs)
            except RelpropError as exc:
                problem = str(exc)
        if ctx.main and plan.mosaics is not None and not plan.mosaics_saved and problem is None:
            save_mosaics(out, plan.mosaics)
        problem = ctx.broadcast(problem)
        if problem:
            raise RelpropError(problem)
        plan.mosaics = ctx.broadcast(plan.mosaics)
        own = records_name(ctx.rank, ctx.world)
        writer = RecordWriter(out / own)
        labels = [m.label for m in plan.methods]
        try:
            existing = load_records(out, own=own, drop_damaged=args.drop_damaged)
            _check_records(existing, plan.dataset)
            count = len(plan.dataset) if args.limit is None else min(args.limit, len(plan.dataset))
            indices = list(range(count))
            mine = ctx.shard(indices)
            todo = [i for i in mine if not is_complete(existing.get(i), labels)]
            evaluator = Evaluator(
                plan.dataset,
                plan.model,
                plan.methods,
                plan.protocol,
                ctx.device,
                args.batch_size,
                plan.explainers,
                None if plan.mosaics is None else plan.mosaics["mosaics"],
            )
            message = _resume_message(existing, indices, labels, out)
            if ctx.main and message:
                print(message, file=sys.stderr)
            resumed = sum(is_complete(existing.get(i), labels) for i in indices)
            started = time.perf_counter()
            progress = ProgressBar(len(todo), "images", "evaluate", enabled=ctx.main and not args.no_progress)
            with _sigterm_as_interrupt(), progress:
                new = _evaluate_images(evaluator, todo, existing, writer, progress)
            elapsed = time.perf_counter() - started
        except KeyboardInterrupt:
            print(
                f"relprop: interrupted; the finished work is kept in {out}: rerun the same command to resume.",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
        finally:
            writer.close()
        for record in new:
            merge_record(existing, record)
        records = ctx.gather([existing[i] for i in mine if i in existing])
        timings = ctx.gather([(len(new), elapsed, evaluator.seconds)])
        code = EXIT_OK
        if ctx.main:
            code = _finish(args, out, evaluator, plan.config, records, indices, plan.mosaics)
            _write_run_info(out, timings, resumed=resumed, device=plan.config["device"])
        code = ctx.broadcast(code)
        ctx.barrier()
    finally:
        if lock is not None:
            lock.close()
        ctx.close()
    return code


def _finish(
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


def _write_run_info(out: Path, timings: list[tuple[int, float, dict]], resumed: int, device: str) -> None:
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


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from ..evaluation.datasets import ALIASES, DATASETS
    from ..evaluation.protocol import METRICS

    parser = subparsers.add_parser(
        "evaluate",
        help="pointing game, mIoU, model sensitivity, insertion/deletion, grid pointing, target sensitivity on "
        "VOC07 / COCO14 / ImageNet",
        description=textwrap.fill(
            "Evaluate attribution methods with the protocols of docs/evaluation.md (TorchRay's pointing game, "
            "mIoU, model sensitivity, insertion/deletion) and two class-discrimination metrics: the grid pointing "
            "game (2x2 mosaics of four correctly classified images, each cell's class explained on the whole mosaic) "
            "and target sensitivity (similarity to the map of another class). VOC 2007 and COCO need a multi-label classifier with "
            "20 / 80 outputs (--weights FILE, --num-classes N for torchvision architectures); ImageNet a "
            "1000-class one. Interrupted runs resume when rerun with the same --out (which may also add methods to a "
            "finished run); under torchrun each process takes a shard.",
            width=100,
        ),
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset",
        required=True,
        choices=DATASETS + tuple(ALIASES),
        help=f"{', '.join(DATASETS)} ({', '.join(f'{a} = {n}' for a, n in ALIASES.items())})",
    )
    data.add_argument(
        "--root",
        required=True,
        help="the folder holding your copy of the data set, in its own layout (VOC: the VOC2007 folder or its "
        "VOCdevkit parent; COCO: the folder with val2014/ and annotations/; ImageNet: the folder with val/)",
    )
    data.add_argument("--split", default="test", help="VOC split (ImageSets/Main/SPLIT.txt; default test)")
    data.add_argument("--annotations", help="COCO instances JSON (default: ROOT/annotations/instances_val2014*.json)")
    data.add_argument(
        "--difficult-flags", help="EBP difficult-flag file (default: searched in ROOT, then a torchray install)"
    )
    data.add_argument("--limit", type=int, help="evaluate only the first N images")
    model = parser.add_argument_group("model and methods")
    model.add_argument("--model", help="model name (torchvision, efficientnet_lite0 or timm:<name>); not needed for 'center' alone")
    add_weights_arguments(model, "the report")
    model.add_argument(
        "--methods",
        default=DEFAULT_METHODS,
        help=f"comma-separated, options as name:key=value (default {DEFAULT_METHODS})",
    )
    model.add_argument(
        "--metrics",
        default=DEFAULT_METRICS,
        help=f"comma-separated from {', '.join(METRICS)} (default {DEFAULT_METRICS})",
    )
    proto = parser.add_argument_group("protocol")
    proto.add_argument(
        "--input-mode", choices=("fixed", "shorter_side"), help="default: fixed for imagenet, shorter_side for voc/coco"
    )
    proto.add_argument("--input-size", type=int, help="default: the model's input size (224)")
    proto.add_argument("--normalisation", choices=("model", "imagenet", "caffe"), default="model")
    proto.add_argument("--tolerance", type=float, default=15.0, help="pointing-game tolerance in pixels (default 15)")
    proto.add_argument(
        "--smoothing", type=float, help="pointing-game Gaussian smoothing s (default per method: 0.02 or 0)"
    )
    proto.add_argument("--reduce", choices=("sum", "sum_abs", "max_abs"), help="channel reduction (default per method)")
    proto.add_argument("--energy-negative", choices=("clip", "abs"), default="clip")
    proto.add_argument(
        "--miou-thresholds",
        default="mean,zero",
        help="first = main row; mean, zero, value:T, top_fraction:Q, gt_area, otsu",
    )
    proto.add_argument("--miou-sign", choices=("signed", "positive", "abs"), default="signed")
    proto.add_argument("--miou-normalize", choices=("minmax", "max", "none"), default="minmax")
    proto.add_argument("--sensitivity-modes", default="cascading,independent")
    proto.add_argument("--sensitivity-granularity", choices=("block", "layer"), default="block")
    proto.add_argument(
        "--sensitivity-init", choices=("reset_parameters", "xavier_u01", "normal_0.01"), default="reset_parameters"
    )
    proto.add_argument("--sensitivity-reset-bn", choices=("affine_only", "all", "none"), default="affine_only")
    proto.add_argument("--sensitivity-seed", type=int, default=0)
    proto.add_argument(
        "--sensitivity-images", type=int, default=200, help="model sensitivity on the first N images (default 200)"
    )
    proto.add_argument("--insdel-step", type=int, default=224, help="pixels per insertion/deletion step (default 224)")
    discrimination = parser.add_argument_group("class discrimination (grid_pointing, target_sensitivity)")
    discrimination.add_argument(
        "--grid-mosaics",
        type=int,
        default=100,
        help="grid pointing: number of 2x2 mosaics; mosaic k is evaluated with image k, so at most --limit (default 100)",
    )
    discrimination.add_argument(
        "--grid-pool",
        type=int,
        default=200,
        help="grid pointing: the mosaics' images are the N most confident correctly classified ones, one per class "
        "(default 200)",
    )
    discrimination.add_argument(
        "--grid-candidates",
        type=int,
        help="grid pointing: classify only the first N images of the data set to find the pool (default: all; "
        "one forward pass each, before the run)",
    )
    discrimination.add_argument(
        "--grid-cell",
        type=int,
        help="grid pointing: side of a cell in pixels (default: the input size, 224 -> 448x448 mosaics, as the "
        "papers; every map then costs about 4x an image's; with 112 a map costs one image's)",
    )
    discrimination.add_argument("--grid-seed", type=int, default=0, help="grid pointing: seed of the mosaic draw")
    discrimination.add_argument(
        "--target-seed", type=int, default=0, help="target sensitivity: seed of the random other class per image"
    )
    run = parser.add_argument_group("run")
    run.add_argument(
        "--out",
        required=True,
        help="output folder (empty, or a run of the same configuration to resume or to add --methods to)",
    )
    run.add_argument(
        "--force",
        action="store_true",
        help="start again: remove relprop's result files from --out (never while another run uses it)",
    )
    run.add_argument(
        "--drop-damaged",
        action="store_true",
        help="resume past damaged lines of records*.jsonl: they are moved to records*.jsonl.damaged and "
        "their images evaluated again",
    )
    run.add_argument("--batch-size", type=int, default=8, help="images per batch (default 8)")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    run.add_argument(
        "--examples", type=int, default=3, help="best and worst units per method shown in the report (default 3)"
    )
    run.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress output (a bar on a terminal, a line per tenth of the images otherwise)",
    )
    parser.set_defaults(run=evaluate)

