"""relprop: relevance propagation explanations for PyTorch image classifiers.

Relative Sectional Propagation (RSP) and Attribution Equilibrium (AE) by Nam, Choi and Lee, on
unmodified torchvision CNNs, batched.
"""

from .errors import InputError, RelpropError, UnsupportedLayerError
from .interop import explain
from .methods.ae import AE, AttributionEquilibrium
from .methods.cam import GradCAM, GradCAMPlusPlus
from .methods.gradient import Gradient, GradientXInput, GuidedBackprop, IntegratedGradients, SmoothGrad
from .methods.lrp import (
    LRP, LRPAlpha1Beta0, LRPAlpha2Beta1, LRPAlphaBeta, LRPComposite, LRPEpsilon, LRPGamma, LRPZPlus,
)
from .methods.rap import RAP
from .methods.rsp import RSP
from .registry import get_method, list_methods

__all__ = [
    "AE", "AttributionEquilibrium", "InputError", "RSP", "RelpropError", "UnsupportedLayerError",
    "LRP", "LRPAlpha1Beta0", "LRPAlpha2Beta1", "LRPAlphaBeta", "LRPComposite", "LRPEpsilon", "LRPGamma",
    "LRPZPlus", "RAP",
    "GradCAM", "GradCAMPlusPlus", "Gradient", "GradientXInput", "GuidedBackprop", "IntegratedGradients",
    "SmoothGrad", "explain",
    "get_method", "list_methods",
]
__version__ = "0.1.0"


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    """``relprop.viz`` and ``relprop.coverage`` on first use, so that ``import relprop`` does not load
    the plotting module or the model checks."""
    if name in ("viz", "coverage"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
