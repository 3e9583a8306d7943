"""``relprop evaluate``: pointing game, mIoU, model sensitivity and insertion/deletion on a data set.

Resumable (one JSONL record per image in ``--out``), batched, and distributed under ``torchrun``
(each rank evaluates a disjoint shard; rank 0 writes ``results.json`` and the report).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from ..errors import RelpropError

if TYPE_CHECKING:
    from ..evaluation.datasets import EvaluationDataset
    from ..evaluation.protocol import Protocol
    from ..evaluation.runner import Evaluator
    from ..evaluation.store import RecordWriter
    from ..preprocess import Preprocess

DEFAULT_METHODS = "rsp,ae,center"
DEFAULT_METRICS = "pointing,miou"


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


# ------------------------------------------------------------------------------------------- model


def load_classifier(name: str, weights: str | None, num_classes: int | None) -> tuple[nn.Module, Preprocess]:
    """(model in eval mode, its Preprocess); ``num_classes`` builds a torchvision model with that many outputs."""
    import torchvision

    from .. import zoo

    if num_classes is None:
        return zoo.load_model(name, weights)
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise RelpropError(f"--num-classes works with torchvision architectures only; '{name}' is not one.")
    _, preprocess = zoo.load_model(name)
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if weights is not None:
        zoo._load_state_dict(model, weights)
    return model.eval(), preprocess


def _output_classes(model: nn.Module, size: int, device: torch.device) -> int:
    with torch.no_grad():
        return int(model(torch.zeros(1, 3, size, size, device=device)).shape[1])


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
    )


def _check_records(records: dict[int, dict], dataset) -> None:  # type: ignore[no-untyped-def]
    for index, record in records.items():
        if index >= len(dataset) or record["id"] != dataset.image_id(index):
            raise RelpropError(
                f"the records in --out do not match this data set (image {index} is {record['id']!r} there); "
                "use another --out or --force."
            )


# ------------------------------------------------------------------------------------------- run


def _evaluate_images(
    evaluator: Evaluator, dataset: EvaluationDataset, todo: list[int], writer: RecordWriter, progress: bool
) -> list[dict]:
    """Evaluate the images ``todo`` in batches, handing each batch's records to ``writer`` as it is done."""
    from tqdm import tqdm

    from ..evaluation.datasets import DataError
    from ..evaluation.runner import batches

    new: list[dict] = []
    with tqdm(total=len(todo), unit="img", disable=not progress, desc="evaluate") as bar:
        for chunk in batches(todo, evaluator.batch_size):
            samples, records = [], []
            for index in chunk:
                try:
                    samples.append(dataset[index])
                except DataError as exc:
                    tqdm.write(f"relprop: skipping unreadable {exc.path}: {exc}", file=sys.stderr)
                    records.append(evaluator.error_record(index, exc.path, str(exc)))
            records += evaluator.records(samples) if samples else []
            writer.write(sorted(records, key=lambda r: r["index"]))
            new += records
            bar.update(len(chunk))
    return new


def _setup(args: argparse.Namespace, device: torch.device):  # type: ignore[no-untyped-def]
    """(dataset, model or None, method specs, protocol, config) from the command line."""
    from ..evaluation.datasets import open_dataset
    from ..evaluation.methods import parse_methods

    if args.limit is not None and args.limit < 1:
        raise RelpropError(f"--limit must be at least 1; got {args.limit}.")
    if args.batch_size < 1:
        raise RelpropError(f"--batch-size must be at least 1; got {args.batch_size}.")
    methods = parse_methods(args.methods)
    dataset = open_dataset(
        args.dataset,
        args.root,
        split=args.split,
        difficult_flags=args.difficult_flags,
        annotations=args.annotations,
    )
    model, preprocess = None, None
    if args.model:
        model, preprocess = load_classifier(args.model, args.weights, args.num_classes)
        model = model.to(device)
    elif any(not m.model_free for m in methods):
        raise RelpropError("--model is needed for every method except 'center'.")
    protocol = _protocol(args, args.dataset, preprocess)
    classes = len(dataset.class_names)
    outputs = _output_classes(model, protocol.input_size, device) if model is not None else classes
    if outputs != classes:
        raise RelpropError(
            f"model '{args.model}' has {outputs} outputs but {args.dataset} has {classes} classes; give weights "
            f"of a {classes}-class model (torchvision architectures: add --num-classes {classes})."
        )
    config = {
        "dataset": args.dataset,
        "root": args.root,
        "model": args.model,
        "weights": args.weights,
        "num_classes": args.num_classes,
        "methods": [m.label for m in methods],
        **protocol.record(methods),
        "data": dataset.describe(),
        "limit": args.limit,
        "batch_size": args.batch_size,
        "device": device.type,
    }
    return dataset, model, methods, protocol, config


