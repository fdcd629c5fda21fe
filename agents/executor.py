"""The executor: runs tasks as real, limited processes and reports what they do.

One supervisor (a trio task in the executor's nursery) owns each task
incarnation. It spawns the command in its own session and process group, in
`<work_dir>/tasks/<task>.<incarnation>/` with stdout and stderr appended to
files there, inside the task's cgroups (or under rlimits, see `limits`), and
reports through the `Reporter`:

    starting -> running -> exited(code) | failed(oom | signal:<NAME> | start_error: ...)

A restart in place (policy on-failure/always) reports `starting` again (with
the reason in `reason`) after an exponential back-off measured on trio's clock.

Health. A task whose job has a check is probed (`agents.health`) from when it
runs, every `interval`, in the same nursery as its process wait, so a probe
never blocks the agent loop and dies with the run it judges. The verdict is
reported as a `running` report with `healthy` set, only when it changes: True
on a passing probe, False after `failures` failed probes in a row. An
unhealthy task is killed as a stop is (SIGTERM, grace, SIGKILL) and its run
ends `failed` with reason `unhealthy`, which its restart policy then treats as
any failure: on-failure and always restart it after the back-off, never
leaves it failed. Every task gets `$OMEGA_PORT_FILE` (`port`, a path relative
to the task's directory where it starts; removed before each run) to declare
the port http and tcp checks use.
`stop` sends SIGTERM to the process group, waits the grace period, then
SIGKILLs the group; a stopped task's final report carries
`reason="stopped:<why> (<how it ended>)"`, e.g. `stopped:preempted (signal:SIGKILL)`,
and the state and exit code it really ended with.
When a task's leader exits, anything left in its process group or cgroup is
killed: a task is its whole group, as a Borg container is.

Recovery. Each running incarnation has `state.json` in its directory (pid,
pgid, process create time, cgroup paths, spec). `recover(work_dir)` reads them
after an agent restart: a task whose pid is alive *and* has the recorded
create time is the same process and is returned for `Executor.adopt` (tasks
survive agent restarts, as in Borg); anything else is dead or a reused pid,
so its process group and cgroups are killed and removed and it is returned as
cleaned (the agent should report it `lost`). An adopted task is not our child,
so its exit status is unknown unless the kernel still lets us reap it; it is
then reported failed with reason `exit_status_unknown` (or `oom` if its cgroup
counted an OOM kill). Set `adopt=False` to kill every survivor instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import attrs
import psutil
import structlog
import trio

from agents import output
from agents.health import PORT_FILE, probe, read_port
from agents.limits import LimitKind, LimitsMode, TaskLimits
from agents.task import (
    Backoff,
    ReportedState,
    Reporter,
    ReportingExecutor,
    TaskKey,
    TaskSpec,
    TaskUsage,
    should_restart,
    task_dir_name,
    task_of_dir,
)
from cellstate.model import HealthCheck

log = structlog.get_logger("agents.executor")

STATE_FILE = "state.json"
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


@attrs.frozen
class Outcome:
    """How one run of a task ended."""

    state: ReportedState
    exit_code: int | None = None
    reason: str | None = None
    ran_for: float = 0.0


@attrs.frozen
class RecoveredTask:
    """A task found in the work dir by `recover`: `adopted` tasks are alive and
    may be handed to `Executor.adopt`; the others were cleaned up (report lost)."""

    task: str
    incarnation: int
    pid: int
    pgid: int
    create_time: float
    spec: TaskSpec
    adopted: bool
    note: str
    cgroups: tuple[str, ...] = ()
    limits_kind: str = str(LimitKind.RLIMIT)


@attrs.define(eq=False)
class _Run:
    task: str
    incarnation: int
    spec: TaskSpec
    dir: Path
    pid: int | None = None
    create_time: float | None = None
    limits: TaskLimits | None = None
    stop_reason: str | None = None
    # The agent itself is leaving (`stop_all`): nobody asked the task to end, so it is
    # reported lost, for the cell to run it again, not failed.
    stop_lost: bool = False
    stop_requested: trio.Event = attrs.field(factory=trio.Event)
    done: trio.Event = attrs.field(factory=trio.Event)
    backoff_scope: trio.CancelScope | None = None
    cpu_sample: tuple[float, float] | None = None  # (monotonic time, cpu seconds)
    # Set when the current run failed its health check and is being killed.
    unhealthy: bool = False
    # Whether its process runs now (not starting, nor between restarts), and the port
    # this run declared, as last reported.
    running: bool = False
    port: int | None = None

    @property
    def key(self) -> TaskKey:
        return (self.task, self.incarnation)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def _killpg(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


class Executor(ReportingExecutor):
    """Runs task incarnations on one machine. Build it with `open_executor`
    (or pass a nursery you own); all methods must be called from trio."""

    def __init__(
        self,
        *,
        machine: str,
        work_dir: Path,
        limits: LimitsMode,
        report: Reporter,
        nursery: trio.Nursery,
        backoff: Backoff | None = None,
        poll_interval: float = 0.5,
        task_user: str | None = None,
        on_probe: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.machine = machine
        # Told of every health-check probe's verdict (its kind, passed): the
        # agent's metrics count failed probes, not only unhealthy tasks.
        self._on_probe = on_probe
        self.work_dir = Path(work_dir)
        # Tasks run as this user when set (the agent must be root): a task then
        # cannot read the agent's or the store's private files.
        self.task_user = task_user
        self._task_ids = _user_ids(task_user) if task_user else None
        self.limits = limits
        self.backoff = backoff or Backoff()
        self.poll_interval = poll_interval
        self._report_fn = report
        self._nursery = nursery
        self._runs: dict[TaskKey, _Run] = {}
        self._log = log.bind(machine=machine, limits=str(limits.kind))
        (self.work_dir / "tasks").mkdir(parents=True, exist_ok=True)

    # -- public API ------------------------------------------------------------------

    def start(self, task: str, incarnation: int, spec: TaskSpec) -> bool:
        """Start running `task`/`incarnation`; returns False if it is already
        running here (starting twice is harmless). Reports `starting` before
        returning; everything after happens in the executor's nursery."""
        key = (task, incarnation)
        if key in self._runs:
            return False
        run = _Run(
            task, incarnation, spec, self.work_dir / "tasks" / task_dir_name(task, incarnation)
        )
        self._runs[key] = run
        self._report(run, ReportedState.STARTING)
        self._nursery.start_soon(self._supervise, run, None)
        return True

    def adopt(self, recovered: RecoveredTask) -> bool:
        """Supervise a live task found by `recover` (reports `running` again)."""
        key = (recovered.task, recovered.incarnation)
        if key in self._runs or not recovered.adopted:
            return False
        run = _Run(
            recovered.task,
            recovered.incarnation,
            recovered.spec,
            self.work_dir / "tasks" / task_dir_name(recovered.task, recovered.incarnation),
            pid=recovered.pid,
            create_time=recovered.create_time,
        )
        run.limits = _limits_from_record(recovered)
        self._runs[key] = run
        self._nursery.start_soon(self._supervise, run, recovered)
        return True

    async def stop(self, task: str, incarnation: int, reason: str = "stopped") -> bool:
        """Stop a task: SIGTERM to its process group, SIGKILL after its grace
        period; a pending restart is cancelled. Returns once the task is gone
        and its final state reported; False if it was not running here."""
        run = self._runs.get((task, incarnation))
        if run is None:
            return False
        if run.stop_reason is None:
            run.stop_reason = reason
            self._log.info("task_stop", task=task, incarnation=incarnation, why=reason)
        run.stop_requested.set()
        if run.backoff_scope is not None:
            run.backoff_scope.cancel()
        await run.done.wait()
        return True

    async def stop_all(self, reason: str = "agent shutdown") -> None:
        """Stop every task concurrently, as the agent leaves; returns when all are gone.
        Each is reported lost, not failed: the cell wanted it to run, so it goes back to
        pending and runs again where it is placed next (a service with `restart: always`
        would otherwise have ended `failed` for good at an agent's restart)."""
        async with trio.open_nursery() as nursery:
            for (task, incarnation), run in list(self._runs.items()):
                run.stop_lost = True
                nursery.start_soon(self.stop, task, incarnation, reason)

    def running(self) -> list[TaskKey]:
        """The task incarnations this executor is responsible for."""
        return sorted(self._runs)

    def rotate_output(self, limit: int) -> int:
        """Keep each run's captured output to about `limit` bytes a stream, and twice that
        on disk (`agents.output`): a service that logs for months would fill the machine.
        The bytes moved aside."""
        return sum(output.rotate(run.dir, limit) for run in self._runs.values())

    def forget(self, known: Callable[[str], bool]) -> int:
        """Remove the directories (output, state) of the runs of tasks the cell has forgotten:
        a purged job's tasks (`PurgeJobs`). Without this a machine's disk would fill with the
        output of every task it ever ran, long after `omega logs` could ask for it."""
        root = self.work_dir / "tasks"
        busy = {task_dir_name(task, incarnation) for task, incarnation in self._runs}
        gone = 0
        for entry in os.scandir(root):
            task = task_of_dir(entry.name)
            if task is None or entry.name in busy or known(task) or not entry.is_dir():
                continue
            shutil.rmtree(entry.path, ignore_errors=True)
            gone += 1
        if gone:
            self._log.info("task_dirs_removed", count=gone, why="tasks the cell forgot")
        return gone

    def usage(self) -> list[TaskUsage]:
        """Sample each task's cpu (millicores, averaged since the previous call,
        or since the process started on the first) and memory (RSS bytes of all
        its processes). Tasks between runs are left out."""
        out = []
        now = time.monotonic()
        for run in self._runs.values():
            sample = self._sample(run)
            if sample is None:
                continue
            cpu_s, rss = sample
            if run.cpu_sample is None:
                wall = max(1e-3, time.time() - (run.create_time or time.time()))
                milli = cpu_s / wall * 1000
            else:
                then, prev = run.cpu_sample
                milli = max(0.0, cpu_s - prev) / max(1e-3, now - then) * 1000
            run.cpu_sample = (now, cpu_s)
            out.append(TaskUsage(run.task, run.incarnation, round(milli), rss))
        return out

    def declare_ports(self, undeclared: bool = False) -> None:
        """Report each running task's port that is news (`_declare_port`), or only those
        of the tasks that have declared none yet: how the agent finds the port of a task
        with no check to probe it."""
        for run in list(self._runs.values()):
            if not (undeclared and run.port is not None):
                self._declare_port(run)

    # -- supervision -------------------------------------------------------------------

    async def _supervise(self, run: _Run, recovered: RecoveredTask | None) -> None:
        failures = 0
        try:
            while True:
                if recovered is not None:
                    outcome = await self._watch_adopted(run)
                    recovered = None
                else:
                    outcome = await self._run_once(run)
                if run.unhealthy:
                    # However the kill ended it (even a clean exit on SIGTERM),
                    # a run killed for its health is a failure.
                    run.unhealthy = False
                    outcome = Outcome(ReportedState.FAILED, None, "unhealthy", outcome.ran_for)
                if run.stop_reason is not None:
                    detail = outcome.reason or f"exit:{outcome.exit_code}"
                    outcome = attrs.evolve(outcome, reason=f"stopped:{run.stop_reason} ({detail})")
                    break
                if not should_restart(run.spec.restart, outcome.state, outcome.exit_code):
                    break
                failures = 0 if outcome.ran_for >= self.backoff.reset_after else failures + 1
                delay = self.backoff.delay(failures)
                self._log.info(
                    "task_restart",
                    task=run.task,
                    incarnation=run.incarnation,
                    delay=delay,
                    after=outcome.reason or f"exit:{outcome.exit_code}",
                )
                self._report(
                    run,
                    ReportedState.STARTING,
                    outcome.exit_code,
                    f"restart after {outcome.reason or f'exit:{outcome.exit_code}'}",
                )
                with trio.CancelScope() as run.backoff_scope:
                    await trio.sleep(delay)
                run.backoff_scope = None
                if run.stop_reason is not None:
                    outcome = Outcome(
                        ReportedState.FAILED, outcome.exit_code, f"stopped:{run.stop_reason}"
                    )
                    break
        except BaseException:
            # Cancelled (agent detaching) or a bug: leave the process and its
            # state file for recover(); say nothing more about it.
            self._runs.pop(run.key, None)
            run.done.set()
            raise
        self._runs.pop(run.key, None)
        if run.stop_lost:
            outcome = Outcome(ReportedState.LOST, None, outcome.reason, outcome.ran_for)
        self._report(run, outcome.state, outcome.exit_code, outcome.reason)
        run.done.set()

    def _preexec(self, limits: TaskLimits) -> Callable[[], None]:
        """The child's set-up before exec: join the limits as root, then drop to
        the task user. (Popen's own `user=` switches before `preexec_fn`, too
        early to join a root-owned cgroup.)"""
        if self._task_ids is None:
            return limits.preexec
        uid, gid = self._task_ids

        def preexec() -> None:
            limits.preexec()
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)

        return preexec

    async def _run_once(self, run: _Run) -> Outcome:
        spec = run.spec
        if run.stop_reason is not None:
            return Outcome(ReportedState.FAILED, None, "not started")
        if not spec.argv:
            return Outcome(ReportedState.FAILED, None, "start_error: empty command")
        env = self._task_env(run)
        program = spec.argv[0]
        if "/" not in program and shutil.which(program, path=env["PATH"]) is None:
            # exec reports the last error of its walk down PATH: a directory the task's user
            # may not enter made a missing program read "Permission denied".
            return Outcome(
                ReportedState.FAILED,
                None,
                f"start_error: command {program!r} not found in the task's PATH",
            )
        run.dir.mkdir(parents=True, exist_ok=True)
        if self._task_ids is not None:
            os.chown(run.dir, *self._task_ids)
        name = run.dir.name
        try:
            limits = TaskLimits.create(self.limits, name, spec.cpu_millicores, spec.memory_bytes)
        except OSError as e:
            return Outcome(ReportedState.FAILED, None, f"start_error: limits: {e}")
        # A port left by the previous run is not this run's.
        with contextlib.suppress(FileNotFoundError):
            (run.dir / PORT_FILE).unlink()
        run.port = None
        try:
            with open(run.dir / "stdout", "ab") as out, open(run.dir / "stderr", "ab") as err:
                process = await trio.lowlevel.open_process(
                    list(spec.argv),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    cwd=run.dir,
                    env=env,
                    start_new_session=True,
                    preexec_fn=self._preexec(limits),
                    close_fds=True,
                )
        except (OSError, subprocess.SubprocessError, ValueError) as e:
            # ValueError: what the kernel cannot be given (an environment name with '=',
            # a NUL byte), from a spec the edge did not refuse (one logged before it did).
            # The task fails to start; the agent goes on with its other tasks.
            await trio.to_thread.run_sync(limits.remove)
            return Outcome(ReportedState.FAILED, None, f"start_error: {e}")
        started = trio.current_time()
        run.pid, run.limits = process.pid, limits
        try:
            run.create_time = psutil.Process(process.pid).create_time()
        except psutil.Error:
            run.create_time = time.time()
        self._write_state(run)
        self._log.info("task_running", task=run.task, incarnation=run.incarnation, pid=process.pid)
        self._report(run, ReportedState.RUNNING)
        run.running = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._enforce_stop, run)
                if spec.check is not None:
                    nursery.start_soon(self._watch_health, run, spec.check)
                returncode = await process.wait()
                nursery.cancel_scope.cancel()
        finally:
            run.running = False
        return await self._finish(run, returncode, trio.current_time() - started)

    async def _watch_adopted(self, run: _Run) -> Outcome:
        """Wait for a process that is not our child, by polling."""
        assert run.pid is not None
        started = trio.current_time()
        self._report(run, ReportedState.RUNNING)
        run.running = True
        returncode: int | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._enforce_stop, run)
                if run.spec.check is not None:
                    nursery.start_soon(self._watch_health, run, run.spec.check)
                while True:
                    returncode = _try_reap(run.pid)
                    if returncode is not None or not _same_process(run.pid, run.create_time):
                        break
                    await trio.sleep(self.poll_interval)
                nursery.cancel_scope.cancel()
        finally:
            run.running = False
        return await self._finish(run, returncode, trio.current_time() - started)

    async def _enforce_stop(self, run: _Run) -> None:
        await run.stop_requested.wait()
        await self._terminate(run)

    async def _terminate(self, run: _Run) -> None:
        """SIGTERM the task's group, SIGKILL it and its cgroup after the grace
        period; cancelled (by the run's nursery) as soon as the leader exits."""
        assert run.pid is not None
        _killpg(run.pid, signal.SIGTERM)
        await trio.sleep(run.spec.grace_period)
        self._log.info(
            "task_kill", task=run.task, incarnation=run.incarnation, grace=run.spec.grace_period
        )
        _killpg(run.pid, signal.SIGKILL)
        if run.limits is not None:
            run.limits.kill_all(signal.SIGKILL)

    def _declare_port(self, run: _Run) -> None:
        """Report the port the running task declared in its port file, if it is news.

        Read where the agent looks at its tasks anyway (each health probe, each usage
        sample), not by a timer of its own: a file read, and no clock to keep."""
        if not run.running:
            return  # its port file may be the last run's
        port = read_port(run.dir)
        if port is not None and port != run.port:
            run.port = port
            self._log.info("task_port", task=run.task, incarnation=run.incarnation, port=port)
            self._report(run, ReportedState.RUNNING, port=port)

    async def _watch_health(self, run: _Run, check: HealthCheck) -> None:
        """Probe the running task every `interval` until its run ends (the run's
        nursery cancels this); report each change of verdict, and kill the task
        once it fails `failures` probes in a row."""
        env = self._task_env(run)
        preexec = self._probe_preexec()
        healthy: bool | None = None
        misses = 0
        while True:
            passed = await probe(check, run.dir, env, preexec)
            self._declare_port(run)
            if passed is not None and self._on_probe is not None:
                self._on_probe(check.kind, passed)
            if passed is not None:
                misses = 0 if passed else misses + 1
            verdict = True if passed else False if misses >= check.failures else healthy
            if verdict is not healthy:
                healthy = verdict
                self._log.info(
                    "task_health",
                    task=run.task,
                    incarnation=run.incarnation,
                    check=check.kind,
                    healthy=healthy,
                    misses=misses,
                )
                self._report(run, ReportedState.RUNNING, healthy=healthy)
            if healthy is False:
                run.unhealthy = True
                await self._terminate(run)
                return
            await trio.sleep(check.interval)

    async def _finish(self, run: _Run, returncode: int | None, ran_for: float) -> Outcome:
        """Kill what is left of the task, remove its cgroups, classify its end."""
        assert run.pid is not None
        _killpg(run.pid, signal.SIGKILL)
        limits = run.limits
        oom = limits.oom_kills() if limits is not None else 0
        stats = limits.memory_stats() if limits is not None else {}
        if limits is not None:
            await trio.to_thread.run_sync(limits.remove)
        with contextlib.suppress(FileNotFoundError):
            (run.dir / STATE_FILE).unlink()
        run.pid, run.limits, run.cpu_sample = None, None, None
        if oom:
            outcome = Outcome(ReportedState.FAILED, None, "oom", ran_for)
        elif returncode is None:
            outcome = Outcome(ReportedState.FAILED, None, "exit_status_unknown", ran_for)
        elif returncode < 0:
            outcome = Outcome(
                ReportedState.FAILED, None, f"signal:{_signal_name(-returncode)}", ran_for
            )
        else:
            outcome = Outcome(ReportedState.EXITED, returncode, None, ran_for)
        self._log.info(
            "task_ended",
            task=run.task,
            incarnation=run.incarnation,
            state=str(outcome.state),
            exit_code=outcome.exit_code,
            reason=outcome.reason,
            oom_kills=oom,
            **stats,
        )
        return outcome

    # -- helpers -------------------------------------------------------------------------

    def _task_env(self, run: _Run) -> dict[str, str]:
        """What a task (and its exec check) finds in its environment."""
        return {
            "PATH": os.environ.get("PATH", DEFAULT_PATH),
            **run.spec.env,
            "OMEGA_TASK_ID": run.task,
            "OMEGA_INCARNATION": str(run.incarnation),
            "OMEGA_MACHINE": self.machine,
            # Relative to the directory the task starts in, its own: when tasks
            # run as another user, the agent's private work dir above it cannot
            # be traversed, so an absolute path would not open.
            "OMEGA_PORT_FILE": PORT_FILE,
        }

    def _probe_preexec(self) -> Callable[[], None] | None:
        """An exec check runs as the task's user, as the task does (no cgroup:
        a check is the agent's work, not the task's)."""
        if self._task_ids is None:
            return None
        uid, gid = self._task_ids

        def preexec() -> None:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)

        return preexec

    def _write_state(self, run: _Run) -> None:
        assert run.pid is not None
        limits = run.limits
        record = {
            "task": run.task,
            "incarnation": run.incarnation,
            "machine": self.machine,
            "pid": run.pid,
            "pgid": run.pid,
            "create_time": run.create_time,
            "started_at": time.time(),
            "limits_kind": str(limits.mode.kind if limits else self.limits.kind),
            "cgroups": [str(p) for p in limits.paths()] if limits else [],
            "spec": run.spec.to_json(),
        }
        tmp = run.dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(run.dir / STATE_FILE)

    def _sample(self, run: _Run) -> tuple[float, int] | None:
        if run.pid is None:
            return None
        pids = run.limits.pids() if run.limits is not None else []
        procs: list[psutil.Process] = []
        try:
            leader = psutil.Process(run.pid)
            procs = (
                [psutil.Process(p) for p in pids if p != run.pid]
                if pids
                else leader.children(recursive=True)
            )
            procs.append(leader)
        except psutil.Error:
            pass
        cpu, rss = 0.0, 0
        for proc in procs:
            try:
                with proc.oneshot():
                    t = proc.cpu_times()
                    cpu += t.user + t.system + t.children_user + t.children_system
                    rss += proc.memory_info().rss
            except psutil.Error:
                continue
        return cpu, rss


