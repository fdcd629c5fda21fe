"""`omega up` driven as a user drives it: started in the background, used only
through `omega` commands, stopped with every process it started.

Tests hold one through the `up_cell` context manager, which also kills any
process left naming the cell's data dir, so no test leaves a cell behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
OMEGA = [sys.executable, "-m", "omega"]


class Cell:
    """`omega up` in the background, with the env its clients need."""

    def __init__(self, data_dir: Path, *args: str) -> None:
        """`args` are more `omega up` options (`--agents 2` unless given)."""
        self.data_dir = data_dir
        self.args = args if "--agents" in args else ("--agents", "2", *args)
        self.proc: subprocess.Popen[str] | None = None
        self.env: dict[str, str] = {}
        self.output: list[str] = []

    def start(self, timeout: float = 120.0) -> None:
        env = {**os.environ}
        self.proc = subprocess.Popen(
            [
                *OMEGA,
                "up",
                "--data-dir",
                str(self.data_dir),
                "--heartbeat-timeout",
                "10",
                *self.args,
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.output.append(line)
            if line.startswith(("OMEGA_ADDR=", "OMEGA_TOKEN=", "OMEGA_CA=")):
                key, value = line.strip().split("=", 1)
                self.env[key] = value
            if line.startswith("cell ready"):
                return
        self.stop()
        raise AssertionError("omega up never became ready:\n" + "".join(self.output) + self.logs())

    def logs(self) -> str:
        out = []
        for path in sorted((self.data_dir / "logs").glob("*.log")):
            out.append(f"--- {path.name}\n" + path.read_text()[-2000:])
        return "\n".join(out)

    def omega(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess:
        try:
            result = subprocess.run(
                [*OMEGA, *args],
                cwd=ROOT,
                env={**os.environ, **self.env},
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(
                f"omega {' '.join(args)} still running after {timeout} s:\n"
                f"{exc.stdout!r}\n{exc.stderr!r}\n{self.logs()}"
            ) from None
        if check and result.returncode != 0:
            raise AssertionError(
                f"omega {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}\n{self.logs()}"
            )
        return result

    def omega_as(self, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
        """`omega ARGS` with `env` as its whole cell environment (another token, say); its
        exit status is the caller's to judge."""
        return subprocess.run(
            [*OMEGA, *args],
            cwd=ROOT,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )

    def json(self, *args: str):
        return json.loads(self.omega(*args, "--json").stdout)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        children = psutil.Process(self.proc.pid).children(recursive=True)
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        finally:
            for child in children:
                if child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
                    child.kill()
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        alive = [c.pid for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        assert not alive, f"omega up left processes behind: {alive}"


@contextlib.contextmanager
def up_cell(data_dir: Path, *args: str) -> Iterator[Cell]:
    """A `Cell` (not yet started) that is stopped, and swept of leftovers, on exit."""
    started = Cell(data_dir, *args)
    try:
        yield started
    finally:
        started.stop()
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = " ".join(proc.info["cmdline"] or [])
            if str(started.data_dir) in cmdline:
                proc.kill()


def wait_for(what: str, check: Callable[[], object], timeout: float = 90.0) -> object:
    """Poll `check` until it returns something true, and return that; fail naming `what`
    after `timeout` (a bound for a loaded CI machine, not a speed: it returns at once)."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)
