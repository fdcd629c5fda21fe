"""Agent processes (`python -m agents`) against a real 3-replica store.

Tasks are placed by committing transactions directly (no scheduler). The
replicas mark a machine down after 2 s without a heartbeat and the agents heartbeat every
0.5 s. Teardown kills every process it started by pid: replicas, agents, and
the tasks of agents killed with SIGKILL (found through their state files and
their `OMEGA_MACHINE` environment, machine names being unique per test).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from cellstate import Claim, CommitResult, JobSpec, Transaction
from cellstate.wire import parse
from cellstore.cell import DEFAULT_JOB_RETENTION_S
from cellstore.cellclient import Applied, CellError, MachineView, SyncCellClient, TaskView
from harness.cluster import LocalCluster, cell_options

pytestmark = pytest.mark.slow

PY = sys.executable


class LiveCell:
    """A LocalCluster of the cell plus the agent processes a test starts."""

    def __init__(
        self,
        base: Path,
        heartbeat_timeout: float = 2.0,
        job_retention: float = DEFAULT_JOB_RETENTION_S,
    ) -> None:
        self.base = base
        self.heartbeat_timeout = heartbeat_timeout
        self.cluster = LocalCluster(
            base / "store",
            **cell_options(heartbeat_timeout_s=heartbeat_timeout, job_retention_s=job_retention),
        )
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.work_dirs: dict[str, Path] = {}
        self.prefix = uuid.uuid4().hex[:6]

    def __enter__(self) -> LiveCell:
        self.cluster.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        for name in list(self.agents):
            self.kill_agent(name)
        self.kill_orphan_tasks()
        self.cluster.close()

    # -- processes ---------------------------------------------------------------

    def machine(self, name: str) -> str:
        return f"{name}-{self.prefix}"

    def start_agent(self, name: str, *args: str, heartbeat: float = 0.5) -> str:
        machine = self.machine(name)
        work = self.work_dirs.setdefault(machine, self.base / "agents" / machine)
        work.mkdir(parents=True, exist_ok=True)
        with open(work.parent / f"{machine}.log", "ab") as out:
            self.agents[machine] = subprocess.Popen(
                [
                    PY,
                    "-m",
                    "agents",
                    "--name",
                    machine,
                    "--addr",
                    ",".join(self.cluster.api),
                    f"--token={self.cluster.token}",
                    *self.cluster.client_args(),
                    "--work-dir",
                    str(work),
                    "--heartbeat",
                    str(heartbeat),
                    "--usage",
                    "1",
                    *args,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return machine

    def kill_agent(self, machine: str, sig: int = signal.SIGKILL) -> None:
        proc = self.agents.pop(machine)
        if proc.poll() is None:
            os.kill(proc.pid, sig)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)

    def agent_log(self, machine: str) -> str:
        return (self.work_dirs[machine].parent / f"{machine}.log").read_text(errors="replace")

    def kill_orphan_tasks(self) -> None:
        for work in self.work_dirs.values():
            for state in work.glob("tasks/*/state.json"):
                with contextlib.suppress(OSError, ValueError, KeyError):
                    os.killpg(json.loads(state.read_text())["pgid"], signal.SIGKILL)
        names = set(self.work_dirs)
        for proc in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.Error):
                if proc.environ().get("OMEGA_MACHINE") in names:
                    proc.kill()

    # -- API ---------------------------------------------------------------------

    def client(self) -> SyncCellClient:
        return SyncCellClient(self.cluster.api, self.cluster.token)

    def submit(
        self, name: str, command: list[str], tasks: int = 1, memory: str = "256Mi", **extra: Any
    ) -> str:
        job = f"{name}-{self.prefix}"
        spec = {
            "name": job,
            "owner": "test",
            "scheduler": "batch",
            "tasks": tasks,
            "resources": {"cpu": "100m", "memory": memory},
            "command": command,
            **extra,
        }
        with self.client() as cell:
            return cell.submit(parse(spec, JobSpec), job).job

    def place(self, claims: list[tuple[str, str]]) -> Applied[CommitResult]:
        txn = Transaction("test", tuple(Claim(t, m) for t, m in claims))
        with self.client() as cell:
            committed = cell.commit(txn)
        assert not committed.result.rejected, committed
        return committed

    def task(self, task: str) -> TaskView:
        with self.client() as cell:
            return cell.task(task)

    def machines(self) -> dict[str, MachineView]:
        with self.client() as cell:
            return {m["id"]: m for m in cell.machines()}

    def wait(
        self, what: str, check: Callable[[], Any], timeout: float = 30.0, machine: str | None = None
    ) -> Any:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = check()
            if last:
                return last
            proc = self.agents.get(machine or "")
            if proc is not None and proc.poll() is not None:
                break
            time.sleep(0.1)
        logs = self.agent_log(machine) if machine else ""
        raise AssertionError(f"timed out waiting for {what}\n{logs[-4000:]}")

    def wait_up(self, machine: str, timeout: float = 30.0) -> dict[str, Any]:
        return self.wait(
            f"{machine} up",
            lambda: (m := self.machines().get(machine)) and m["state"] == "up" and m,
            timeout,
            machine,
        )

    def wait_task(
        self,
        task: str,
        pred: Callable[[dict[str, Any]], bool],
        timeout: float = 30.0,
        machine: str | None = None,
    ) -> dict[str, Any]:
        return self.wait(
            f"task {task}", lambda: (t := self.task(task)) and pred(t) and t, timeout, machine
        )

    def logs(self, machine: str, task: str, incarnation: int, stream: str = "stdout") -> str:
        address = self.machines()[machine]["labels"]["omega.agent"]
        resp = httpx.get(
            f"http://{address}/v1/logs",
            timeout=10,
            headers={"authorization": f"Bearer {self.cluster.token}"},
            params={"task": task, "incarnation": incarnation, "stream": stream},
        )
        assert resp.status_code == 200, resp.text
        return resp.text


@pytest.fixture
def cell(tmp_path: Path):
    with LiveCell(tmp_path) as live:
        yield live


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_task_runs_exit_code_and_logs(cell: LiveCell) -> None:
    m = cell.start_agent("a", "--label", "zone=z1", "--domain", "rack-1")
    info = cell.wait_up(m)
    assert info["labels"]["zone"] == "z1" and info["domain"] == "rack-1"
    assert ":" in info["labels"]["omega.agent"]
    job = cell.submit(
        "exit3",
        [
            PY,
            "-c",
            "import sys; print('hello from', sys.argv[0]);"
            "print('oops', file=sys.stderr); sys.exit(3)",
        ],
    )
    cell.place([(f"{job}.0", m)])
    task = cell.wait_task(f"{job}.0", lambda t: t["state"] in ("exited", "failed"), machine=m)
    assert (task["state"], task["exit_code"]) == ("exited", 3), task
    assert cell.logs(m, f"{job}.0", 0) == "hello from -c\n"
    assert cell.logs(m, f"{job}.0", 0, "stderr") == "oops\n"
    # `omega logs` finds the agent through the machine's `omega.agent` label.
    env = {
        **os.environ,
        "OMEGA_ADDR": ",".join(cell.cluster.api),
        "OMEGA_TOKEN": cell.cluster.token,
    }
    printed = subprocess.run(
        [PY, "-m", "omega", "logs", f"{job}.0", "--stream", "stderr"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (printed.returncode, printed.stdout) == (0, "oops\n"), printed.stderr
    # `-f` on a run that has ended prints its output and returns (it followed for good).
    followed = subprocess.run(
        [PY, "-m", "omega", "logs", f"{job}.0", "-f"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (followed.returncode, followed.stdout) == (0, "hello from -c\n"), followed.stderr
    # A second job on the same agent also runs: the agent keeps following the cell.
    ok = cell.submit("ok", [PY, "-c", "pass"])
    cell.place([(f"{ok}.0", m)])
    task = cell.wait_task(f"{ok}.0", lambda t: t["state"] == "exited", machine=m)
    assert task["exit_code"] == 0


STUBBORN = """
import os, signal, sys, time
def term(signum, frame):
    print("got SIGTERM", time.time(), flush=True)
