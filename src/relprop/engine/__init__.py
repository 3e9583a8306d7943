"""The relevance engine: trace → canonicalise → plan → one recording forward pass → one reverse walk.

A method is a :class:`Seed` (where relevance starts) plus a :class:`RuleTable` (op kind or module
type → :class:`Rule`); see docs/methods.md, section "The pipeline".
"""

from .graph import (
    ADD, AVGPOOL, BATCHNORM, CAT, CONV, GATE, INPUT_CONV, LAYOUT, LINEAR, MAXPOOL, NORM, PAD, POINTWISE, STRUCTURAL,
    ModelGraph, Op,
)
from .forward import record_forward
from .seeds import ChannelContributionSeed, FeatureMapSeed, HostileSeed, LogitSeed, LogitSplitSeed, Seed, default_seed_layer
from .standard import STANDARD_TABLE, Bounds, PassThrough, ZBox
from .table import Needs, Rule, RuleTable, Step
from .walk import Engine

__all__ = [
    "ADD", "AVGPOOL", "BATCHNORM", "CAT", "CONV", "GATE", "INPUT_CONV", "LAYOUT", "LINEAR", "MAXPOOL", "NORM", "PAD",
    "POINTWISE", "STRUCTURAL",
    "Bounds", "ChannelContributionSeed", "Engine", "FeatureMapSeed", "HostileSeed", "LogitSeed", "LogitSplitSeed", "ModelGraph", "Needs", "Op", "PassThrough", "Rule",
    "RuleTable", "STANDARD_TABLE", "Seed", "Step", "ZBox", "default_seed_layer", "record_forward",
]
