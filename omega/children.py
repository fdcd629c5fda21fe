"""Child processes that never outlive the process that started them (Linux).

`omega up` supervises a cell's parts; if it is killed (SIGKILL, an OOM kill, a
crash) nothing it could run on the way out would stop them. So each child is
armed before it runs: `PR_SET_PDEATHSIG` makes the kernel send it SIGTERM when
its parent dies, and every part already stops cleanly on SIGTERM (an agent
stops its tasks first). The kernel ties that signal to the *thread* that forked
the child, not the process, so `spawn` must run on a thread that lives as long
as the supervisor: the main thread, where `trio.run` runs. (trio's own
`open_process` forks in a worker thread, which trio retires when idle, and
with it would go every child it started.) `wait` then waits for the child on a
pidfd, without a thread.

`output_closed` notices that whoever reads our output is gone: the write end
of a pipe polls as an error once no reader is left.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

import trio

PR_SET_PDEATHSIG = 1
OUTPUT_POLL_S = 1.0


def _armed(parent: int) -> Callable[[], None]:
    """In the child, between fork and exec: SIGTERM when `parent` dies; and if it died
    already (before the signal was armed), exit now rather than run unsupervised."""

    def arm() -> None:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(1)

    return arm


def spawn(
    argv: Sequence[str], *, stdout: IO[Any] | int, env: Mapping[str, str]
) -> subprocess.Popen[bytes]:
    """Start `argv` in its own session (a Ctrl-C meant for the supervisor is not its), with
    stdout and stderr to `stdout`, armed to get SIGTERM when this process dies.

    Raises RuntimeError off the main thread, where the arming would not hold (see above)."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("children are spawned from the main thread (PR_SET_PDEATHSIG)")
    return subprocess.Popen(
        list(argv),
        stdout=stdout,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=dict(env),
        start_new_session=True,
        preexec_fn=_armed(os.getpid()) if sys.platform == "linux" else None,
    )


async def wait(process: subprocess.Popen[bytes]) -> int:
    """Wait for `process` to exit (reaping it) and return its exit code; cancellable."""
    if process.returncode is not None:
        return process.returncode
    try:
        fd = os.pidfd_open(process.pid)
    except ProcessLookupError:
        return process.wait()
    try:
        await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)
    return process.wait()


async def output_closed(stream: IO[str]) -> None:
    """Return once `stream` is a pipe whose reader has gone; never, for anything else."""
    try:
        fd = stream.fileno()
        is_pipe = stat.S_ISFIFO(os.fstat(fd).st_mode)
    except (OSError, ValueError):
        is_pipe = False
    if not is_pipe:
        await trio.sleep_forever()
    # Polled, not awaited: trio's wait_writable does not wake on an error alone on a pipe
    # with room in it, and once a second is soon enough to stop.
    while not _reader_gone(fd):
        await trio.sleep(OUTPUT_POLL_S)


def _reader_gone(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))


def silence_closed_outputs() -> None:
    """Point standard output and error at /dev/null where their reader is gone, so that
    logging on the way out does not die of a broken pipe."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            fd = stream.fileno()
            if stat.S_ISFIFO(os.fstat(fd).st_mode) and _reader_gone(fd):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, fd)
                os.close(devnull)
