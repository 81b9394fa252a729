"""The application protocol: one object that tells the trainer how to build, train, score and draw a model.

An application is a folder (``applications/<name>/`` or ``examples/<name>/``) whose ``app.py`` or
``__init__.py`` defines ``APP = Application(...)``, or an installed package's entry point in the group
``deqkit.applications``. The core never imports an application by itself: it loads the one the user names,
and a checkpoint's stored name only selects among installed or user-listed applications (see below).
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
#
# Two ways in. `load_application(spec)` takes what the user typed: a folder, an app.py, or a bare name
# looked up in the places below. `load_registered(name)` takes a name read from a checkpoint or run
# directory, which is data and may come from anyone: it looks only where the user or an installed package
# put applications ($DEQKIT_APPS, the `deqkit.applications` entry points, a source checkout's own folders),
# never in the current directory and never at a path the file names.

ENTRY_POINT_GROUP = "deqkit.applications"


def _env_roots() -> list[Path]:
    """The ``$DEQKIT_APPS`` entries (os.pathsep-separated): folders of applications, or application folders."""
    return [Path(entry) for entry in os.environ.get("DEQKIT_APPS", "").split(os.pathsep) if entry]


def _checkout_roots() -> list[Path]:
    """``applications/`` and ``examples/`` of the source checkout deqkit runs from (none for a wheel install)."""
    repo = Path(__file__).resolve().parents[2]
    if not (repo / "pyproject.toml").is_file() or not (repo / "deqkit" / "train").is_dir():
        return []
    return [repo / "applications", repo / "examples"]


def _unique_dirs(roots: list[Path]) -> list[Path]:
    unique: list[Path] = []
    for root in roots:
        resolved = root.resolve()
        if resolved.is_dir() and resolved not in unique:
            unique.append(resolved)
    return unique


def search_roots() -> list[Path]:
    """Folders searched for an application a user names: ``$DEQKIT_APPS``, ``./applications``, ``./examples``,
    then the source checkout's ``applications/`` and ``examples/`` (installed entry points come before those)."""
    return _unique_dirs(_env_roots() + [Path.cwd() / "applications", Path.cwd() / "examples"] + _checkout_roots())


def _is_app_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "app.py").is_file() or (path / "__init__.py").is_file())


def _dir_named(name: str, roots: list[Path]) -> Path | None:
    """The application folder called ``name`` in one of ``roots`` (a root may be that folder itself)."""
    for root in roots:
        for candidate in (root / name, root):
            if candidate.name == name and _is_app_dir(candidate):
                return candidate.resolve()
    return None


def _is_bare(spec: str | os.PathLike) -> bool:
    text = str(spec)
    return bool(text) and os.sep not in text and "/" not in text and text not in (".", "..")


