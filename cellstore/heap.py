"""The garbage-collector policy of the cell's long-lived processes (replicas, schedulers,
agents), which each hold a whole `CellState`: millions of objects at 100,000 machines.

CPython's oldest-generation collection walks every tracked object. With 100,000 machines and
300,000 tasks in a replica it took 1 s, and ran every few commands while a burst of jobs was
being submitted: half the time spent applying them, and pauses long enough to miss
heartbeats, so that a loaded cell held elections back to back. The cell state holds no
reference cycles (a test checks that applying commands leaves no cyclic garbage), so the
objects that need the cycle collector are the short-lived ones of the I/O stack, which die
young. The young generations keep collecting as before; the oldest is collected only on
request (`collect_all`), never by allocation counts.
"""

from __future__ import annotations

import gc

# Young collections: every 10,000 allocations net of frees, the middle one every 20 of those.
# The oldest generation's count never reaches its threshold.
YOUNG_THRESHOLD = 10_000
MIDDLE_THRESHOLD = 20
NEVER = 2**31 - 1


def tune_for_large_heaps() -> None:
    """Collect the young generations only (see the module docstring); call once at start."""
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, NEVER)


def collect_all() -> int:
    """A full collection, for a quiet moment; the number of unreachable objects found."""
    return gc.collect()
