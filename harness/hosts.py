"""Stand-ins for separate hosts on one machine: a skewed clock per process (libfaketime), and
network namespaces joined by a bridge (`Hosts`), each process of a cell on an address of its
own, links that drop packets silently (netem) instead of TCP proxies that reset them.

Everything here is built by the test that uses it and torn down by it, by name and by pid:
namespace names carry a random suffix, so tests run in parallel; a namespace's processes are
killed before it is deleted, since `ip netns del` leaves them running.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
from pathlib import Path

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")


def skew_unavailable() -> str | None:
    """Why a clock cannot be skewed here, or None if it can."""
    if not LIBFAKETIME.exists():
        return f"{LIBFAKETIME} is missing: install Debian's faketime (./setup.sh host)"
    return None


def skewed_clock(offset: str) -> list[str]:
    """A command prefix that runs a program with its wall clock moved by `offset` ("+30s",
    "-30s"). `env` execs the program, so its pid is the program's (faketime(1) would fork and
    leave it behind when killed). Monotonic clocks are left alone: hosts differ in wall time."""
    return [
        "env",
        f"LD_PRELOAD={LIBFAKETIME}",
        f"FAKETIME={offset}",
        "FAKETIME_DONT_FAKE_MONOTONIC=1",
        "FAKETIME_NO_CACHE=1",
    ]


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None if they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"{tool} is missing: install Debian's iproute2 (./setup.sh host)"
    probe = f"omega-probe-{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _run(*args: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip()}")


class Hosts:
    """`n` hosts, each a network namespace with one veth on a bridge that lives in a namespace
    of its own (nothing is added to the test runner's namespace). Host i has address
    10.<net>.0.<i+1>/24; `exec_prefix(i)` runs a command there. Use as a context manager."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.tag = secrets.token_hex(3)
        # A /24 per run keeps parallel tests' namespaces apart even if a name were reused.
        self.net = int(self.tag[:2], 16) % 250 + 1
        self.switch = f"om-{self.tag}-sw"
        self.names = [f"om-{self.tag}-h{i}" for i in range(n)]
        self.addresses = [f"10.{self.net}.0.{i + 1}" for i in range(n)]
        self._made: list[str] = []
        self._pids: set[int] = set()

    def __enter__(self) -> Hosts:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        sw = self.switch
        _run("ip", "netns", "add", sw)
        self._made.append(sw)
        _run("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", sw, "link", "set", "br0", "up")
        for i, name in enumerate(self.names):
            _run("ip", "netns", "add", name)
            self._made.append(name)
            # Created inside the switch, then one end moved to the host: names stay local.
            _run("ip", "-n", sw, "link", "add", f"p{i}", "type", "veth", "peer", "eth0")
            _run("ip", "-n", sw, "link", "set", "eth0", "netns", name)
            _run("ip", "-n", sw, "link", "set", f"p{i}", "master", "br0", "up")
            _run("ip", "-n", name, "addr", "add", f"{self.addresses[i]}/24", "dev", "eth0")
            _run("ip", "-n", name, "link", "set", "eth0", "up")
            _run("ip", "-n", name, "link", "set", "lo", "up")

    def exec_prefix(self, i: int) -> list[str]:
        """A command prefix that runs a program in host i (`ip netns exec` execs it: the pid
        is the program's)."""
        return ["ip", "netns", "exec", self.names[i]]

    def adopt(self, pid: int) -> None:
        """Kill `pid` at close if it is still running (every process started in a host)."""
        self._pids.add(pid)

    # -- links ---------------------------------------------------------------------------------

    def cut(self, i: int, *, inbound: bool = True, outbound: bool = True) -> None:
        """Drop host i's packets silently, both ways or one: no reset, no ICMP, as a pulled
        cable or a dead switch port looks to its peers."""
        if outbound:
            self.netem(i, "loss", "100%")
        if inbound:
            self._qdisc(self.switch, f"p{i}", "netem", "loss", "100%")

    def heal(self, i: int) -> None:
        """Undo `cut` and `netem` on host i's link."""
        for ns, dev in ((self.names[i], "eth0"), (self.switch, f"p{i}")):
            subprocess.run(
                ["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root"],
                capture_output=True,
            )

    def netem(self, i: int, *args: str) -> None:
        """Shape what host i sends with `tc netem` (`"delay", "50ms"`, `"loss", "5%"`)."""
        self._qdisc(self.names[i], "eth0", "netem", *args)

    def _qdisc(self, ns: str, dev: str, *args: str) -> None:
        _run("ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", *args)

    # -- teardown ------------------------------------------------------------------------------

    def close(self) -> None:
        """Kill the adopted processes, then delete every namespace made (each step tolerates
        what a failed test may have left half-done)."""
        for pid in self._pids:
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(pid, signal.SIGKILL)
        for pid in self._pids:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, 0)
        self._pids.clear()
        for name in reversed(self._made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self._made.clear()
