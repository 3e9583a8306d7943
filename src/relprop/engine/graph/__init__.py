"""Trace an unmodified model into ordered, canonical operations.

The model is traced once with :mod:`torch.fx`; standard ``torch.nn`` layers stay leaves,
everything else (torchvision blocks, custom ``Conv2d`` subclasses with their own ``forward``)
is traced through.  Every node becomes one :class:`Op` whose ``kind`` selects a rule from a
method's rule table, and canonicalisation resolves onto each op what rules need (a convolution's
parameters and geometry, a BatchNorm it feeds, a concatenation's dimension, the ops between the
image and the first convolution).  Shape, size and dtype reads are *structural*: they carry no
relevance and never block.  This package is the only part of relprop that reads torch.fx internals; nothing in
the model is changed.
"""

from .model_graph import ModelGraph
from .ops import (
    ADD, AVGPOOL, BATCHNORM, CAT, CONV, GATE, INPUT, INPUT_CONV, LAYOUT, LINEAR, MAXPOOL, NORM, OUTPUT, PAD, POINTWISE,
    SPLIT, STRUCTURAL, UNKNOWN, BatchNormSpec, ConvSpec, LayerNormSpec, LinearSpec, Op,
)
from .trace import BranchesOnInput, BranchesOnValues, Example, probe_example

__all__ = [
    "ADD", "AVGPOOL", "BATCHNORM", "CAT", "CONV", "GATE", "INPUT", "INPUT_CONV", "LAYOUT", "LINEAR", "MAXPOOL", "NORM",
    "OUTPUT", "PAD", "POINTWISE", "SPLIT", "STRUCTURAL", "UNKNOWN",
    "BatchNormSpec", "BranchesOnInput", "BranchesOnValues", "ConvSpec", "Example", "LayerNormSpec", "LinearSpec",
    "ModelGraph", "Op",
    "probe_example",
]
