"""The real executor: tasks run as limited processes, stop, restart, OOM, recover.

Every test uses its own agent name (so its own cgroups) and work dir, and
checks that the processes and cgroups it made are gone, so the file is safe
under pytest-xdist.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import signal
import sys
import textwrap
import uuid
from pathlib import Path

import psutil
import pytest
import trio
import trio.testing

from agents.executor import open_executor, recover
from agents.limits import LimitKind, LimitsMode, probe_limits, release_agent_cgroups
from agents.task import Backoff, ReportedState, TaskReport, TaskSpec
from cellstate.model import RestartPolicy

PY = sys.executable
FINAL = {ReportedState.EXITED, ReportedState.FAILED, ReportedState.LOST}


class Recorder:
    """Collects reports; `wait` blocks until a predicate over them holds."""

    def __init__(self, timeout: float = 20.0) -> None:
        # Under MockClock(autojump_threshold=0) virtual time leaps while a real
        # process runs, so such tests pass timeout=math.inf (pytest-timeout guards).
        self.timeout = timeout
        self.reports: list[TaskReport] = []
        self.times: list[float] = []
        self._changed = trio.Event()

    def __call__(self, report: TaskReport) -> None:
        self.reports.append(report)
        self.times.append(trio.current_time())
        self._changed.set()
        self._changed = trio.Event()

    def of(self, task: str) -> list[TaskReport]:
        return [r for r in self.reports if r.task == task]

    def final(self, task: str) -> TaskReport | None:
        return next((r for r in self.of(task) if r.state in FINAL), None)

    async def wait(self, pred) -> None:
        with trio.fail_after(self.timeout):
            while not pred():
                await self._changed.wait()

    async def wait_final(self, task: str) -> TaskReport:
        await self.wait(lambda: self.final(task) is not None)
        final = self.final(task)
        assert final is not None
        return final

    async def wait_state(self, task: str, state: ReportedState, count: int = 1) -> None:
        await self.wait(lambda: sum(r.state is state for r in self.of(task)) >= count)


async def wait_until(pred, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.01)


async def wait_file(path: Path, timeout: float = 10.0) -> str:
    with trio.fail_after(timeout):
        while not (path.exists() and path.read_text()):
            await trio.sleep(0.01)
    return path.read_text()


def script(body: str) -> tuple[str, ...]:
    return (PY, "-c", textwrap.dedent(body))


def _cleanup_mode(mode: LimitsMode) -> None:
    release_agent_cgroups(mode)
    for path in (mode.memory_dir, mode.cpu_dir):
        assert path is None or not path.exists(), f"cgroup left behind: {path}"


@pytest.fixture
def agent_name() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def limits(agent_name: str):
    mode = probe_limits(agent_name)
    yield mode
    _cleanup_mode(mode)


@pytest.fixture
def rlimits(agent_name: str):
    mode = probe_limits(agent_name, force=LimitKind.RLIMIT)
    yield mode
    _cleanup_mode(mode)


def task_dir(work: Path, task: str, inc: int) -> Path:
    return work / "tasks" / f"{task}.{inc}"


def test_probe_prefers_cgroups_here_and_says_why(limits: LimitsMode) -> None:
    assert limits.reason
    if limits.kind is LimitKind.RLIMIT:
        pytest.skip(f"no writable cgroup on this host: {limits.reason}")
    assert limits.memory_dir is not None and limits.memory_dir.is_dir()
    # Below our own cgroup, never beside it.
    own = Path("/proc/self/cgroup").read_text()
    if limits.kind is LimitKind.CGROUP_V1:
        mine = next(
            line.split(":", 2)[2]
            for line in own.splitlines()
            if "memory" in line.split(":")[1].split(",")
        )
        assert str(limits.memory_dir).startswith(f"/sys/fs/cgroup/memory{mine}".rstrip("/"))


def test_command_runs_output_captured_exit_code_reported(limits, tmp_path: Path) -> None:
    rec = Recorder()

    async def main() -> None:
        async with open_executor(machine="m1", work_dir=tmp_path, limits=limits, report=rec) as ex:
            ex.start(
                "job.0",
                1,
                TaskSpec(
                    argv=script("""
                    import os, sys
                    print("hello", os.environ["OMEGA_TASK_ID"], os.environ["OMEGA_INCARNATION"],
                          os.environ["GREETING"], os.getcwd())
                    print("oops", file=sys.stderr)
                    sys.exit(3)
                """),
                    env={"GREETING": "hi"},
                    cpu_millicores=500,
                    memory_bytes=256 << 20,
                ),
            )
            final = await rec.wait_final("job.0")
            assert ex.running() == []
        assert [r.state for r in rec.of("job.0")] == [
            ReportedState.STARTING,
            ReportedState.RUNNING,
            ReportedState.EXITED,
        ]
        assert final.exit_code == 3 and final.machine == "m1" and final.incarnation == 1

    trio.run(main)
    d = task_dir(tmp_path, "job.0", 1)
    assert (d / "stdout").read_text() == f"hello job.0 1 hi {d}\n"
    assert (d / "stderr").read_text() == "oops\n"
    assert not (d / "state.json").exists()


def test_start_error_is_reported(limits, tmp_path: Path) -> None:
    rec = Recorder()

    async def main() -> None:
        async with open_executor(machine="m1", work_dir=tmp_path, limits=limits, report=rec) as ex:
            ex.start("job.0", 1, TaskSpec(argv=("/nonexistent/omega-binary",)))
            final = await rec.wait_final("job.0")
        assert final.state is ReportedState.FAILED
        assert final.reason is not None and final.reason.startswith("start_error: ")
        assert "nonexistent" in final.reason

    trio.run(main)


def test_an_environment_the_kernel_refuses_fails_the_task_not_the_agent(
    limits, tmp_path: Path
) -> None:
    """A name with '=' took the whole agent down, and `omega up` restarted it into the same
    task: every task of the machine went with it, again and again."""
    rec = Recorder()

    async def main() -> None:
        async with open_executor(machine="m1", work_dir=tmp_path, limits=limits, report=rec) as ex:
            ex.start("bad.0", 1, TaskSpec(argv=("true",), env={"A=B": "x"}))
            final = await rec.wait_final("bad.0")
            assert final.state is ReportedState.FAILED
            assert final.reason == "start_error: illegal environment variable name"
            ex.start("good.0", 1, TaskSpec(argv=("true",)))
            done = await rec.wait_final("good.0")
            assert (done.state, done.exit_code) == (ReportedState.EXITED, 0)

    trio.run(main)


def test_a_program_not_in_path_fails_naming_it_and_the_path(limits, tmp_path: Path) -> None:
    # Run as `nobody`, exec's walk down a PATH holding a directory nobody may enter ended
    # in "[Errno 13] Permission denied: 'no-such-binary-xyz'".
    rec = Recorder()

    async def main() -> None:
        async with open_executor(machine="m1", work_dir=tmp_path, limits=limits, report=rec) as ex:
            ex.start("nx.0", 1, TaskSpec(argv=("no-such-binary-xyz", "--flag")))
            final = await rec.wait_final("nx.0")
            assert final.state is ReportedState.FAILED
            assert final.reason == (
                "start_error: command 'no-such-binary-xyz' not found in the task's PATH"
            )

    trio.run(main)


def test_task_runs_inside_its_cgroups_with_limits(limits, tmp_path: Path) -> None:
    if limits.kind is not LimitKind.CGROUP_V1:
        pytest.skip(f"checks cgroup v1 files; this host uses {limits.describe()}")
    rec = Recorder()

    async def main() -> None:
        async with open_executor(machine="m1", work_dir=tmp_path, limits=limits, report=rec) as ex:
            ex.start(
                "job.0",
                2,
                TaskSpec(
                    argv=script("""
                    cgs = dict(l.split(":", 2)[1:] for l in open("/proc/self/cgroup").read().splitlines())
                    mem = "/sys/fs/cgroup/memory" + cgs["memory"].strip()
                    cpu = "/sys/fs/cgroup/cpu" + cgs["cpu"].strip()
                    print(mem)
                    print(open(mem + "/memory.limit_in_bytes").read().strip())
                    print(open(cpu + "/cpu.cfs_quota_us").read().strip())
                """),
                    cpu_millicores=250,
                    memory_bytes=100 << 20,
                ),
            )
            final = await rec.wait_final("job.0")
            assert final.exit_code == 0

    trio.run(main)
    mem, limit, quota = (task_dir(tmp_path, "job.0", 2) / "stdout").read_text().split()
    assert mem == str(limits.memory_dir / "job.0.2")
    assert int(limit) == 100 << 20
    assert int(quota) == 25_000
    assert not Path(mem).exists()  # removed when the task ended


@pytest.mark.slow
def test_stop_sends_sigterm_then_sigkill_after_grace(limits, tmp_path: Path) -> None:
    rec = Recorder()
    marker = tmp_path / "got-sigterm"
    child_pid_file = tmp_path / "child.pid"

    async def main() -> None:
        async with open_executor(machine="m1", work_dir=tmp_path, limits=limits, report=rec) as ex:
            ex.start(
                "svc.0",
                1,
                TaskSpec(
                    argv=script(f"""
                    import signal, subprocess, sys, time
                    def on_term(signum, frame):
                        open({str(marker)!r}, "w").write("term")  # and keep running
                    signal.signal(signal.SIGTERM, on_term)
                    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
                    open({str(child_pid_file)!r}, "w").write(str(child.pid))
                    print("ready", flush=True)
                    while True:
                        time.sleep(0.05)
                """),
                    grace_period=1.0,
                ),
            )
            await wait_file(task_dir(tmp_path, "svc.0", 1) / "stdout")
            state = json.loads((task_dir(tmp_path, "svc.0", 1) / "state.json").read_text())
            assert state["pid"] == state["pgid"] == os.getpgid(state["pid"])
            t0 = trio.current_time()
            assert await ex.stop("svc.0", 1, "test")
            elapsed = trio.current_time() - t0
            assert marker.read_text() == "term"
            assert 1.0 <= elapsed < 5.0
            final = rec.final("svc.0")
            assert final is not None and final.state is ReportedState.FAILED
            assert final.reason == "stopped:test (signal:SIGKILL)"
            child = int(child_pid_file.read_text())
            assert not psutil.pid_exists(child) or psutil.Process(child).status() == "zombie"
            assert not psutil.pid_exists(state["pid"])

    trio.run(main)


def test_stop_of_a_task_that_obeys_sigterm_is_quick(limits, tmp_path: Path) -> None:
    rec = Recorder()

    async def main() -> None:
        async with open_executor(machine="m1", work_dir=tmp_path, limits=limits, report=rec) as ex:
            ex.start(
                "svc.0",
                1,
                TaskSpec(
                    argv=script("import time; print('ready', flush=True); time.sleep(60)"),
                    grace_period=30.0,
                ),
            )
            await wait_file(task_dir(tmp_path, "svc.0", 1) / "stdout")
            with trio.fail_after(5):
                await ex.stop("svc.0", 1, "preempted")
        final = rec.final("svc.0")
        assert final is not None and final.reason == "stopped:preempted (signal:SIGTERM)"

    trio.run(main)


def test_memory_hog_under_64mib_is_oom_killed(limits, tmp_path: Path) -> None:
    if limits.kind is LimitKind.RLIMIT:
        pytest.skip(f"no writable cgroup, so no OOM killer to observe: {limits.reason}")
    rec = Recorder()

    async def main() -> None:
        async with open_executor(machine="m1", work_dir=tmp_path, limits=limits, report=rec) as ex:
            ex.start(
                "hog.0",
                1,
                TaskSpec(
                    argv=script("""
                    chunks = [bytearray(1 << 20) for _ in range(200)]  # 200 MiB, touched
                    print("survived", len(chunks))
                """),
                    memory_bytes=64 << 20,
                ),
            )
            final = await rec.wait_final("hog.0")
        assert final.state is ReportedState.FAILED
        assert final.reason == "oom"

    trio.run(main)
    assert "survived" not in (task_dir(tmp_path, "hog.0", 1) / "stdout").read_text()


def test_rlimit_fallback_limits_memory_when_cgroups_are_off(rlimits, tmp_path: Path) -> None:
    assert rlimits.kind is LimitKind.RLIMIT and "forced" in rlimits.reason
    rec = Recorder()
    probe = """
        import os, resource, sys
        print(resource.getrlimit(resource.RLIMIT_DATA)[0], os.nice(0), flush=True)
        data = bytearray(int(sys.argv[1]) << 20)
        print("allocated")
    """

    async def main() -> None:
        async with open_executor(machine="m1", work_dir=tmp_path, limits=rlimits, report=rec) as ex:
            spec = TaskSpec(argv=(*script(probe), "200"), memory_bytes=64 << 20, cpu_millicores=500)
            ex.start("hog.0", 1, spec)
            ex.start("ok.0", 1, attrs_evolve(spec, argv=(*script(probe), "16")))
            hog = await rec.wait_final("hog.0")
            ok = await rec.wait_final("ok.0")
        assert hog.state is ReportedState.EXITED and hog.exit_code == 1
        assert ok.state is ReportedState.EXITED and ok.exit_code == 0

    trio.run(main)
    hog_dir, ok_dir = task_dir(tmp_path, "hog.0", 1), task_dir(tmp_path, "ok.0", 1)
    assert (hog_dir / "stdout").read_text() == f"{64 << 20} 5\n"
    assert "MemoryError" in (hog_dir / "stderr").read_text()
    assert (ok_dir / "stdout").read_text() == f"{64 << 20} 5\nallocated\n"


def attrs_evolve(spec: TaskSpec, **changes) -> TaskSpec:
    import attrs

    return attrs.evolve(spec, **changes)


def test_on_failure_restarts_with_exponential_backoff(limits, tmp_path: Path) -> None:
    rec = Recorder(timeout=math.inf)

    async def main() -> None:
        async with open_executor(
            machine="m1",
            work_dir=tmp_path,
            limits=limits,
            report=rec,
            backoff=Backoff(initial=1.0, factor=2.0, maximum=60.0),
        ) as ex:
            ex.start(
                "svc.0",
                7,
                TaskSpec(argv=script("import sys; sys.exit(2)"), restart=RestartPolicy.ON_FAILURE),
            )
            await rec.wait_state("svc.0", ReportedState.RUNNING, count=4)
            await ex.stop("svc.0", 7, "done")
        runs = [
            t
            for r, t in zip(rec.reports, rec.times, strict=True)
            if r.state is ReportedState.RUNNING
        ]
        gaps = [b - a for a, b in itertools.pairwise(runs)]
        # Virtual time: each gap is the back-off (the process itself takes ~0 virtual time).
        assert [round(g, 1) for g in gaps[:3]] == [1.0, 2.0, 4.0]
        restarts = [r for r in rec.of("svc.0") if r.state is ReportedState.STARTING][1:]
        assert restarts[0].reason == "restart after exit:2" and restarts[0].exit_code == 2
        assert rec.final("svc.0").reason.startswith("stopped:done")

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_never_does_not_restart(limits, tmp_path: Path) -> None:
    rec = Recorder(timeout=math.inf)

    async def main() -> None:
        async with open_executor(machine="m1", work_dir=tmp_path, limits=limits, report=rec) as ex:
            ex.start(
                "b.0",
                1,
                TaskSpec(argv=script("import sys; sys.exit(1)"), restart=RestartPolicy.NEVER),
            )
            final = await rec.wait_final("b.0")
            await trio.sleep(5)  # virtual: nothing more happens
        assert final.exit_code == 1
        assert [r.state for r in rec.of("b.0")] == [
            ReportedState.STARTING,
            ReportedState.RUNNING,
            ReportedState.EXITED,
        ]

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_on_failure_does_not_restart_a_success(limits, tmp_path: Path) -> None:
    rec = Recorder(timeout=math.inf)

    async def main() -> None:
        async with open_executor(machine="m1", work_dir=tmp_path, limits=limits, report=rec) as ex:
            ex.start("b.0", 1, TaskSpec(argv=script("pass"), restart=RestartPolicy.ON_FAILURE))
            final = await rec.wait_final("b.0")
        assert final.state is ReportedState.EXITED and final.exit_code == 0
        assert len(rec.of("b.0")) == 3

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.slow
def test_usage_reports_cpu_and_memory(limits, tmp_path: Path) -> None:
    rec = Recorder()

    async def main() -> None:
        async with open_executor(machine="m1", work_dir=tmp_path, limits=limits, report=rec) as ex:
            ex.start(
                "spin.0",
                1,
                TaskSpec(
                    argv=script("""
                    data = bytearray(50 << 20)
                    print("ready", flush=True)
                    while True:
                        pass
                """),
                    cpu_millicores=500,
                    memory_bytes=256 << 20,
                    grace_period=0.5,
                ),
            )
            await wait_file(task_dir(tmp_path, "spin.0", 1) / "stdout")
            ex.usage()
            await trio.sleep(1.5)
            (usage,) = ex.usage()
            assert (usage.task, usage.incarnation) == ("spin.0", 1)
            assert usage.memory >= 50 << 20
            if limits.kind is not LimitKind.RLIMIT:
                assert 50 <= usage.cpu <= 650  # cfs quota: half a core
            else:
                assert usage.cpu >= 50

    trio.run(main)


@pytest.mark.slow
def test_recover_adopts_live_tasks_and_cleans_dead_ones(limits, tmp_path: Path) -> None:
    rec = Recorder()
    sleeper = TaskSpec(
        argv=script("import time; print('up', flush=True); time.sleep(120)"),
        grace_period=1.0,
        memory_bytes=128 << 20,
        cpu_millicores=200,
    )

    async def first_agent() -> dict[str, dict]:
        async with open_executor(
            machine="m1", work_dir=tmp_path, limits=limits, report=rec, detach_on_exit=True
        ) as ex:
            for task in ("live.0", "dead.0", "stopme.0"):
                ex.start(task, 1, sleeper)
            for task in ("live.0", "dead.0", "stopme.0"):
                await wait_file(task_dir(tmp_path, task, 1) / "stdout")
        return {
            t: json.loads((task_dir(tmp_path, t, 1) / "state.json").read_text())
            for t in ("live.0", "dead.0", "stopme.0")
        }

    states = trio.run(first_agent)
    # The agent is gone; its tasks are not. One of them dies meanwhile.
    for state in states.values():
        assert psutil.pid_exists(state["pid"])
    try:
        _recover_and_adopt(limits, tmp_path, states, sleeper)
    finally:  # on failure, leave no process behind
        for state in states.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(state["pgid"], signal.SIGKILL)
        recover(tmp_path, adopt=False)


def _gone_or_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _recover_and_adopt(limits, tmp_path: Path, states: dict, sleeper: TaskSpec) -> None:
    os.killpg(states["dead.0"]["pgid"], signal.SIGKILL)
    trio.run(wait_until, lambda: _gone_or_zombie(states["dead.0"]["pid"]))

    found = {r.task: r for r in recover(tmp_path)}
    assert found["live.0"].adopted and found["stopme.0"].adopted
    assert not found["dead.0"].adopted and found["dead.0"].note in {
        "process gone",
        "process exited",
    }
    assert not (task_dir(tmp_path, "dead.0", 1) / "state.json").exists()
    for path in states["dead.0"]["cgroups"]:
        assert not Path(path).exists()
    assert found["live.0"].spec == sleeper

    rec2 = Recorder()

    async def second_agent() -> None:
        async with open_executor(
            machine="m1", work_dir=tmp_path, limits=limits, report=rec2, poll_interval=0.05
        ) as ex:
            assert ex.adopt(found["live.0"]) and ex.adopt(found["stopme.0"])
            await rec2.wait_state("live.0", ReportedState.RUNNING)
            assert {(u.task, u.incarnation) for u in ex.usage()} == {("live.0", 1), ("stopme.0", 1)}
            os.kill(found["live.0"].pid, signal.SIGTERM)  # dies on its own
            live = await rec2.wait_final("live.0")
            assert live.state is ReportedState.FAILED and live.reason == "signal:SIGTERM"
            await ex.stop("stopme.0", 1, "test")
            stopped = rec2.final("stopme.0")
            assert stopped.reason == "stopped:test (signal:SIGTERM)"

    trio.run(second_agent)
    for state in states.values():
        assert not psutil.pid_exists(state["pid"])
        for path in state["cgroups"]:
            assert not Path(path).exists()
    assert not list(tmp_path.glob("tasks/*/state.json"))


def test_recover_without_adopting_kills_survivors(limits, tmp_path: Path) -> None:
    rec = Recorder()

    async def first_agent() -> dict:
        async with open_executor(
            machine="m1", work_dir=tmp_path, limits=limits, report=rec, detach_on_exit=True
        ) as ex:
            ex.start(
                "x.0",
                3,
                TaskSpec(argv=script("import time; print('up', flush=True); time.sleep(120)")),
            )
            await wait_file(task_dir(tmp_path, "x.0", 3) / "stdout")
        return json.loads((task_dir(tmp_path, "x.0", 3) / "state.json").read_text())

    state = trio.run(first_agent)
    (found,) = recover(tmp_path, adopt=False)
    assert not found.adopted and "killed" in found.note
    assert not psutil.pid_exists(state["pid"])
    for path in state["cgroups"]:
        assert not Path(path).exists()


def as_nobody(body: str) -> tuple[str, ...]:
    # This venv's interpreter may live under a private home; a task running as
    # nobody finds the system's python3 on PATH, as the example jobs do.
    return ("python3", "-c", textwrap.dedent(body))


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another user needs root")
def test_task_user_cannot_read_private_files_and_stays_in_its_cgroup(limits, tmp_path: Path):
    """As `omega up` runs them as root: tasks as nobody, the store's data dir 0700."""
    store = tmp_path / "store"
    store.mkdir(mode=0o700)
    (store / "token").write_text("secret-token")
    work = tmp_path / "agent"
    rec = Recorder()

    async def main() -> None:
        async with open_executor(
            machine="m1", work_dir=work, limits=limits, report=rec, task_user="nobody"
        ) as ex:
            ex.start(
                "peek.0",
                1,
                TaskSpec(
                    argv=as_nobody(f"""
                import os
                print("uid", os.getuid())
                open("own-file", "w").write("a task may write its own directory")
                try:
                    print(open({str(store / "token")!r}).read())
                except PermissionError:
                    print("denied")
            """),
                    memory_bytes=64 << 20,
                ),
            )
            await rec.wait_final("peek.0")
            if limits.kind is not LimitKind.RLIMIT:
                ex.start(
                    "hog.0",
                    1,
                    TaskSpec(
                        argv=as_nobody("""
                    chunks = [bytearray(1 << 20) for _ in range(200)]
                """),
                        memory_bytes=64 << 20,
                    ),
                )
                hog = await rec.wait_final("hog.0")
                assert (hog.state, hog.reason) == (ReportedState.FAILED, "oom")

    os.chmod(tmp_path, 0o755)  # the task's own dir must be reachable, as in an agent work dir
    trio.run(main)
    out = (task_dir(work, "peek.0", 1) / "stdout").read_text().split()
    assert out == ["uid", "65534", "denied"], out
    assert rec.final("peek.0").exit_code == 0


