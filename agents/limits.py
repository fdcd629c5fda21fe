"""Resource limits for the processes an agent runs, the way a Borglet sets them.

The agent probes the host once at start-up (`probe_limits`) and uses the first
mechanism that works, recording why in a `LimitsMode`:

1. cgroup v2 (`memory.max`, `cpu.max`, `memory.events: oom_kill`), when the
   unified hierarchy offers the memory controller and we can delegate it to a
   child of our own cgroup;
2. cgroup v1 (`memory.limit_in_bytes` (+ `memory.memsw.limit_in_bytes`),
   `cpu.cfs_quota_us`/`cpu.cfs_period_us` and `cpu.shares`,
   `memory.oom_control: oom_kill`), when the `memory` hierarchy is writable;
3. rlimits: `RLIMIT_DATA` (private writable memory, so malloc and anonymous
   mmap fail past the limit) and `nice` scaled by the cpu request. Under
   rlimits the kernel keeps no OOM count: a task over its limit sees its
   allocations fail and exits by itself, and is reported by its exit code.

Per-task cgroups live *below the cgroup the agent itself is in*, as
`<own cgroup>/omega/<agent>-<work dir digest>/<task>.<incarnation>`, so that an agent never
touches hierarchies it was not given. A task joins its cgroups from the child
between fork and exec (`TaskLimits.preexec`), so nothing it allocates is ever
charged elsewhere. `TaskLimits.remove` kills what is left in the cgroup and
removes it.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import os
import resource
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import structlog

log = structlog.get_logger("agents.limits")

CGROUP_PARENT = "omega"
CFS_PERIOD_US = 100_000
MIN_CFS_QUOTA_US = 1_000


class LimitKind(enum.StrEnum):
    CGROUP_V2 = "cgroup-v2"
    CGROUP_V1 = "cgroup-v1"
    RLIMIT = "rlimit"


@attrs.frozen
class LimitsMode:
    """How this agent limits its tasks, and why that mechanism was chosen.

    `memory_dir` and `cpu_dir` are the agent's own cgroup directories
    (`<own>/omega/<agent>`) under which task cgroups are made; both are None
    in rlimit mode, and `cpu_dir` is None when cgroups limit memory only.
    For cgroup v2 both are the same directory.
    """

    kind: LimitKind
    reason: str
    memory_dir: Path | None = None
    cpu_dir: Path | None = None

    def describe(self) -> str:
        return f"{self.kind}: {self.reason}"


# -- probing ------------------------------------------------------------------------


@attrs.frozen
class _Mount:
    root: str
    point: Path
    fstype: str
    options: frozenset[str]


def _mounts(mountinfo: Path) -> list[_Mount]:
    mounts = []
    for line in mountinfo.read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        opts = frozenset(rfields[2].split(",")) | frozenset(fields[5].split(","))
        point = Path(fields[4].replace("\\040", " "))
        mounts.append(_Mount(fields[3], point, rfields[0], opts))
    return mounts


def _own_cgroups(proc_cgroup: Path) -> dict[str, str]:
    """Map controller name (or "" for the unified hierarchy) to our cgroup path."""
    own: dict[str, str] = {}
    for line in proc_cgroup.read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            own[""] = path
        for name in controllers.split(","):
            if name:
                own[name] = path
    return own


def _join(mount: _Mount, own_path: str) -> Path:
    # The mount may expose a sub-tree (containers): make our path relative to it.
    rel = os.path.relpath(own_path, mount.root) if own_path.startswith(mount.root) else own_path
    rel = "" if rel == "." else rel.lstrip("/")
    return mount.point / rel


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def cgroup_name(agent: str, work_dir: Path) -> str:
    """The agent's cgroup directory name: its name and a digest of its work dir. Two cells on
    one host both have an `agent-0`; sharing one directory, the first to stop removed it under
    the other's tasks (`start_error: limits: No such file or directory`). The work dir is the
    agent's identity across restarts (`recover` reads it), so the name stays the same for the
    agent that comes back to it."""
    digest = hashlib.sha1(str(Path(work_dir).resolve()).encode()).hexdigest()[:10]
    return f"{agent}-{digest}"


def _agent_dir(base: Path, agent: str) -> Path:
    path = base / CGROUP_PARENT / agent
    path.mkdir(parents=True, exist_ok=True)
    return path


def _rmdir_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()


def _probe_write(agent_dir: Path, limit_file: str, value: str) -> None:
    """Prove a task cgroup under `agent_dir` can be limited: create one, write `value` to its
    `limit_file`, remove it. Raises OSError if the kernel refuses."""
    probe = agent_dir / f"probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        _write(probe / limit_file, value)
    finally:
        _rmdir_quietly(probe)


def _try_v2(mounts: list[_Mount], own: dict[str, str], agent: str) -> tuple[Path | None, str]:
    mount = next((m for m in mounts if m.fstype == "cgroup2"), None)
    if mount is None:
        return None, "no cgroup2 mount"
    if "" not in own:
        return None, "not in the cgroup v2 hierarchy"
    base = _join(mount, own[""])
    try:
        available = (base / "cgroup.controllers").read_text().split()
    except OSError as e:
        return None, f"cgroup v2 at {base} unreadable ({e.strerror})"
    if "memory" not in available:
        return None, f"cgroup v2 at {base} offers no memory controller"
    wanted = "+memory" + (" +cpu" if "cpu" in available else "")
    try:
        # A v2 cgroup with processes cannot delegate controllers ("no internal
        # processes"), so this fails unless our own cgroup is the root.
        _write(base / "cgroup.subtree_control", wanted)
        parent = base / CGROUP_PARENT
        parent.mkdir(exist_ok=True)
        _write(parent / "cgroup.subtree_control", wanted)
        agent_dir = _agent_dir(base, agent)
        _write(agent_dir / "cgroup.subtree_control", wanted)
        _probe_write(agent_dir, "memory.max", str(64 << 20))
    except OSError as e:
        return None, f"cgroup v2 at {base} not delegable ({e.strerror})"
    return agent_dir, f"cgroup v2 memory{'+cpu' if 'cpu' in available else ''} writable at {base}"


def _try_v1(
    mounts: list[_Mount],
    own: dict[str, str],
    agent: str,
    controller: str,
    limit_file: str,
    value: str,
) -> tuple[Path | None, str]:
    mount = next((m for m in mounts if m.fstype == "cgroup" and controller in m.options), None)
    if mount is None:
        return None, f"no cgroup v1 {controller} mount"
    base = _join(mount, own.get(controller, "/"))
    try:
        agent_dir = _agent_dir(base, agent)
        _probe_write(agent_dir, limit_file, value)
    except OSError as e:
        return None, f"cgroup v1 {controller} at {base} not writable ({e.strerror})"
    return agent_dir, f"cgroup v1 {controller} writable at {base}"


def probe_limits(
    agent: str,
    *,
    force: LimitKind | None = None,
    proc: Path = Path("/proc/self"),
) -> LimitsMode:
    """Find how this host lets `agent` limit tasks; never raises.

    Tries cgroup v2, then v1, then falls back to rlimits; `force` skips the
    mechanisms before it (force=RLIMIT turns cgroups off). The returned reason
    says what was found and why better mechanisms were refused. Creates the
    agent's cgroup directory as a side effect; `release_agent_cgroups` removes it.
    """
    notes: list[str] = []
    order = [LimitKind.CGROUP_V2, LimitKind.CGROUP_V1, LimitKind.RLIMIT]
    if force is not None:
        skipped = order[: order.index(force)]
        if skipped:
            notes.append(f"forced {force} (skipped {', '.join(skipped)})")
        order = order[order.index(force) :]
    try:
        mounts = _mounts(proc / "mountinfo")
        own = _own_cgroups(proc / "cgroup")
    except OSError as e:
        mounts, own = [], {}
        notes.append(f"cannot read cgroup mounts ({e.strerror})")
    for kind in order:
        if kind is LimitKind.CGROUP_V2:
            path, why = _try_v2(mounts, own, agent)
            if path is not None:
                mode = LimitsMode(kind, "; ".join([why, *notes]), path, path)
                break
            notes.append(why)
        elif kind is LimitKind.CGROUP_V1:
            mem, why = _try_v1(mounts, own, agent, "memory", "memory.limit_in_bytes", str(64 << 20))
            if mem is None:
                notes.append(why)
                continue
            cpu, cpu_why = _try_v1(
                mounts, own, agent, "cpu", "cpu.cfs_quota_us", str(CFS_PERIOD_US)
            )
            mode = LimitsMode(kind, "; ".join([why, cpu_why, *notes]), mem, cpu)
            break
        else:
            reason = "; ".join(notes) or "rlimits requested"
            mode = LimitsMode(LimitKind.RLIMIT, f"no writable cgroup: {reason}")
    log.info("limits_probed", agent=agent, mode=str(mode.kind), reason=mode.reason)
    return mode


def release_agent_cgroups(mode: LimitsMode) -> None:
    """Remove the agent's (empty) cgroup directories and, if empty, their parent."""
    for path in {mode.memory_dir, mode.cpu_dir} - {None}:
        assert path is not None
        _rmdir_quietly(path)
        _rmdir_quietly(path.parent)


