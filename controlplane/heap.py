"""The Python heap in a long-lived process: pausing the cyclic garbage collector for a burst.

A reconcile pass over 10,000 desktops builds some 100,000 short-lived containers (rows, views,
host listings). Each 700 allocations start a collection, and objects that live through a few of
them (everything a pass holds until it ends) are promoted until the collector walks the whole
heap, import-time objects included (some 180,000 in `shiftdesk serve`). Measured with
bench/scale.py's 50 hosts and 10,000 desktops: the collector took about 0.4 s of a 0.9 s idle
pass. Paused for the pass, almost everything it built is freed by reference counting when the
pass ends, and the collector finds little left when it next runs.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause cyclic garbage collection in the block (reference counting goes on: only cycles wait
    for the next collection after it). A collector someone else disabled stays disabled; blocks
    in several threads at once end with it enabled once the first that paused it ends."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