signal.signal(signal.SIGTERM, term)
print("pid", os.getpid(), flush=True)
while True:
    time.sleep(0.05)
"""


def test_kill_sends_sigterm_then_sigkill_after_grace(cell: LiveCell) -> None:
    m = cell.start_agent("a")
    cell.wait_up(m)
    job = cell.submit("stubborn", [PY, "-c", STUBBORN], grace_period=2.0)
    cell.place([(f"{job}.0", m)])
    cell.wait_task(f"{job}.0", lambda t: t["state"] == "running", machine=m)
    out = cell.wait("pid printed", lambda: "pid" in (o := cell.logs(m, f"{job}.0", 0)) and o)
    pid = int(out.split()[1])
    assert _alive(pid)
    killed_at = time.time()
    with cell.client() as client:
        client.kill(job)
    cell.wait("SIGTERM recorded", lambda: "got SIGTERM" in cell.logs(m, f"{job}.0", 0), 10, m)
    assert _alive(pid), "SIGTERM must not kill it: it ignores SIGTERM"
    cell.wait("process gone", lambda: not _alive(pid), 15, m)
    gone_at = time.time()
    assert gone_at - killed_at >= 1.8, "SIGKILL came before the grace period ended"
    task = cell.task(f"{job}.0")
    assert task["state"] == "killed"


def test_a_leaving_agent_starts_nothing_new_and_reports_its_tasks_lost(
    cell: LiveCell,
) -> None:
    m = cell.start_agent("a")
    cell.wait_up(m)
    job = cell.submit("stubborn", [PY, "-c", STUBBORN], grace_period=3.0)
    cell.place([(f"{job}.0", m)])
    cell.wait_task(f"{job}.0", lambda t: t["state"] == "running", machine=m)
    cell.wait("pid printed", lambda: "pid" in cell.logs(m, f"{job}.0", 0))
    proc = cell.agents[m]
    os.kill(proc.pid, signal.SIGTERM)
    cell.wait("SIGTERM recorded", lambda: "got SIGTERM" in cell.logs(m, f"{job}.0", 0), 10, m)
    # While it waits out the grace period, the cell places a task here (as a scheduler
    # re-placing what the agent stops may): the leaving agent must not start it.
    late = cell.submit("late", LONG)
    cell.place([(f"{late}.0", m)])
    proc.wait(30)
    assert proc.returncode == 0, cell.agent_log(m)[-3000:]
    assert cell.task(f"{late}.0")["state"] == "assigned"
    stopped = cell.task(f"{job}.0")
    assert (stopped["state"], stopped["incarnation"]) == ("pending", 1), stopped
    assert stopped["reason"].startswith("stopped:agent shutdown (signal:SIGKILL)"), stopped


LONG = [PY, "-c", "import time\nwhile True: print('tick', flush=True); time.sleep(0.2)"]


def test_sigkilled_agent_is_marked_down_and_its_tasks_move(cell: LiveCell) -> None:
    a = cell.start_agent("a")
    b = cell.start_agent("b")
    cell.wait_up(a)
    cell.wait_up(b)
    job = cell.submit("long", LONG)
    tid = f"{job}.0"
    cell.place([(tid, a)])
    cell.wait_task(tid, lambda t: t["state"] == "running", machine=a)
    state = json.loads(next(cell.work_dirs[a].glob("tasks/*/state.json")).read_text())
    orphan = state["pid"]
    cell.kill_agent(a)
    # Marked down after the 2 s timeout; the task is lost and pending again.
    task = cell.wait_task(tid, lambda t: t["state"] == "pending", timeout=20)
    assert task["incarnation"] == 1 and task["reason"] == "lost", task
    assert cell.machines()[a]["state"] == "down"
    cell.place([(tid, b)])
    task = cell.wait_task(tid, lambda t: t["state"] == "running", machine=b)
    assert task["machine"] == b
    # Running means started: its first line may still be on its way to the log file.
    cell.wait("tick logged on b", lambda: "tick" in cell.logs(b, tid, 1), 10, b)
    # The old process still runs on a (nobody stopped it); a restarted agent
    # on the same work dir re-registers, adopts it and, as the cell placed it
    # elsewhere, kills it.
    assert _alive(orphan)
    cell.start_agent("a")
    cell.wait_up(a)
    cell.wait("orphan killed", lambda: not _alive(orphan), 20, a)
    assert cell.task(tid)["state"] == "running" and cell.task(tid)["machine"] == b


def test_restarted_agent_adopts_its_running_task(tmp_path: Path) -> None:
    # A restart (a new Python process, recovery, registration) takes ~2 s on a loaded 2-core
    # CI machine: the 2 s timeout of the other tests made "back within the timeout" a race.
    with LiveCell(tmp_path, heartbeat_timeout=6.0) as cell:
        a = cell.start_agent("a")
        cell.wait_up(a)
        job = cell.submit("adopt", LONG)
        tid = f"{job}.0"
        cell.place([(tid, a)])
        cell.wait_task(tid, lambda t: t["state"] == "running", machine=a)
        pid = json.loads(next(cell.work_dirs[a].glob("tasks/*/state.json")).read_text())["pid"]
        cell.kill_agent(a)
        cell.start_agent("a")  # back within the heartbeat timeout
        cell.wait("adopted", lambda: "recovered" in cell.agent_log(a), 20, a)
        time.sleep(7)  # longer than the heartbeat timeout
        task = cell.task(tid)
        assert (task["state"], task["machine"], task["incarnation"]) == ("running", a, 0), task
        assert cell.machines()[a]["state"] == "up"
        assert _alive(pid)


def test_tasks_survive_store_leader_failover(cell: LiveCell) -> None:
    a = cell.start_agent("a")
    cell.wait_up(a)
    job = cell.submit("survive", LONG, tasks=2)
    cell.place([(f"{job}.0", a)])
    cell.wait_task(f"{job}.0", lambda t: t["state"] == "running", machine=a)
    pid = json.loads(next(cell.work_dirs[a].glob("tasks/*/state.json")).read_text())["pid"]
    leader = cell.cluster.wait_for_leader()
    cell.cluster.kill(leader)
    cell.cluster.wait_for_leader()
    # The agent follows the new leader: a new placement runs, the old task still does,
    # and heartbeats keep the machine up past the timeout.
    cell.place([(f"{job}.1", a)])
    cell.wait_task(f"{job}.1", lambda t: t["state"] == "running", machine=a)
    time.sleep(3)
    assert cell.machines()[a]["state"] == "up"
    assert cell.task(f"{job}.0")["state"] == "running" and _alive(pid)
    assert cell.task(f"{job}.0")["incarnation"] == 0
    # SIGTERM to the agent stops its tasks before it exits, and reports them lost: they
    # go back to pending, to run again (they were failed for good, a service's too).
    proc = cell.agents[a]
    cell.kill_agent(a, signal.SIGTERM)
    assert proc.returncode == 0, cell.agent_log(a)[-3000:]
    assert not _alive(pid)
    for index in (0, 1):
        task = cell.task(f"{job}.{index}")
        assert (task["state"], task["machine"], task["incarnation"]) == ("pending", None, 1)
        assert task["reason"].startswith("stopped:agent shutdown"), task


HOG = "x = bytearray(200 << 20)\nfor i in range(0, len(x), 4096): x[i] = 1\nprint('survived')"


def test_memory_hog_is_stopped_at_its_limit_and_reported_oom(cell: LiveCell) -> None:
    a = cell.start_agent("a")
    cell.wait_up(a)
    limits = cell.wait(
        "limits line",
        lambda: next(
            (
                json.loads(line)
                for line in cell.agent_log(a).splitlines()
                if '"limits"' in line and line.startswith("{")
            ),
            None,
        ),
        20,
        a,
    )
    if limits["kind"] == "rlimit":
        pytest.skip(f"no writable cgroup here: {limits['why']}")
    job = cell.submit("hog", [PY, "-c", HOG], memory="64Mi")
    cell.place([(f"{job}.0", a)])
    task = cell.wait_task(f"{job}.0", lambda t: t["state"] in ("exited", "failed"), machine=a)
    assert (task["state"], task["reason"]) == ("failed", "oom"), task


def test_a_purged_job_leaves_nothing_on_the_agent_s_disk(tmp_path: Path) -> None:
    """The cell forgets a job 1 s after it ended (`PurgeJobs`); the agent's sweep then
    removes its runs' directories and output, which nothing can ask for any more."""
    with LiveCell(tmp_path, job_retention=1.0) as cell:
        m = cell.start_agent("a", "--sweep", "0.5")
        cell.wait_up(m)
        job = cell.submit("brief", [PY, "-c", "print('short and sweet')"])
        keep = cell.submit("keep", ["sleep", "60"])
        cell.place([(f"{job}.0", m), (f"{keep}.0", m)])
        cell.wait_task(f"{job}.0", lambda t: t["state"] == "exited", machine=m)
        tasks = cell.work_dirs[m] / "tasks"
        assert (tasks / f"{job}.0.0" / "stdout").read_text() == "short and sweet\n"

        def purged() -> bool:
            try:
                cell.task(f"{job}.0")
            except CellError as exc:
                return exc.code == "task_unknown"
            return False

        cell.wait("the job purged", purged, timeout=30, machine=m)
        cell.wait(
            "its run's directory removed", lambda: not (tasks / f"{job}.0.0").exists(), machine=m
        )
        assert (tasks / f"{keep}.0.0").is_dir()  # running: kept, and still running
        assert cell.task(f"{keep}.0")["state"] == "running"
        assert "task_dirs_removed" in cell.agent_log(m)


