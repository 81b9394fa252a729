"""Errors deqkit raises on purpose; each message is one line saying what was wrong and what would be right."""

from __future__ import annotations

from typing import Iterable, Mapping, TypeVar

T = TypeVar("T")


class DeqkitError(Exception):
    """Base class of deqkit's own errors (the CLI prints these as one line and exits non-zero)."""


class ConfigError(DeqkitError, ValueError):
    """An unknown option name or an invalid option value."""


def unknown_choice(kind: str, got: object, valid: Iterable[str]) -> ConfigError:
    """Build the error for a name that is not one of ``valid``, listing the valid ones."""
    return ConfigError(f"unknown {kind} {got!r}; valid choices: {', '.join(sorted(valid))}")


def reject_unknown_options(where: str, unknown: dict, valid: Iterable[str]) -> None:
    """Raise a ConfigError naming the first unknown keyword option and the valid ones."""
    if unknown:
        key = next(iter(unknown))
        raise ConfigError(f"unknown option {key!r} for {where}; valid options: {', '.join(sorted(valid))}")


def resolve_choice(kind: str, value: str | T, registry: Mapping[str, type[T]], base: type[T]) -> T:
    """An object from a registered name (built with default parameters) or the object itself."""
    if isinstance(value, base):
        return value
    if isinstance(value, str) and value in registry:
        return registry[value]()
    raise unknown_choice(kind, value, registry)


class CheckedOptions:
    """Base of option objects (solvers, gradient estimators, linear solvers) that are dataclasses: an
    unknown keyword or too many positional arguments is a :class:`ConfigError` naming the valid options,
    the same error ``fixed_point`` gives, instead of Python's ``TypeError``."""

    def __new__(cls, *args: object, **kwargs: object):
        # the common path reads one dict, so building an option object under torch.compile stays traceable
        known = getattr(cls, "__dataclass_fields__", None)
        if known is not None and (len(args) > len(known) or any(key not in known for key in kwargs)):
            _reject_options(cls, args, kwargs)
        return super().__new__(cls)


def _reject_options(cls: type, args: tuple, kwargs: dict) -> None:
    import dataclasses

    names = [f.name for f in dataclasses.fields(cls) if f.init]
    where = f"{cls.__name__}()"
    reject_unknown_options(where, {k: v for k, v in kwargs.items() if k not in names}, names)
    if len(args) > len(names):
        raise ConfigError(f"{where} takes at most {len(names)} positional options ({', '.join(names) or 'none'}), "
                          f"got {len(args)}")
