"""Health probes: one try of a job's check against one running task.

A check (`cellstate.model.HealthCheck`) is exactly one of:
- `exec`: the command runs in the task's directory with the task's environment
  (and as the task's user); exit status 0 passes. It runs in its own process
  group, killed outright when the timeout falls, so a hung check leaves nothing.
- `http`: `GET <path>` to 127.0.0.1 on the task's port; a 2xx or 3xx status passes.
- `tcp`: a connection to 127.0.0.1 on the task's port is accepted.

A task declares its port by writing it (decimal, nothing else needed) to the
file the agent names in `$OMEGA_PORT_FILE`: `port`, relative to the task's
directory, which is where the task starts.
Until that file holds a port, an http or tcp probe says None: the task is not
healthy *yet*, which is not a failure (a server still starting is not broken).

Every probe is bounded by the check's `timeout` on trio's clock and never
raises for what the task does: a refused connection, a reset, a garbled reply,
a command that cannot start are all plain failures. The loop that runs probes
every `interval` and turns them into verdicts lives with the executor that
owns the task (`agents.executor`).
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

import trio

from cellstate.model import HealthCheck

PORT_FILE = "port"
_MAX_STATUS_LINE = 1024


def read_port(task_dir: Path) -> int | None:
    """The port the task wrote to its port file, or None if there is none (yet)."""
    try:
        text = (task_dir / PORT_FILE).read_text().strip()
    except OSError:
        return None
    # A file being written may be empty or cut short: not a port yet.
    if not text.isdigit() or not 0 < int(text) < 65536:
        return None
    return int(text)


async def probe(
    check: HealthCheck,
    task_dir: Path,
    env: Mapping[str, str],
    preexec: Callable[[], None] | None = None,
) -> bool | None:
    """Run one try of `check` against the task living in `task_dir`.

    Returns True (passed), False (failed or timed out), or None when an http or
    tcp check finds no port declared yet. Cancellation kills an exec check's
    process group before it propagates."""
    if check.exec:
        return await _exec(check.exec, check.timeout, task_dir, env, preexec)
    port = read_port(task_dir)
    if port is None:
        return None
    with trio.move_on_after(check.timeout):
        try:
            if check.http:
                return await _http(port, check.http)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.aclose()
            return True
        except (OSError, trio.BrokenResourceError):
            return False
    return False


async def _exec(
    argv: tuple[str, ...],
    timeout: float,
    task_dir: Path,
    env: Mapping[str, str],
    preexec: Callable[[], None] | None,
) -> bool:
    async def kill_group(process: trio.Process) -> None:
        # The check's own session: its pid is its process group.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            process.kill()

    with trio.move_on_after(timeout):
        try:
            done = await trio.run_process(
                list(argv),
                check=False,
                cwd=task_dir,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=preexec,
                deliver_cancel=kill_group,
            )
        except (OSError, subprocess.SubprocessError, ValueError):
            # (ValueError: an argument or environment the kernel cannot be given.) A check
            # that cannot run fails; it never takes the agent down.
            return False
        return done.returncode == 0
    return False


async def _http(port: int, path: str) -> bool:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        request = (
            f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n"
            "User-Agent: omega-agent\r\nConnection: close\r\n\r\n"
        )
        await stream.send_all(request.encode("latin-1"))
        head = b""
        while b"\r\n" not in head and len(head) < _MAX_STATUS_LINE:
            chunk = await stream.receive_some(_MAX_STATUS_LINE)
            if not chunk:
                break
            head += chunk
    parts = head.split(b"\r\n", 1)[0].split()
    return len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1][:1] in (b"2", b"3")
