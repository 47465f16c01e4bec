"""The capacity plot: head-count, planned desktops and actual desktops over time (PNG or SVG).

Used by `shiftdesk schedule plan --png/--svg` and the console's capacity view. Rendering only;
the numbers come from services.scaling.plan.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any


def render(pool: str, points: Sequence[Any], actual: int, fmt: str = "png") -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    times = [p.at for p in points]
    fig, ax = plt.subplots(figsize=(10, 4), dpi=100)
    ax.step(times, [p.headcount for p in points], where="post", label="rostered agents", color="#8a94a6")
    ax.step(times, [p.desired for p in points], where="post", label="desktops planned", color="#1f6feb")
    ax.axhline(actual, linestyle="--", color="#d1242f", label=f"desktops now ({actual})")
    ax.set_title(f"Pool {pool}: planned capacity")
    ax.set_ylabel("desktops")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.autofmt_xdate()
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, bbox_inches="tight", metadata={"Date": None} if fmt == "svg" else None)
    plt.close(fig)
    return buf.getvalue()
