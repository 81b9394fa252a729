"""The application protocol: one object that tells the trainer how to build, train, score and draw a model.

An application is a folder (``applications/<name>/`` or ``examples/<name>/``) whose ``app.py`` or
``__init__.py`` defines ``APP = Application(...)``. The core never imports applications by name: it loads
them from a path given on the command line, or finds a folder of that name in the usual places.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn
from torch.utils.data import Dataset

from deqkit.train.config import TrainConfig, _hints, resolve_config
from deqkit.train.errors import ApplicationError

Batch = Any  # whatever the dataset's collated batch is (a tensor, tuple or dict of tensors)


@dataclass(frozen=True)
class Application:
    """Everything the trainer needs to know about one model family.

    ``config_type`` is a dataclass with a ``train: TrainConfig`` field; ``presets`` maps a preset name to
    overrides of its defaults (nested dicts or dotted keys) and must contain ``"smoke"`` (seconds, for
    tests) and ``default_preset`` (a CPU run that visibly learns in minutes).

    - ``build_model(config) -> nn.Module``
    - ``build_dataset(config, split) -> Dataset`` for ``split`` in ``splits``; item ``i`` must be a
      deterministic function of ``i`` and the config so that resumed runs see the same data
    - ``loss(model, batch, config) -> (loss: Tensor[], logs: dict[str, float])``
    - ``metrics(model, batch, config) -> dict[str, Tensor[B]]`` per-sample values, averaged by the trainer
    - ``visualize(model, batch, config, path) -> None`` writes one PNG (optional)
    - ``summarize(outputs, config) -> dict[str, float]`` dataset-level metrics (optional): ``outputs`` is
      the list of every batch's ``metrics`` dict (detached, on the CPU) of one evaluation; its values are
      added to the per-sample means (e.g. average precision, which is not a mean over samples). Entries of
      ``metrics`` whose key starts with ``_`` are kept for ``summarize`` only and never averaged.
    - ``param_groups(model, config) -> list[dict]`` optimiser parameter groups (optional), e.g. a
      different learning rate per part: each dict has ``params`` and may set ``lr`` (default
      ``train.lr``), ``weight_decay`` and ``warmup`` (steps, default ``train.warmup``); together the
      groups must hold every trainable parameter exactly once
    """

    name: str
    config_type: type
    build_model: Callable[[Any], nn.Module]
    build_dataset: Callable[[Any, str], Dataset]
    loss: Callable[[nn.Module, Batch, Any], tuple[torch.Tensor, Mapping[str, float]]]
    metrics: Callable[[nn.Module, Batch, Any], Mapping[str, torch.Tensor]]
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    default_preset: str = "cpu"
    visualize: Callable[[nn.Module, Batch, Any, Path], None] | None = None
    splits: tuple[str, ...] = ("train", "val", "test")
    description: str = ""
    collate: Callable[[list[Any]], Batch] | None = None  # None: torch's default_collate
    summarize: Callable[[list[Mapping[str, torch.Tensor]], Any], Mapping[str, float]] | None = None
    param_groups: Callable[[nn.Module, Any], list[dict[str, Any]]] | None = None  # None: one group
    path: Path | None = None  # the folder it was loaded from (set by the loader)

    def __post_init__(self) -> None:
        if not is_dataclass(self.config_type):
            raise ApplicationError(f"application '{self.name}': config_type must be a dataclass")
        if _hints(self.config_type).get("train") is not TrainConfig:
            raise ApplicationError(f"application '{self.name}': config_type {self.config_type.__name__} "
                                   "needs a field `train: TrainConfig`")
        for required in ("smoke", self.default_preset):
            if required not in self.presets:
                raise ApplicationError(f"application '{self.name}' has no preset '{required}'; "
                                       f"it defines: {', '.join(self.presets) or 'none'}")
        if "train" not in self.splits:
            raise ApplicationError(f"application '{self.name}' must provide a 'train' split")

    def make_config(self, preset: str | None = None, sets: list[str] | tuple[str, ...] = ()) -> Any:
        """The resolved config: defaults <- preset overrides <- ``key=value`` strings."""
        name = preset or self.default_preset
        if name not in self.presets:
            raise ApplicationError(f"unknown preset '{name}' for application '{self.name}'; "
                                   f"valid presets: {', '.join(self.presets)}")
        return resolve_config(self.config_type, overrides=self.presets[name], sets=sets)


# ------------------------------------------------------------------------------------------- loading


def search_roots() -> list[Path]:
    """Folders searched for applications by name: ``applications/`` and ``examples/`` under the current
    directory, under ``$DEQKIT_APPS`` entries (os.pathsep-separated), and next to the deqkit package."""
    roots: list[Path] = []
    for entry in os.environ.get("DEQKIT_APPS", "").split(os.pathsep):
        if entry:
            roots.append(Path(entry))
    repo = Path(__file__).resolve().parents[2]
    for base in (Path.cwd(), repo):
        roots += [base / "applications", base / "examples"]
    unique: list[Path] = []
    for root in roots:
        resolved = root.resolve()
        if resolved.is_dir() and resolved not in unique:
            unique.append(resolved)
    return unique


def _is_app_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "app.py").is_file() or (path / "__init__.py").is_file())


def find_application_dir(spec: str | os.PathLike) -> Path:
    """Resolve ``spec`` (a folder path, an ``app.py`` path, or a bare name) to an application folder."""
    path = Path(spec)
    if path.is_file() and path.suffix == ".py":
        path = path.parent
    if _is_app_dir(path):
        return path.resolve()
    bare = os.sep not in str(spec) and "/" not in str(spec)
    if bare:  # a bare name: a folder of that name here that is no application (e.g. a run directory) is skipped
        for root in search_roots():
            if _is_app_dir(root / str(spec)):
                return (root / str(spec)).resolve()
    if path.exists():
        raise ApplicationError(f"{spec} is not an application folder (no app.py or __init__.py)")
    names = ", ".join(sorted({p.name for p, _ in discover()})) or "none found"
    raise ApplicationError(f"no application '{spec}' (not a folder, and not a name under "
                           f"applications/ or examples/); known applications: {names}")


def _import_dir(path: Path) -> Any:
    """Import the module that defines APP for the folder ``path``."""
    if (path / "__init__.py").is_file():
        # import as a package so the application can use relative imports; climb to the top package
        top, parts = path, [path.name]
        while (top.parent / "__init__.py").is_file():
            top = top.parent
            parts.insert(0, top.name)
        root = str(top.parent)
        if root not in sys.path:
            sys.path.insert(0, root)
        package = importlib.import_module(".".join(parts))
        if hasattr(package, "APP") or not (path / "app.py").is_file():
            return package
        return importlib.import_module(".".join(parts) + ".app")
    module_name = f"_deqkit_app_{abs(hash(str(path)))}_{path.name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up here
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))  # sibling modules of app.py
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def load_application(spec: str | os.PathLike) -> Application:
    """Load the ``APP`` object of the application at a path or with a name (see :func:`search_roots`)."""
    path = find_application_dir(spec)
    try:
        module = _import_dir(path)
    except ApplicationError:
        raise
    except Exception as err:
        raise ApplicationError(f"cannot import application at {path}: {type(err).__name__}: {err}") from err
    app = getattr(module, "APP", None)
    if not isinstance(app, Application):
        raise ApplicationError(f"{path} does not define APP = deqkit.train.Application(...)")
    return dataclasses.replace(app, path=path)


def discover() -> list[tuple[Path, Application | str]]:
    """Every application folder under the search roots, with its loaded APP or the reason it failed."""
    found: list[tuple[Path, Application | str]] = []
    seen: set[Path] = set()
    for root in search_roots():
        for child in sorted(root.iterdir()):
            if child.name.startswith((".", "_")) or not _is_app_dir(child) or child.resolve() in seen:
                continue
            seen.add(child.resolve())
            try:
                found.append((child.resolve(), load_application(child)))
            except Exception as err:  # listing should not stop at one broken folder
                found.append((child.resolve(), " ".join(str(err).split())))
    return found
