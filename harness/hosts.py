"""Stand-ins for separate hosts on one machine: a skewed clock per process (libfaketime), and
network namespaces joined by a bridge (`Hosts`), each process of a cell on an address of its
own, with links that drop packets silently (nftables rules in the host) instead of TCP proxies
that reset them.

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


SKEW_HOOK = Path(__file__).resolve().parent / "skew"


def skewed_python_clock(offset_s: float) -> list[str]:
    """A command prefix that runs a Python program with `time.time` moved by `offset_s`
    seconds (`harness/skew/sitecustomize.py`), for processes that must keep up under load,
    which libfaketime's locking does not let them (the module says how much)."""
    from harness.cluster import REPOSITORY

    path = [str(SKEW_HOOK), str(REPOSITORY), *filter(None, [os.environ.get("PYTHONPATH")])]
    return ["env", f"OMEGA_TEST_CLOCK_SKEW_S={offset_s:g}", f"PYTHONPATH={os.pathsep.join(path)}"]


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None if they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"{tool} is missing: install Debian's {package} (./setup.sh host)"
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


def _unused_subnet() -> str:
    """A /24 of the benchmarking range 198.18.0.0/15 (RFC 2544) that no route here uses."""
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    for _ in range(64):
        n = secrets.randbelow(512)
        prefix = f"198.{18 + n // 256}.{n % 256}"
        if f"{prefix}.0/24" not in routes:
            return prefix
    raise RuntimeError("no free /24 in 198.18.0.0/15")


class Hosts:
    """`n` hosts, each a network namespace with one veth on a bridge that lives in a namespace
    of its own. Host i has the address `addresses[i]`; `exec_prefix(i)` runs a command there.
    The test runner joins the bridge too (`runner_address`, one veth whose other end is in the
    switch), so a test talks to every host without entering one; links are cut on the hosts'
    side only. Deleting the switch removes that veth. Use as a context manager."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.tag = secrets.token_hex(3)
        self.switch = f"om-{self.tag}-sw"
        self.names = [f"om-{self.tag}-h{i}" for i in range(n)]
        self.runner_link = f"om-{self.tag}"
        self.subnet = ""
        self.addresses: list[str] = []
        self.runner_address = ""
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
        self.subnet = _unused_subnet()
        self.addresses = [f"{self.subnet}.{i + 1}" for i in range(self.n)]
        self.runner_address = f"{self.subnet}.254"
        sw = self.switch
        _run("ip", "netns", "add", sw)
        self._made.append(sw)
        _run("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", sw, "link", "set", "br0", "up")
        _run("ip", "-n", sw, "link", "add", "runner", "type", "veth", "peer", self.runner_link)
        _run("ip", "-n", sw, "link", "set", self.runner_link, "netns", str(os.getpid()))
        _run("ip", "-n", sw, "link", "set", "runner", "master", "br0", "up")
        _run("ip", "addr", "add", f"{self.runner_address}/24", "dev", self.runner_link)
        _run("ip", "link", "set", self.runner_link, "up")
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
        if inbound:
            self._rule(i, "input", 'iifname "eth0" drop')
        if outbound:
            self._rule(i, "output", 'oifname "eth0" drop')

    def lose(self, i: int, percent: int) -> None:
        """Drop `percent`% of what host i sends and receives, at random."""
        for chain, side in (("input", "iifname"), ("output", "oifname")):
            self._rule(i, chain, f'{side} "eth0" numgen random mod 100 < {percent} drop')

    def slow(self, i: int, rate: str = "200kbit", latency_ms: int = 400) -> None:
        """Make host i's link slow both ways: a token bucket (tc tbf) of `rate` on what it
        sends and on what it is sent, queueing up to `latency_ms` before dropping. This
        kernel has no netem (CONFIG_NET_SCH_NETEM is not set, and no modules to load), so
        there is no fixed per-packet delay: packets wait only when traffic exceeds `rate`."""
        switch = ["ip", "netns", "exec", self.switch]
        for prefix, dev in ((self.exec_prefix(i), "eth0"), (switch, f"p{i}")):
            _run(
                *prefix,
                *("tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate),
                *("burst", "4kb", "latency", f"{latency_ms}ms"),
            )

    def heal(self, i: int) -> None:
        """Undo every `cut`, `lose` and `slow` on host i."""
        subprocess.run(
            [*self.exec_prefix(i), "nft", "delete", "table", "inet", "omega"], capture_output=True
        )
        switch = ["ip", "netns", "exec", self.switch]
        for prefix, dev in ((self.exec_prefix(i), "eth0"), (switch, f"p{i}")):
            subprocess.run([*prefix, "tc", "qdisc", "del", "dev", dev, "root"], capture_output=True)

    def _rule(self, i: int, chain: str, rule: str) -> None:
        # nftables, not tc netem: the kernels this runs on may lack netem (the CI VM's does).
        script = (
            "add table inet omega\n"
            f"add chain inet omega {chain} {{ type filter hook {chain} priority 0 ; }}\n"
            f"add rule inet omega {chain} {rule}\n"
        )
        done = subprocess.run(
            [*self.exec_prefix(i), "nft", "-f", "-"], input=script, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"nft on {self.names[i]}: {done.stderr.strip()}")

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
        # Gone with the switch, unless the switch was never made whole.
        subprocess.run(["ip", "link", "del", self.runner_link], capture_output=True)