def _try_reap(pid: int) -> int | None:
    """The exit status of `pid` if it is our exited child, else None."""
    try:
        wpid, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    if wpid == 0:
        return None
    return os.waitstatus_to_exitcode(status)


def _same_process(pid: int, create_time: float | None) -> bool:
    """Whether `pid` is alive (not a zombie) and is the process started at `create_time`."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return create_time is None or abs(proc.create_time() - create_time) < 0.05
    except psutil.Error:
        return False


def _limits_from_record(rec: RecoveredTask) -> TaskLimits | None:
    kind = LimitKind(rec.limits_kind)
    if kind is LimitKind.RLIMIT or not rec.cgroups:
        return None
    paths = [Path(p) for p in rec.cgroups]
    memory = next(
        (p for p in paths if "memory" in p.parts or kind is LimitKind.CGROUP_V2), paths[0]
    )
    cpu = next((p for p in paths if p != memory), None)
    mode = LimitsMode(kind, "recovered", memory.parent, cpu.parent if cpu else None)
    return TaskLimits(
        mode, memory.name, rec.spec.cpu_millicores, rec.spec.memory_bytes, memory, cpu
    )


def recover(work_dir: Path, *, adopt: bool = True) -> list[RecoveredTask]:
    """Read the state files an earlier agent left in `work_dir` (see module doc).

    Returns one `RecoveredTask` per state file: live ones (same pid and create
    time) are `adopted=True` when `adopt`, and left running for
    `Executor.adopt`; every other one has had its process group killed, its
    cgroups removed and its state file deleted. Never raises for a bad file:
    it is logged, renamed `state.json.bad` and skipped.
    """
    found: list[RecoveredTask] = []
    for path in sorted(Path(work_dir).glob(f"tasks/*/{STATE_FILE}")):
        try:
            data = json.loads(path.read_text())
            rec = RecoveredTask(
                task=data["task"],
                incarnation=int(data["incarnation"]),
                pid=int(data["pid"]),
                pgid=int(data["pgid"]),
                create_time=float(data["create_time"]),
                spec=TaskSpec.from_json(data["spec"]),
                adopted=False,
                note="",
                cgroups=tuple(data.get("cgroups", ())),
                limits_kind=data.get("limits_kind", str(LimitKind.RLIMIT)),
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("recover_bad_state", path=str(path), error=str(e))
            with contextlib.suppress(OSError):
                path.replace(path.with_suffix(".json.bad"))
            continue
        alive = _same_process(rec.pid, rec.create_time)
        if alive and adopt:
            rec = attrs.evolve(rec, adopted=True, note="alive: same pid and create time")
        else:
            note = "alive, killed (adopt=False)" if alive else _dead_note(rec)
            _clean(rec, kill_group=alive or _group_is_ours(rec))
            path.unlink(missing_ok=True)
            rec = attrs.evolve(rec, note=note)
        log.info(
            "task_recovered",
            task=rec.task,
            incarnation=rec.incarnation,
            pid=rec.pid,
            adopted=rec.adopted,
            note=rec.note,
        )
        found.append(rec)
    return found


def _dead_note(rec: RecoveredTask) -> str:
    try:
        same = abs(psutil.Process(rec.pid).create_time() - rec.create_time) < 0.05
    except psutil.NoSuchProcess:
        return "process gone"
    return "process exited" if same else "pid reused by another process"


def _group_is_ours(rec: RecoveredTask) -> bool:
    """Whether killing `rec.pgid` can only hit the task's processes. Linux does not
    reuse a pid while it names a live process group, so the group is ours unless
    the leader's pid now belongs to a different process (then our group is empty)."""
    try:
        return abs(psutil.Process(rec.pid).create_time() - rec.create_time) < 0.05
    except psutil.NoSuchProcess:
        return True


