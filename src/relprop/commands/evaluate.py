"""``relprop evaluate``: pointing game, mIoU, model sensitivity, insertion/deletion, grid pointing game
and target sensitivity on a data set.

Resumable (one JSONL record per image in ``--out``), batched, and distributed under ``torchrun``
(each rank evaluates a disjoint shard; rank 0 writes ``results.json`` and the report). Everything
is validated (options, model, class count, data set, ``--out``) before anything is written.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from pathlib import Path

from ..errors import RelpropError
from .classifier import add_weights_arguments, warn_random_weights
from .evaluate_plan import check_records, plan_run
from .evaluate_run import (
    EXIT_CODES, EXIT_INTERRUPTED, EXIT_OK, evaluate_images, finish, resume_message, sigterm_as_interrupt,
    write_run_info,
)

DEFAULT_METHODS = "rsp,ae,center"
DEFAULT_METRICS = "pointing,miou"


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
        plan = plan_run(args, ctx.device)
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
            check_records(existing, plan.dataset)
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
            message = resume_message(existing, indices, labels, out)
            if ctx.main and message:
                print(message, file=sys.stderr)
            resumed = sum(is_complete(existing.get(i), labels) for i in indices)
            started = time.perf_counter()
            progress = ProgressBar(len(todo), "images", "evaluate", enabled=ctx.main and not args.no_progress)
            with sigterm_as_interrupt(), progress:
                new = evaluate_images(evaluator, todo, existing, writer, progress)
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
            code = finish(args, out, evaluator, plan.config, records, indices, plan.mosaics)
            write_run_info(out, timings, resumed=resumed, device=plan.config["device"])
        code = ctx.broadcast(code)
        ctx.barrier()
    finally:
        if lock is not None:
            lock.close()
        ctx.close()
    return code


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
            "20 / 80 outputs (--weights FILE, --num-classes N for torchvision or timm architectures); ImageNet a "
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

