"""``relprop evaluate``, first step: the command line validated into a :class:`Plan` (options, model and
its class count, data set, the grid pointing game's mosaics), before anything is written."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from ..errors import RelpropError
from .classifier import checked_classifier, has_random_weights

if TYPE_CHECKING:
    from ..evaluation.datasets import EvaluationDataset
    from ..evaluation.fingerprint import Inputs
    from ..evaluation.methods import MethodSpec
    from ..evaluation.protocol import Protocol
    from ..preprocess import Preprocess


def split_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


# ------------------------------------------------------------------------------------------- model


def class_mismatch(model: str, outputs: int, dataset: str, classes: int) -> str:
    if dataset == "imagenet":
        need = f"give the weights of a {classes}-class ImageNet classifier"
    else:
        need = (
            f"{dataset} needs a multi-label classifier with {classes} outputs (e.g. a TorchRay {dataset} "
            f"checkpoint saved as a state dict): pass it with --weights FILE, adding --num-classes {classes} "
            "for a torchvision or timm architecture (see docs/evaluation.md)"
        )
    return f"model '{model}' has {outputs} outputs but {dataset} has {classes} classes; {need}."


# ------------------------------------------------------------------------------------------- config


def protocol_from_args(args: argparse.Namespace, dataset_name: str, preprocess: Preprocess | None) -> Protocol:
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
        metrics=split_list(args.metrics),
        input_mode=args.input_mode or ("shorter_side" if multilabel else "fixed"),
        input_size=size,
        mean=tuple(mean),
        std=tuple(std),
        tolerance=args.tolerance,
        smoothing=args.smoothing,
        reduce=args.reduce,
        energy_negative=args.energy_negative,
        miou_thresholds=split_list(args.miou_thresholds),
        miou_sign=args.miou_sign,
        miou_normalize=args.miou_normalize,
        sensitivity_modes=split_list(args.sensitivity_modes),
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


def check_records(records: dict[int, dict], dataset: EvaluationDataset) -> None:
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


def plan_run(args: argparse.Namespace, device: torch.device) -> Plan:
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
    protocol = protocol_from_args(args, name, None)  # validates the protocol options before the model is loaded
    check_model_needed(methods, protocol.metrics, bool(args.model))
    classes = class_count(name, args.root)
    model, digest = None, None
    if args.model:
        model, preprocess, outputs = checked_classifier(args, args.input_size)
        if outputs != classes:
            raise RelpropError(class_mismatch(args.model, outputs, name, classes))
        protocol = protocol_from_args(args, name, preprocess)
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