def test_agents_of_the_same_name_on_one_host_get_their_own_cgroups(tmp_path, monkeypatch):
    """Two cells on one host each have an `agent-0`. They shared one cgroup directory, and
    the first to stop removed it under the other's tasks, which then failed to start
    (`start_error: limits: [Errno 2] No such file or directory: .../omega/agent-0/...`; seen
    in the suite with two `omega up` cells at once). The work dir tells them apart, and stays
    the agent's name across its restarts, which `recover` relies on."""
    from agents.limits import cgroup_name

    one, two = tmp_path / "cell-a" / "agent-0", tmp_path / "cell-b" / "agent-0"
    assert cgroup_name("agent-0", one) != cgroup_name("agent-0", two)
    assert cgroup_name("agent-0", one).startswith("agent-0-")
    monkeypatch.chdir(tmp_path)
    assert cgroup_name("agent-0", Path("cell-a/agent-0")) == cgroup_name("agent-0", one)


def test_forget_removes_only_ended_runs_of_tasks_the_cell_no_longer_knows(
    limits, tmp_path: Path
) -> None:
    """A purged job's runs leave their output here for good unless the agent lets go of
    it (`Executor.forget`, from the agent's sweep): a disk filled with every task ever run."""
    rec = Recorder()

    async def main() -> None:
        async with open_executor(machine="m1", work_dir=tmp_path, limits=limits, report=rec) as ex:
            for task in ("purged.0", "kept.0"):
                ex.start(task, 0, TaskSpec(argv=("true",)))
                await rec.wait_final(task)
            ex.start("live.0", 0, TaskSpec(argv=("sleep", "30")))
            await rec.wait_state("live.0", ReportedState.RUNNING)
            (tmp_path / "tasks" / "not-a-run").mkdir()
            known = {"kept.0"}
            # The live task is unknown too (as if purged under it): a run in progress stays.
            assert ex.forget(known.__contains__) == 1
            left = sorted(p.name for p in (tmp_path / "tasks").iterdir())
            assert left == ["kept.0.0", "live.0.0", "not-a-run"], left
            await ex.stop("live.0", 0)

    trio.run(main)


