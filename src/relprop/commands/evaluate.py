"""``relprop evaluate``: pointing game, mIoU, model sensitivity and insertion/deletion on a data set.

Resumable (one JSONL record per image in ``--out``), batched, and distributed under ``torchrun``
(each rank evaluates a disjoint shard; rank 0 writes ``results.json`` and the report).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..errors import RelpropError

DEFAULT_METHODS = "rsp,ae,center"
DEFAULT_METRICS = "pointing,miou"


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


# ------------------------------------------------------------------------------------------- model


def load_classifier(name: str, weights: str | None, num_classes: int | None) -> tuple[nn.Module, object]:
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


def _protocol(args: argparse.Namespace, dataset_name: str, preprocess: object | None):  # type: ignore[no-untyped-def]
    from ..evaluation.maps import CAFFE_MEAN, CAFFE_STD
    from ..evaluation.protocol import Protocol
    from ..preprocess import IMAGENET_MEAN, IMAGENET_STD

    if args.normalisation == "model":
        mean, std = (preprocess.mean, preprocess.std) if preprocess is not None else (IMAGENET_MEAN, IMAGENET_STD)  # type: ignore[attr-defined]
    elif args.normalisation == "caffe":
        mean, std = CAFFE_MEAN, CAFFE_STD
    else:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    size = args.input_size or (preprocess.size if preprocess is not None else 224)  # type: ignore[attr-defined]
    multilabel = dataset_name != "imagenet"
    return Protocol(
        metrics=_split(args.metrics), input_mode=args.input_mode or ("shorter_side" if multilabel else "fixed"),
        input_size=size, mean=tuple(mean), std=tuple(std), tolerance=args.tolerance, smoothing=args.smoothing,
        reduce=args.reduce, energy_negative=args.energy_negative, miou_thresholds=_split(args.miou_thresholds),
        miou_sign=args.miou_sign, miou_normalize=args.miou_normalize,
        sensitivity_modes=_split(args.sensitivity_modes), sensitivity_granularity=args.sensitivity_granularity,
        sensitivity_init=args.sensitivity_init, sensitivity_reset_bn=args.sensitivity_reset_bn,
        sensitivity_seed=args.sensitivity_seed, sensitivity_images=args.sensitivity_images,
        insdel_step=args.insdel_step, insdel_score="sigmoid" if multilabel else "softmax",
    )


def _check_records(records: dict[int, dict], dataset) -> None:  # type: ignore[no-untyped-def]
    for index, record in records.items():
        if index >= len(dataset) or record["id"] != dataset.image_id(index):
            raise RelpropError(
                f"the records in --out do not match this data set (image {index} is {record['id']!r} there); "
                "use another --out or --force."
            )


# ------------------------------------------------------------------------------------------- examples


def _unit_scores(records: list[dict], method: str) -> list[tuple[float, int, int, str]]:
    """(score, image index, label, description) per unit: IoU_fg, else energy, else pointing hit."""
    out = []
    for record in records:
        if record["status"] != "ok":
            continue
        results = record["methods"][method]
        for position, info in enumerate(record["units"]):
            miou = results.get("miou", [None] * (position + 1))[position]
            energy = results.get("energy", [None] * (position + 1))[position]
            pointing = results.get("pointing", [None] * (position + 1))[position]
            if miou is not None:
                tp, fp, fn, _ = next(iter(miou["counts"].values()))
                score, what = (tp / (tp + fp + fn) if tp + fp + fn else 0.0), "IoU"
            elif energy is not None:
                score, what = energy, "energy"
            elif pointing is not None:
                score, what = float(pointing["hit"]), "hit"
            else:
                continue
            out.append((score, record["index"], info["label"], f"{what} {score:.2f}"))
    return out


def _examples(evaluator, dataset, records: list[dict], count: int) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    """method -> PNG of its ``count`` best and ``count`` worst units."""
    from ..evaluation.maps import input_shape
    from ..evaluation.report import example_figure

    p = evaluator.protocol
    figures = {}
    for spec in evaluator.methods:
        scores = sorted(_unit_scores(records, spec.label), key=lambda s: (-s[0], s[1], s[2]))
        best = scores[:count]
        worst = [s for s in scores[::-1][:count] if s not in best]
        if not best:
            continue
        units, panels = [], []
        for tag, (_, index, label, what) in [("best", s) for s in best] + [("worst", s) for s in worst]:
            sample = dataset[index]
            units.append(next(u for u in evaluator.units([sample]) if u.label == label))
            shape = input_shape(*sample.size, p.input_mode, p.input_size)
            image = np.asarray(sample.image.resize((shape[1], shape[0])))
            panels.append((image, f"{tag}: {sample.image_id}\n{dataset.class_names[label][:24]}, {what}"))
        maps = evaluator.maps(spec, units)
        figures[spec.label] = example_figure([(image, m.numpy(), title) for (image, title), m in zip(panels, maps)])
    return figures


# ------------------------------------------------------------------------------------------- run


def evaluate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..evaluation.datasets import DataError, open_dataset
    from ..evaluation.distributed import init_context
    from ..evaluation.methods import parse_methods
    from ..evaluation.runner import Evaluator, batches
    from ..evaluation.store import RecordWriter, load_records, prepare_out, records_name

    if args.limit is not None and args.limit < 1:
        raise RelpropError(f"--limit must be at least 1; got {args.limit}.")
    if args.batch_size < 1:
        raise RelpropError(f"--batch-size must be at least 1; got {args.batch_size}.")
    ctx = init_context(args.device)
    try:
        methods = parse_methods(args.methods)
        dataset = open_dataset(
            args.dataset, args.root, split=args.split, difficult_flags=args.difficult_flags, annotations=args.annotations,
        )
        model, preprocess = None, None
        if args.model:
            num_classes = args.num_classes
            model, preprocess = load_classifier(args.model, args.weights, num_classes)
            model = model.to(ctx.device)
        elif any(not m.model_free for m in methods):
            raise RelpropError("--model is needed for every method except 'center'.")
        protocol = _protocol(args, args.dataset, preprocess)
        if model is not None:
            outputs = _output_classes(model, protocol.input_size, ctx.device)
            if outputs != len(dataset.class_names):
                raise RelpropError(
                    f"model '{args.model}' has {outputs} outputs but {args.dataset} has {len(dataset.class_names)} classes; "
                    f"give weights of a {len(dataset.class_names)}-class model (torchvision architectures: add "
                    f"--num-classes {len(dataset.class_names)})."
                )
        limit = len(dataset) if args.limit is None else min(args.limit, len(dataset))
        config = {
            "dataset": args.dataset, "root": str(Path(args.root).resolve()), "model": args.model,
            "weights": str(Path(args.weights).resolve()) if args.weights and args.weights != "DEFAULT" else args.weights,
            "num_classes": args.num_classes, "methods": [m.label for m in methods], **protocol.record(methods),
            "data": dataset.describe(), "limit": args.limit, "batch_size": args.batch_size, "device": ctx.device.type,
        }
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
        existing = load_records(out, own=own)
        _check_records(existing, dataset)
        indices = list(range(limit))
        mine = ctx.shard(indices)
        todo = [i for i in mine if i not in existing]
        evaluator = Evaluator(dataset, model, methods, protocol, ctx.device, batch_size=args.batch_size)
        if ctx.main and len(todo) < len(mine):
            print(f"relprop: resuming: {len(mine) - len(todo)} image(s) already done in {out}", file=sys.stderr)
        writer = RecordWriter(out / own)
        started, new = time.perf_counter(), []
        try:
            with tqdm(total=len(todo), unit="img", disable=not ctx.main or args.no_progress, desc="evaluate") as bar:
                for chunk in batches(todo, args.batch_size):
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
        finally:
            writer.close()
        elapsed = time.perf_counter() - started
        mine_set = set(mine)
        gathered = ctx.gather([r for i, r in existing.items() if i in mine_set] + new)
        timings = ctx.gather([(len(new), elapsed)])
        if ctx.main:
            _finish(args, out, dataset, evaluator, methods, config, gathered, indices, timings, len(existing))
        ctx.barrier()
    finally:
        ctx.close()
    return 0


def _finish(args, out, dataset, evaluator, methods, config, records, indices, timings, resumed) -> None:  # type: ignore[no-untyped-def]
    import json

    from ..evaluation.report import write_report
    from ..evaluation.results import aggregate

    by_index = {r["index"]: r for r in records}
    missing = [i for i in indices if i not in by_index]
    if missing:
        raise RelpropError(f"{len(missing)} image(s) have no result (first: {missing[0]}); rerun to resume.")
    records = [by_index[i] for i in indices]
    skipped = [r for r in records if r["status"] != "ok"]
    results_config = {**config, "data": {**config["data"], "evaluated": len(records) - len(skipped), "unreadable": len(skipped)}}
    results = aggregate(records, [m.label for m in methods], results_config, dataset.class_names)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    command = "relprop " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else None
    examples = _examples(evaluator, dataset, records, args.examples) if args.examples > 0 else {}
    md, page = write_report(out, results, skipped, examples, command)
    seconds = max(t for _, t in timings)
    evaluated_now = sum(n for n, _ in timings)
    run = {
        "world_size": len(timings), "device": config["device"], "images_evaluated_now": evaluated_now,
        "images_resumed": resumed, "wall_seconds": seconds,
        "seconds_per_image": seconds / evaluated_now if evaluated_now else None,
    }
    (out / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    print(f"wrote {out / 'results.json'}, {md}, {page}")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from ..evaluation.datasets import DATASETS
    from ..evaluation.protocol import METRICS

    parser = subparsers.add_parser(
        "evaluate", help="pointing game, mIoU, model sensitivity, insertion/deletion on VOC07 / COCO14 / ImageNet",
        description="Evaluate attribution methods with the protocols of ../shared/docs/evaluation.md. "
        "Interrupted runs resume when rerun with the same --out; under torchrun each process takes a shard.",
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", required=True, choices=DATASETS)
    data.add_argument("--root", required=True, help="folder with the data set's own layout (VOC: the VOC2007 folder or its VOCdevkit parent)")
    data.add_argument("--split", default="test", help="VOC split (ImageSets/Main/SPLIT.txt; default test)")
    data.add_argument("--annotations", help="COCO instances JSON (default: ROOT/annotations/instances_val2014*.json)")
    data.add_argument("--difficult-flags", help="EBP difficult-flag file (default: searched in ROOT, then a torchray install)")
    data.add_argument("--limit", type=int, help="evaluate only the first N images")
    model = parser.add_argument_group("model and methods")
    model.add_argument("--model", help="model name (torchvision or efficientnet_lite0); not needed for 'center' alone")
    model.add_argument("--weights", help="state-dict file (or DEFAULT for torchvision's download)")
    model.add_argument("--num-classes", type=int, help="build a torchvision model with this many outputs (e.g. 20 for VOC)")
    model.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated, options as name:key=value (default {DEFAULT_METHODS})")
    model.add_argument("--metrics", default=DEFAULT_METRICS, help=f"comma-separated from {', '.join(METRICS)} (default {DEFAULT_METRICS})")
    proto = parser.add_argument_group("protocol")
    proto.add_argument("--input-mode", choices=("fixed", "shorter_side"), help="default: fixed for imagenet, shorter_side for voc/coco")
    proto.add_argument("--input-size", type=int, help="default: the model's input size (224)")
    proto.add_argument("--normalisation", choices=("model", "imagenet", "caffe"), default="model")
    proto.add_argument("--tolerance", type=float, default=15.0, help="pointing-game tolerance in pixels (default 15)")
    proto.add_argument("--smoothing", type=float, help="pointing-game Gaussian smoothing s (default per method: 0.02 or 0)")
    proto.add_argument("--reduce", choices=("sum", "sum_abs", "max_abs"), help="channel reduction (default per method)")
    proto.add_argument("--energy-negative", choices=("clip", "abs"), default="clip")
    proto.add_argument("--miou-thresholds", default="mean,zero", help="first = main row; mean, zero, value:T, top_fraction:Q, gt_area, otsu")
    proto.add_argument("--miou-sign", choices=("signed", "positive", "abs"), default="signed")
    proto.add_argument("--miou-normalize", choices=("minmax", "max", "none"), default="minmax")
    proto.add_argument("--sensitivity-modes", default="cascading,independent")
    proto.add_argument("--sensitivity-granularity", choices=("block", "layer"), default="block")
    proto.add_argument("--sensitivity-init", choices=("reset_parameters", "xavier_u01", "normal_0.01"), default="reset_parameters")
    proto.add_argument("--sensitivity-reset-bn", choices=("affine_only", "all", "none"), default="affine_only")
    proto.add_argument("--sensitivity-seed", type=int, default=0)
    proto.add_argument("--sensitivity-images", type=int, default=200, help="model sensitivity on the first N images (default 200)")
    proto.add_argument("--insdel-step", type=int, default=224, help="pixels per insertion/deletion step (default 224)")
    run = parser.add_argument_group("run")
    run.add_argument("--out", required=True, help="output folder (empty, or a run of the same configuration to resume)")
    run.add_argument("--force", action="store_true", help="replace relprop's result files in a non-empty --out")
    run.add_argument("--batch-size", type=int, default=8)
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    run.add_argument("--examples", type=int, default=3, help="best and worst units per method shown in the report (default 3)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=evaluate)