# -- per-task limits ------------------------------------------------------------------


def nice_for(cpu_millicores: int) -> int:
    """The niceness standing in for a cpu request under rlimits: 0 for a full
    core or more, up to 10 for tiny requests."""
    if cpu_millicores <= 0 or cpu_millicores >= 1000:
        return 0
    return round(10 * (1000 - cpu_millicores) / 1000)


@attrs.define
class TaskLimits:
    """The limits of one task incarnation: its cgroups (if any) or its rlimits.

    `create` makes and configures the cgroups in the parent; `preexec` runs in
    the child after fork and before exec; `remove` tears down after the task.
    """

    mode: LimitsMode
    name: str
    cpu_millicores: int
    memory_bytes: int
    memory_path: Path | None = None
    cpu_path: Path | None = None

    @classmethod
    def create(
        cls, mode: LimitsMode, name: str, cpu_millicores: int, memory_bytes: int
    ) -> TaskLimits:
        """Make the task's cgroups and write its limits; raises OSError."""
        limits = cls.attach(mode, name, cpu_millicores, memory_bytes)
        try:
            limits._configure()
        except OSError:
            limits.remove()
            raise
        return limits

    @classmethod
    def attach(
        cls, mode: LimitsMode, name: str, cpu_millicores: int = 0, memory_bytes: int = 0
    ) -> TaskLimits:
        """The limits object for an existing task (recovery); creates nothing."""
        memory_path = mode.memory_dir / name if mode.memory_dir else None
        cpu_path = mode.cpu_dir / name if mode.cpu_dir else None
        return cls(mode, name, cpu_millicores, memory_bytes, memory_path, cpu_path)

    def _configure(self) -> None:
        kind = self.mode.kind
        if kind is LimitKind.RLIMIT:
            return
        for path in self.paths():
            path.mkdir(exist_ok=True)
        mem, cpu = self.memory_path, self.cpu_path
        if kind is LimitKind.CGROUP_V1:
            assert mem is not None
            if self.memory_bytes > 0:
                _write(mem / "memory.limit_in_bytes", str(self.memory_bytes))
                if (mem / "memory.memsw.limit_in_bytes").exists():
                    # No swap either: memory+swap capped at the same value.
                    _write(mem / "memory.memsw.limit_in_bytes", str(self.memory_bytes))
            if cpu is not None and self.cpu_millicores > 0:
                quota = max(MIN_CFS_QUOTA_US, self.cpu_millicores * CFS_PERIOD_US // 1000)
                _write(cpu / "cpu.cfs_period_us", str(CFS_PERIOD_US))
                _write(cpu / "cpu.cfs_quota_us", str(quota))
                _write(cpu / "cpu.shares", str(max(2, self.cpu_millicores * 1024 // 1000)))
        else:
            assert mem is not None
            if self.memory_bytes > 0:
                _write(mem / "memory.max", str(self.memory_bytes))
                if (mem / "memory.swap.max").exists():
                    _write(mem / "memory.swap.max", "0")
            if self.cpu_millicores > 0 and (mem / "cpu.max").exists():
                quota = max(MIN_CFS_QUOTA_US, self.cpu_millicores * CFS_PERIOD_US // 1000)
                _write(mem / "cpu.max", f"{quota} {CFS_PERIOD_US}")

    def paths(self) -> list[Path]:
        """The task's distinct cgroup directories (empty under rlimits)."""
        out: list[Path] = []
        for path in (self.memory_path, self.cpu_path):
            if path is not None and path not in out:
                out.append(path)
        return out

    def preexec(self) -> None:
        """Run in the child between fork and exec: join the task's cgroups, or
        set its rlimits and niceness. Keep it small: the child may have been
        forked from a threaded parent."""
        if self.mode.kind is LimitKind.RLIMIT:
            if self.memory_bytes > 0:
                resource.setrlimit(resource.RLIMIT_DATA, (self.memory_bytes, self.memory_bytes))
            niceness = nice_for(self.cpu_millicores)
            if niceness:
                os.nice(niceness)
            return
        pid = str(os.getpid()).encode()
        for path in self.paths():
            fd = os.open(path / "cgroup.procs", os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)

    def oom_kills(self) -> int:
        """How many processes of this task the kernel OOM-killed (0 under rlimits)."""
        mem = self.memory_path
        if mem is None:
            return 0
        name = "memory.oom_control" if self.mode.kind is LimitKind.CGROUP_V1 else "memory.events"
        try:
            for line in (mem / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def memory_stats(self) -> dict[str, int]:
        """Peak usage and failure count from the memory cgroup, where known."""
        mem = self.memory_path
        if mem is None:
            return {}
        files = (
            {"failcnt": "memory.failcnt", "max_usage": "memory.max_usage_in_bytes"}
            if self.mode.kind is LimitKind.CGROUP_V1
            else {"max_usage": "memory.peak"}
        )
        out = {}
        for key, name in files.items():
            with contextlib.suppress(OSError, ValueError):
                out[key] = int((mem / name).read_text())
        return out

    def pids(self) -> list[int]:
        """Every process in the task's cgroups (empty under rlimits or once removed)."""
        found: set[int] = set()
        for path in self.paths():
            with contextlib.suppress(OSError, ValueError):
                found.update(int(p) for p in (path / "cgroup.procs").read_text().split())
        return sorted(found)

    def kill_all(self, sig: int = signal.SIGKILL) -> int:
        """Signal every process in the task's cgroups; returns how many were signalled."""
        count = 0
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
                count += 1
        return count

    def remove(self, timeout: float = 2.0) -> bool:
        """Kill what is left in the task's cgroups and remove them. Returns False if a
        cgroup could not be removed within `timeout` seconds (it is logged)."""
        deadline = time.monotonic() + timeout
        for path in self.paths():
            while True:
                self.kill_all()
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if time.monotonic() > deadline:
                        log.warning("cgroup_not_removed", path=str(path), error=e.strerror)
                        return False
                    time.sleep(0.01)
        return True


def iter_task_cgroups(mode: LimitsMode) -> Iterator[str]:
    """Names of task cgroups that exist under the agent's directories."""
    seen: set[str] = set()
    for base in (mode.memory_dir, mode.cpu_dir):
        if base is None or not base.exists():
            continue
        for child in base.iterdir():
            if child.is_dir() and child.name not in seen:
                seen.add(child.name)
                yield child.name
