"""Tables of the CLI's results and the number format they share (rich only: importing this stays fast)."""

from __future__ import annotations

import math
from typing import Any, Mapping

from rich.table import Table


def fmt(value: Any) -> str:
    """Numbers for tables: 4 significant digits, scientific when tiny or huge."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.3e}"
        return f"{value:.4g}"
    return str(value)


def key_value_table(title: str, rows: Mapping[str, Any]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows.items():
        table.add_row(key, fmt(value))
    return table


def path_lines(paths: Mapping[str, Any]) -> str:
    """``name: path`` lines, names padded to one width: paths are printed whole (never cut by a table's
    column), so they can be copied in any terminal width; print with ``soft_wrap=True``."""
    width = max((len(name) for name in paths), default=0)
    return "\n".join(f"{name + ':':<{width + 1}} {value}" for name, value in paths.items())


def wrapped(text: str, width: int, indent: str, first_indent: str | None = None) -> str:
    """``text`` wrapped to ``width`` columns, lines indented by ``indent`` (the first by ``first_indent``)."""
    import textwrap

    first = indent if first_indent is None else first_indent
    return textwrap.fill(" ".join(text.split()), width=max(width, len(indent) + 20), initial_indent=first,
                         subsequent_indent=indent)