def registered() -> dict[str, Any]:
    """The entry points of group ``deqkit.applications`` by name (installed packages' applications)."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _load_entry_point(name: str, entry: Any) -> Application:
    try:
        app = entry.load()
    except Exception as err:
        raise ApplicationError(f"cannot import application '{name}' ({entry.value}): {type(err).__name__}: "
                               f"{' '.join(str(err).split())}") from err
    if not isinstance(app, Application):
        raise ApplicationError(f"entry point '{name}' ({entry.value}) is not a deqkit.train.Application")
    if app.name != name:
        raise ApplicationError(f"entry point '{name}' ({entry.value}) defines application '{app.name}'; "
                               "an application's entry point must carry its name")
    module = sys.modules.get(app.build_model.__module__)
    path = Path(module.__file__).resolve().parent if module is not None and getattr(module, "__file__", None) \
        else None
    return dataclasses.replace(app, path=path)


def _by_name(app: Application, name: str, where: Path | str) -> Application:
    """One name everywhere: an application found by name must call itself that name."""
    if app.name != name:
        raise ApplicationError(f"{where} defines application '{app.name}', not '{name}'; an application's "
                               f"folder carries its name (rename one of them, or pass the folder's path)")
    return app


def find_application_dir(spec: str | os.PathLike) -> Path:
    """Resolve a user's ``spec`` (a folder path, an ``app.py`` path, or a bare name) to an application folder
    (raises for a name that only an installed entry point provides: see :func:`load_application`)."""
    path = Path(spec)
    if path.is_file() and path.suffix == ".py":
        path = path.parent
    if _is_app_dir(path):
        return path.resolve()
    if _is_bare(spec):  # a bare name: a folder of that name here that is no application (e.g. a run directory) is skipped
        found = _dir_named(str(spec), search_roots())
        if found is not None:
            return found
    if path.exists():
        raise ApplicationError(f"{spec} is not an application folder (no app.py or __init__.py)")
    raise ApplicationError(f"no application '{spec}' (not a folder, and not a name under $DEQKIT_APPS, "
                           f"applications/ or examples/); known applications: {_known_names()}")


def _known_names() -> str:
    names = set(registered())
    for root in search_roots():
        names |= {child.name for child in root.iterdir() if _is_app_dir(child) and not child.name.startswith(("_", "."))}
    return ", ".join(sorted(names)) or "none found"


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
    """The application a user named: a folder or ``app.py`` path, or a bare name found in ``$DEQKIT_APPS``,
    ``./applications``, ``./examples``, the installed ``deqkit.applications`` entry points, or the source
    checkout (in that order)."""
    path = Path(spec)
    if _is_bare(spec) and not _is_app_dir(path):
        name = str(spec)
        local = _dir_named(name, _unique_dirs(_env_roots() + [Path.cwd() / "applications", Path.cwd() / "examples"]))
        if local is not None:
            return _by_name(_load_dir(local), name, local)
        entries = registered()
        if name in entries:
            return _load_entry_point(name, entries[name])
    folder = find_application_dir(spec)
    app = _load_dir(folder)
    return _by_name(app, str(spec), folder) if _is_bare(spec) and not _is_app_dir(path) else app


def load_registered(name: str, *, hint: str = "") -> Application:
    """The application called ``name`` (read from a checkpoint) from ``$DEQKIT_APPS``, the installed entry
    points or the source checkout only: data never decides which code is imported."""
    folder = _dir_named(name, _unique_dirs(_env_roots()))
    if folder is not None:
        return _by_name(_load_dir(folder), name, folder)
    entries = registered()
    if name in entries:
        return _load_entry_point(name, entries[name])
    folder = _dir_named(name, _unique_dirs(_checkout_roots()))
    if folder is not None:
        return _by_name(_load_dir(folder), name, folder)
    raise ApplicationError(f"application '{name}' is not installed{hint}; name it with --app FOLDER|NAME, or add "
                           f"the folder that holds it to $DEQKIT_APPS (installed: {', '.join(sorted(entries)) or 'none'})")


def _load_dir(path: Path) -> Application:
    """Import the folder's module and return its ``APP`` with ``path`` set."""
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


def discover() -> list[tuple[Path | str, Application | str]]:
    """Every application a user can name: folders under the search roots, then installed entry points not
    shadowed by a folder of the same name, each with its loaded APP or the reason it failed."""
    found: list[tuple[Path | str, Application | str]] = []
    seen: set[Path] = set()
    names: set[str] = set()
    for root in search_roots():
        for child in sorted(root.iterdir()):
            if child.name.startswith((".", "_")) or not _is_app_dir(child) or child.resolve() in seen:
                continue
            seen.add(child.resolve())
            try:
                app = _load_dir(child.resolve())
                found.append((child.resolve(), app))
                names.add(app.name)
            except Exception as err:  # listing should not stop at one broken folder
                found.append((child.resolve(), " ".join(str(err).split())))
    for name, entry in sorted(registered().items()):
        if name in names:
            continue
        try:
            found.append((f"entry point {entry.value}", _load_entry_point(name, entry)))
        except Exception as err:
            found.append((f"entry point {entry.value}", " ".join(str(err).split())))
    return found
