"""relprop: relevance propagation explanations for PyTorch image classifiers.

Relative Sectional Propagation (RSP) and Attribution Equilibrium (AE) by Nam, Choi and Lee, on
unmodified torchvision CNNs, batched.
"""

from .errors import InputError, RelpropError, UnsupportedLayerError
from .methods.ae import AE, AttributionEquilibrium
from .methods.rsp import RSP
from .registry import get_method, list_methods

__all__ = [
    "AE", "AttributionEquilibrium", "InputError", "RSP", "RelpropError", "UnsupportedLayerError",
    "get_method", "list_methods",
]
__version__ = "0.1.0"
