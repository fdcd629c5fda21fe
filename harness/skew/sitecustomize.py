"""A wall clock moved by `OMEGA_TEST_CLOCK_SKEW_S` seconds for a Python process that has this
directory first on its PYTHONPATH (`harness.hosts.skewed_python_clock`): `time.time` and
`time.time_ns`, the only wall clocks the store, schedulers and agents read. Monotonic clocks
are left alone, as hosts differ in wall time only.

Not libfaketime: under it every clock read and every wait on the GIL goes through a lock and a
getenv, and a replica under the soak's load spent ten times the CPU of its peers and answered
its status in seconds (measured: three threads contending for the GIL ran 5-8x slower)."""

import os
import time

_skew = float(os.environ.get("OMEGA_TEST_CLOCK_SKEW_S", "0") or 0)
if _skew:
    _time, _time_ns = time.time, time.time_ns
    _skew_ns = int(_skew * 1e9)
    time.time = lambda: _time() + _skew
    time.time_ns = lambda: _time_ns() + _skew_ns
