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
