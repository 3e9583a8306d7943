"""The evaluation metrics in one place (implemented in small modules, one protocol each).

* pointing game (TorchRay semantics), "center" point, energy-based pointing game — :mod:`.pointing`;
* mIoU with a parameterised threshold — :mod:`.segmentation`;
* model sensitivity by cascading / independent randomisation — :mod:`.sensitivity`;
* insertion / deletion AUC — :mod:`.insdel`.
"""

from __future__ import annotations

from .insdel import auc, blur, causal_curve
from .pointing import (
    TOLERANCE,
    PointingUnit,
    argmax_point,
    center_point,
    energy_proportion,
    hit,
    is_constant,
    pointing_accuracy,
)
from .segmentation import (
    SegmentationUnit,
    Threshold,
    average_precision,
    confusion,
    foreground,
    miou_scores,
    prepare,
    unit_average_precision,
)
from .sensitivity import (
    MEASURES,
    SensitivityCurves,
    model_sensitivity,
    randomisation_units,
    randomise_unit,
    randomised_models,
    similarity,
)

__all__ = [
    "MEASURES",
    "TOLERANCE",
    "PointingUnit",
    "SegmentationUnit",
    "SensitivityCurves",
    "Threshold",
    "argmax_point",
    "auc",
    "average_precision",
    "blur",
    "causal_curve",
    "center_point",
    "confusion",
    "energy_proportion",
    "foreground",
    "hit",
    "is_constant",
    "miou_scores",
    "model_sensitivity",
    "pointing_accuracy",
    "prepare",
    "randomisation_units",
    "randomise_unit",
    "randomised_models",
    "similarity",
    "unit_average_precision",
]
