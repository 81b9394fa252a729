"""deqkit: fixed-point solving and implicit gradients for iterative refinement models.

The public names load on first use, so that ``import deqkit`` does not import torch: the ``deqkit``
command starts at once and answers Ctrl-C during its start-up with one line (see :mod:`deqkit.cli.main`).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "ConfigError": "deqkit.errors",
    "DeqkitError": "deqkit.errors",
    "diagnose": "deqkit.diagnostics.report",
    "FixedPoint": "deqkit.fixed_point",
    "FixedPointRecord": "deqkit.fixed_point",
    "fixed_point": "deqkit.fixed_point",
    "SolveInfo": "deqkit.solvers.base",
}

__all__ = ["ConfigError", "DeqkitError", "FixedPoint", "FixedPointRecord", "SolveInfo", "__version__",
           "backward", "diagnose", "fixed_point", "solvers"]

if TYPE_CHECKING:
    from deqkit import backward, solvers
    from deqkit.diagnostics.report import diagnose
    from deqkit.errors import ConfigError, DeqkitError
    from deqkit.fixed_point import FixedPoint, FixedPointRecord, fixed_point
    from deqkit.solvers.base import SolveInfo


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if not name.startswith("_"):  # a submodule, e.g. deqkit.solvers or deqkit.pytree
        try:
            return importlib.import_module(f"deqkit.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"deqkit.{name}":
                raise
    raise AttributeError(f"module 'deqkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """Keeps ``deqkit.fixed_point`` the function: importing the submodule of the same name would otherwise
    rebind the package attribute to the module."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "fixed_point" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
