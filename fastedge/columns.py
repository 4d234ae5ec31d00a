"""Plain aligned columns for people (the command-line tools; scripts use
their ``--json``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["table"]


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> list[str]:
    """``rows`` under ``header``, one line each, columns padded to align
    (``None`` shows as ``-``)."""
    cells = [[str(h) for h in header]] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