def evaluate(args: argparse.Namespace) -> int:
    from ..evaluation.distributed import init_context
    from ..evaluation.runner import Evaluator
    from ..evaluation.store import RecordWriter, load_records, prepare_out, records_name

    ctx = init_context(args.device)
    try:
        dataset, model, methods, protocol, config = _setup(args, ctx.device)
        out = Path(args.out)
        problem = None
        if ctx.main:
            try:
                prepare_out(out, config, args.force)
            except RelpropError as exc:
                problem = str(exc)
        problem = ctx.broadcast(problem)
        if problem:
            raise RelpropError(problem)
        own = records_name(ctx.rank, ctx.world)
        writer = RecordWriter(out / own)
        try:
            existing = load_records(out, own=own)
            _check_records(existing, dataset)
            indices = list(range(len(dataset) if args.limit is None else min(args.limit, len(dataset))))
            mine = ctx.shard(indices)
            todo = [i for i in mine if i not in existing]
            evaluator = Evaluator(dataset, model, methods, protocol, ctx.device, batch_size=args.batch_size)
            if ctx.main and len(todo) < len(mine):
                print(f"relprop: resuming: {len(mine) - len(todo)} image(s) already done in {out}", file=sys.stderr)
            started = time.perf_counter()
            new = _evaluate_images(evaluator, dataset, todo, writer, progress=ctx.main and not args.no_progress)
            elapsed = time.perf_counter() - started
        except KeyboardInterrupt:
            print(
                f"relprop: interrupted; the finished images are kept in {out}: rerun the same command to resume.",
                file=sys.stderr,
            )
            return 130
        finally:
            writer.close()
        mine_set = set(mine)
        records = ctx.gather([r for i, r in existing.items() if i in mine_set] + new)
        timings = ctx.gather([(len(new), elapsed, evaluator.seconds)])
        if ctx.main:
            _finish(args, out, evaluator, config, records, indices)
            _write_run_info(out, timings, resumed=len(existing), device=config["device"])
        ctx.barrier()
    finally:
        ctx.close()
    return 0


def _finish(
    args: argparse.Namespace, out: Path, evaluator: Evaluator, config: dict, records: list[dict], indices: list[int]
) -> None:
    """Aggregate every rank's records into results.json and write the report (rank 0)."""
    from ..evaluation.examples import example_figures
    from ..evaluation.report import write_report
    from ..evaluation.results import aggregate

    by_index = {r["index"]: r for r in records}
    missing = [i for i in indices if i not in by_index]
    if missing:
        raise RelpropError(f"{len(missing)} image(s) have no result (first: {missing[0]}); rerun to resume.")
    records = [by_index[i] for i in indices]
    skipped = [r for r in records if r["status"] != "ok"]
    data = {**config["data"], "evaluated": len(records) - len(skipped), "unreadable": len(skipped)}
    labels = [m.label for m in evaluator.methods]
    results = aggregate(records, labels, {**config, "data": data}, evaluator.dataset.class_names)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    command = "relprop " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else None
    examples = example_figures(evaluator, records, args.examples) if args.examples > 0 else {}
    md, page = write_report(out, results, skipped, examples, command)
    print(f"wrote {out / 'results.json'}, {md}, {page}")


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
    from ..evaluation.datasets import DATASETS
    from ..evaluation.protocol import METRICS

    parser = subparsers.add_parser(
        "evaluate",
        help="pointing game, mIoU, model sensitivity, insertion/deletion on VOC07 / COCO14 / ImageNet",
        description="Evaluate attribution methods with the protocols of ../shared/docs/evaluation.md. "
        "Interrupted runs resume when rerun with the same --out; under torchrun each process takes a shard.",
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", required=True, choices=DATASETS)
    data.add_argument(
        "--root",
        required=True,
        help="folder with the data set's own layout (VOC: the VOC2007 folder or its VOCdevkit parent)",
    )
    data.add_argument("--split", default="test", help="VOC split (ImageSets/Main/SPLIT.txt; default test)")
    data.add_argument("--annotations", help="COCO instances JSON (default: ROOT/annotations/instances_val2014*.json)")
    data.add_argument(
        "--difficult-flags", help="EBP difficult-flag file (default: searched in ROOT, then a torchray install)"
    )
    data.add_argument("--limit", type=int, help="evaluate only the first N images")
    model = parser.add_argument_group("model and methods")
    model.add_argument("--model", help="model name (torchvision or efficientnet_lite0); not needed for 'center' alone")
    model.add_argument("--weights", help="state-dict file (or DEFAULT for torchvision's download)")
    model.add_argument(
        "--num-classes", type=int, help="build a torchvision model with this many outputs (e.g. 20 for VOC)"
    )
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
    run = parser.add_argument_group("run")
    run.add_argument("--out", required=True, help="output folder (empty, or a run of the same configuration to resume)")
    run.add_argument("--force", action="store_true", help="replace relprop's result files in a non-empty --out")
    run.add_argument("--batch-size", type=int, default=8)
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    run.add_argument(
        "--examples", type=int, default=3, help="best and worst units per method shown in the report (default 3)"
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=evaluate)
