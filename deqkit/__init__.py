"""deqkit: fixed-point solving and implicit gradients for iterative refinement models."""

from deqkit import backward, solvers
from deqkit.errors import ConfigError, DeqkitError
from deqkit.fixed_point import FixedPoint, FixedPointRecord, fixed_point
from deqkit.solvers.base import SolveInfo

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DeqkitError",
    "FixedPoint",
    "FixedPointRecord",
    "SolveInfo",
    "__version__",
    "backward",
    "fixed_point",
    "solvers",
]