def test_omega_logs_reads_a_chatty_task_s_output_across_its_rotation(tmp_path: Path) -> None:
    """`omega agent --max-log-bytes`: past the cap a task's output is rotated, and
    `omega logs` prints what is kept, saying how much went before it."""
    with LiveCell(tmp_path) as cell:
        m = cell.start_agent("a", "--max-log-bytes", "20000", "--usage", "0.3")
        cell.wait_up(m)
        line = 'sys.stdout.write(f"line {i:04d} ".ljust(99, "x") + "\\n")'
        job = cell.submit(
            "chatty",
            [
                PY,
                "-c",
                f"import sys, time\nfor i in range(1000):\n    {line}\n"
                "sys.stdout.flush()\ntime.sleep(60)",
            ],
        )
        cell.place([(f"{job}.0", m)])
        run = cell.work_dirs[m] / "tasks" / f"{job}.0.0"
        cell.wait("the output rotated", lambda: (run / "stdout.1").exists(), machine=m)
        env = {
            **os.environ,
            "OMEGA_ADDR": ",".join(cell.cluster.api),
            "OMEGA_TOKEN": cell.cluster.token,
        }
        printed = subprocess.run(
            [PY, "-m", "omega", "logs", f"{job}.0"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert printed.returncode == 0, printed.stderr
        assert printed.stdout.startswith("line 0800 ") and len(printed.stdout) == 20_000
        assert printed.stdout.endswith("line 0999 ".ljust(99, "x") + "\n")
        assert "[80000 bytes of earlier stdout were rotated away]" in printed.stderr
