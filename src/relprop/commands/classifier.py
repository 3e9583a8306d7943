"""The classifier options shared by the commands that build a model (``--weights``, ``--num-classes``):
building it, refusing an unusable one before any work, and saying when its weights are random."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from ..preprocess import Preprocess


def add_weights_arguments(parser: argparse._ActionsContainer, output: str | None) -> None:
    """``--weights`` and ``--num-classes``; ``output`` names where a run on random weights says so (besides
    the console's warning)."""
    also = f", and 'random weights' in {output}" if output else ""
    parser.add_argument(
        "--weights",
        metavar="FILE|DEFAULT",
        help="state-dict file, or DEFAULT for torchvision's (or timm's) ImageNet weights (downloaded); without "
        f"it a torchvision or timm model has random weights (a warning{also})",
    )
    parser.add_argument(
        "--num-classes", type=int, help="build a torchvision or timm model with this many outputs (e.g. 20 for VOC)"
    )


def checked_classifier(args: argparse.Namespace, input_size: int | None = None) -> tuple[nn.Module, Preprocess, int]:
    """(model, its Preprocess, number of outputs) for ``--model/--weights/--num-classes``, refused before any
    work when its tensors are unusable (inference tensors, NaN) or its output is not a logits tensor."""
    from .. import zoo
    from ..model_state import check_model_output, check_model_tensors

    model, preprocess = zoo.load_model(args.model, args.weights, args.num_classes)
    check_model_tensors(model)
    size = input_size or preprocess.size
    return model, preprocess, check_model_output(model, torch.zeros(1, 3, size, size))


def has_random_weights(args: argparse.Namespace) -> bool:
    """Whether ``--model`` without ``--weights`` is randomly initialised."""
    from .. import zoo

    return bool(args.model) and zoo.has_random_weights(args.model, args.weights)


def warn_random_weights(model: str, where: str | None = "the results") -> None:
    """Say on stderr that ``model`` has random weights (and that ``where`` says so too)."""
    also = f" ({where} say so)" if where else ""
    print(f"relprop: warning: no --weights given; {model} has random weights{also}.", file=sys.stderr)