def _clean(rec: RecoveredTask, *, kill_group: bool) -> None:
    if kill_group:
        _killpg(rec.pgid, signal.SIGKILL)
        # Wait for the leader (reaping it if it happens to be our child).
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(rec.pid)
            if abs(proc.create_time() - rec.create_time) < 0.05:
                proc.wait(timeout=5)
    limits = _limits_from_record(rec)
    if limits is not None:
        limits.remove()


def _user_ids(user: str) -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ValueError(f"task user {user!r} does not exist on this host") from None
    if os.geteuid() != 0:
        raise ValueError(f"running tasks as {user!r} needs the agent to run as root")
    return entry.pw_uid, entry.pw_gid


@contextlib.asynccontextmanager
async def open_executor(
    *,
    machine: str,
    work_dir: Path,
    limits: LimitsMode,
    report: Reporter,
    backoff: Backoff | None = None,
    poll_interval: float = 0.5,
    detach_on_exit: bool = False,
    task_user: str | None = None,
    on_probe: Callable[[str, bool], None] | None = None,
) -> AsyncIterator[Executor]:
    """An `Executor` whose supervisors live in a nursery owned by this context.

    On exit every task is stopped (SIGTERM, grace, SIGKILL; shielded from
    cancellation so no process outlives a failed test), unless
    `detach_on_exit`: then supervisors are cancelled and processes keep
    running with their state files, for the next agent's `recover`.
    """
    async with trio.open_nursery() as nursery:
        executor = Executor(
            machine=machine,
            work_dir=work_dir,
            limits=limits,
            report=report,
            nursery=nursery,
            backoff=backoff,
            poll_interval=poll_interval,
            task_user=task_user,
            on_probe=on_probe,
        )
        try:
            yield executor
        finally:
            if detach_on_exit:
                nursery.cancel_scope.cancel()
            else:
                with trio.CancelScope(shield=True):
                    await executor.stop_all()
