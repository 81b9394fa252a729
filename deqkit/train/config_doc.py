"""The table of a config dataclass's options for the docs, made from its fields (types, defaults and the
``metadata["help"]`` of each), so docs/cli.md cannot drift from the code: ``python -m deqkit.train.config_doc``
prints the TrainConfig table that docs/cli.md holds verbatim (tested)."""

from __future__ import annotations

import argparse
import typing
from dataclasses import MISSING, fields, is_dataclass

from deqkit.train.config import TrainConfig, _type_name


def _default(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, str):
        return value
    return repr(value)


def options_markdown(cls: type = TrainConfig, prefix: str = "train.") -> str:
    """A markdown table: key, type, default and meaning of every field of ``cls`` (nested dataclasses
    flattened into dotted keys)."""
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in fields(cls):
        tp = hints[f.name]
        if is_dataclass(tp):
            rows += options_markdown(tp, f"{prefix}{f.name}.").splitlines()[2:]
            continue
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        meaning = f.metadata.get("help", "").replace("|", "\\|")
        type_name = _type_name(tp).replace("|", "\\|")
        rows.append(f"| `{prefix}{f.name}` | {type_name} | `{_default(default)}` | {meaning} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description="Print the options table of TrainConfig (markdown).")
    parser.parse_args()
    print(options_markdown())


if __name__ == "__main__":
    main()
