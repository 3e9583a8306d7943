"""Target sensitivity (Sixt et al., ICML 2020; Quantus ``RandomLogit``): does the map change with the class?

For a unit (image, ground-truth class) the map of that class is compared with the map of another
class, a class *absent* from the image (for ImageNet: any class but the ground truth):

* ``random``: drawn uniformly from the absent classes by ``numpy.random.default_rng([seed, image
  index, class])``, so it is the same in every run, batch and process;
* ``second``: the absent class the model ranks highest — the model's second choice when its top-1
  is the ground truth, its top-1 when it is wrong.

Similarity: SSIM and Spearman rank correlation of the two maps (those of :mod:`.sensitivity`);
lower = more class-sensitive, identical maps give 1.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from .sensitivity import similarity

CONTRASTS = ("random", "second")
MEASURES = ("ssim", "spearman")


def random_class(present: Iterable[int], classes: int, seed: int, index: int, label: int) -> int:
    """A class not in ``present``, uniform over the others, fixed by (seed, image index, label)."""
    absent = np.setdiff1d(np.arange(classes), np.fromiter(present, dtype=np.int64))
    if absent.size == 0:
        raise ValueError("every class is present in the image; there is no other class to explain.")
    rng = np.random.default_rng([seed, index, label])
    return int(absent[rng.integers(absent.size)])


def second_choice(logits: Tensor, present: Iterable[int]) -> int:
    """The class the model ranks highest among those not in ``present`` (``logits``: (classes,);
    ties: lower class index)."""
    scores = logits.detach().double().cpu().clone()
    scores[torch.tensor(sorted(set(present)), dtype=torch.long)] = -torch.inf
    return int(torch.argmax(scores))


def target_similarity(reference: Tensor | np.ndarray, other: Tensor | np.ndarray) -> dict[str, float | None]:
    """SSIM and Spearman ρ between two (H, W) maps; None where undefined (a constant map for Spearman)."""
    a = np.asarray(torch.as_tensor(reference).detach().cpu().double())
    b = np.asarray(torch.as_tensor(other).detach().cpu().double())
    values = {m: similarity(a, b, m) for m in MEASURES}
    return {m: (None if v != v else float(v)) for m, v in values.items()}


def summarise(results: Sequence[dict], contrast: str) -> dict:
    """Mean, median and quartiles per measure over the units' ``results[contrast]``; ``all`` = mean SSIM."""
    out: dict = {"difficult": None, "per_class": {}, "contrast": contrast}
    for measure in MEASURES:
        values = np.array([r[contrast][measure] for r in results if r[contrast][measure] is not None], dtype=float)
        out[measure] = {
            "mean": float(values.mean()) if values.size else None,
            "quartiles": [float(q) for q in np.percentile(values, [25, 50, 75])] if values.size else None,
            "units": int(values.size),
            "undefined": len(results) - int(values.size),
        }
    out["all"] = out["ssim"]["mean"]
    out["units"] = len(results)
    out["note"] = "similarity to the map of another class; lower = more class-sensitive, identical maps = 1"
    return out