def test_output_past_the_cap_is_rotated_and_read_on_by_offset(limits, tmp_path: Path) -> None:
    """A service that logs for months would fill its machine: past the cap a stream is cut
    (copytruncate) and its newest cap's worth kept beside it; offsets stay the stream's, so
    a reader goes on where it was, and one asking for bytes rotated away is told where the
    oldest kept begin."""
    from agents import output

    rec = Recorder()
    go = tmp_path / "go"
    body = f"""
        import os, sys, time
        for i in range(1000):
            sys.stdout.write(f"line {{i:04d}} ".ljust(99, "x") + "\\n")
        sys.stdout.flush()
        while not os.path.exists({str(go)!r}):
            time.sleep(0.01)
        for i in range(1000, 1010):
            sys.stdout.write(f"line {{i:04d}} ".ljust(99, "x") + "\\n")
        sys.stdout.flush()
        time.sleep(30)
    """

    async def main() -> None:
        async with open_executor(machine="m1", work_dir=tmp_path, limits=limits, report=rec) as ex:
            ex.start("chatty.0", 0, TaskSpec(argv=script(body)))
            run = tmp_path / "tasks" / "chatty.0.0"
            out = run / "stdout"
            await wait_until(lambda: out.exists() and out.stat().st_size == 100_000)
            start, first = output.read(run, "stdout", 0, 500)
            assert (start, first[:9]) == (0, b"line 0000")
            assert ex.rotate_output(20_000) == 100_000
            assert (run / "stdout").stat().st_size == 0
            assert (run / "stdout.1").stat().st_size == 20_000
            assert ex.rotate_output(20_000) == 0  # under the cap: left alone
            # Bytes rotated away: answered from the oldest kept, which says where it begins.
            start, chunk = output.read(run, "stdout", 500, 100)
            assert (start, chunk[:9]) == (80_000, b"line 0800")
            # A reader at the end before the rotation reads on from there.
            go.touch()
            await wait_until(lambda: (run / "stdout").stat().st_size == 1_000)
            start, chunk = output.read(run, "stdout", 100_000, 1 << 20)
            assert (start, chunk[:9], len(chunk)) == (100_000, b"line 1000", 1_000)
            start, chunk = output.read(run, "stdout", 99_900, 1 << 20)
            assert (start, chunk[:9], len(chunk)) == (99_900, b"line 0999", 100)
            await ex.stop("chatty.0", 0)

    trio.run(main)
