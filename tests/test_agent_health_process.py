"""Health checks run by the real executor against real processes: exec checks
as subprocesses with the task's environment, http and tcp checks against a
server the task starts on a port it declares in `$OMEGA_PORT_FILE`, and what
an unhealthy task's restart policy does with it.

Real processes need real time here (a MockClock would leap past a check's
timeout while its process runs), so every test waits for the report that
shows the decision, never for a fixed while.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from agents.executor import open_executor
from agents.health import read_port
from agents.limits import LimitsMode, probe_limits
from agents.task import Backoff, ReportedState, TaskSpec
from cellstate.model import HealthCheck, RestartPolicy
from tests.test_agent_exec_process import Recorder, _cleanup_mode, script

RUNNING, STARTING = ReportedState.RUNNING, ReportedState.STARTING
FOREVER = script("import time\nwhile True: time.sleep(1)")

SERVER = script("""
    import http.server, os

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    path = os.environ["OMEGA_PORT_FILE"]
    with open(path + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(path + ".tmp", path)
    server.serve_forever()
""")


@pytest.fixture
def limits() -> Iterator[LimitsMode]:
    """Limits of a fresh agent name (its own cgroups), checked gone afterwards."""
    mode = probe_limits(f"t{uuid.uuid4().hex[:12]}")
    yield mode
    _cleanup_mode(mode)


def verdicts(rec: Recorder, task: str) -> list[bool]:
    return [r.healthy for r in rec.of(task) if r.healthy is not None]


def test_exec_check_that_passes_reports_healthy_with_the_tasks_env(limits, tmp_path: Path):
    rec = Recorder()
    argv = ("/bin/sh", "-c", 'test "$GREETING" = hi && test -f ready')
    check = HealthCheck(exec=argv, interval=0.5, timeout=0.5)

    async def main() -> None:
        async with open_executor(machine="m1", work_dir=tmp_path, limits=limits, report=rec) as ex:
            body = "import time\nopen('ready', 'w').close()\nwhile True: time.sleep(1)"
            spec = TaskSpec(argv=script(body), env={"GREETING": "hi"}, check=check)
            ex.start("svc.0", 1, spec)
            await rec.wait(lambda: verdicts(rec, "svc.0") == [True])
            report = next(r for r in rec.of("svc.0") if r.healthy)
            assert report.state is RUNNING and report.incarnation == 1
            assert ex.running() == [("svc.0", 1)]

    trio.run(main)


def test_failing_exec_check_kills_and_restarts_on_failure(limits, tmp_path: Path):
    rec = Recorder()
    check = HealthCheck(exec=("/bin/false",), interval=0.2, timeout=0.2, failures=2)

    async def main() -> None:
        async with open_executor(
            machine="m1",
            work_dir=tmp_path,
            limits=limits,
            report=rec,
            backoff=Backoff(initial=0.1),
        ) as ex:
            spec = TaskSpec(
                argv=FOREVER, grace_period=1.0, restart=RestartPolicy.ON_FAILURE, check=check
            )
            ex.start("svc.0", 1, spec)

            def restarted(n: int) -> bool:
                return (
                    sum(
                        r.state is STARTING and r.reason == "restart after unhealthy"
                        for r in rec.of("svc.0")
                    )
                    >= n
                )

            await rec.wait(lambda: restarted(2))
            assert ex.running() == [("svc.0", 1)]
        states = [(r.state, r.healthy) for r in rec.of("svc.0")]
        # Each run: starting, running, judged unhealthy (once, after 2 misses), killed.
        assert states[:5] == [
            (STARTING, None),
            (RUNNING, None),
            (RUNNING, False),
            (STARTING, None),
            (RUNNING, None),
        ]

    trio.run(main)


def test_failing_check_with_restart_never_ends_failed_unhealthy(limits, tmp_path: Path):
    rec = Recorder()
    check = HealthCheck(exec=("/bin/false",), interval=0.2, timeout=0.2, failures=3)
    probes: list[tuple[str, bool]] = []

    async def main() -> None:
        async with open_executor(
            machine="m1",
            work_dir=tmp_path,
            limits=limits,
            report=rec,
            on_probe=lambda kind, passed: probes.append((kind, passed)),
        ) as ex:
            ex.start("svc.0", 1, TaskSpec(argv=FOREVER, grace_period=1.0, check=check))
            final = await rec.wait_final("svc.0")
            assert final.state is ReportedState.FAILED and final.reason == "unhealthy"
            assert ex.running() == []
        assert verdicts(rec, "svc.0") == [False]
        # Every failed probe is told, not only the verdict they add up to.
        assert probes == [("exec", False)] * 3

    trio.run(main)


def test_http_and_tcp_checks_against_a_real_server(limits, tmp_path: Path):
    rec = Recorder()
    http = HealthCheck(http="/healthz", interval=0.2, timeout=0.2)
    tcp = HealthCheck(tcp=True, interval=0.2, timeout=0.2)
    wrong = HealthCheck(http="/nothing-here", interval=0.2, timeout=0.2, failures=2)

    async def main() -> None:
        async with open_executor(machine="m1", work_dir=tmp_path, limits=limits, report=rec) as ex:
            ex.start("web.0", 1, TaskSpec(argv=SERVER, check=http))
            ex.start("web.1", 1, TaskSpec(argv=SERVER, check=tcp))
            ex.start("web.2", 1, TaskSpec(argv=SERVER, check=wrong))
            ex.start("web.3", 1, TaskSpec(argv=SERVER))  # no check: nothing probes it
            await rec.wait(lambda: verdicts(rec, "web.0") == verdicts(rec, "web.1") == [True])
            # A 404 is a failed probe: unhealthy, and with restart never, failed.
            final = await rec.wait_final("web.2")
            assert final.reason == "unhealthy" and verdicts(rec, "web.2") == [False]
            # Each probed task's port was reported, once, as it was read for the probe:
            # the port the server bound, which the test reads from the same file.
            for task in ("web.0", "web.1"):
                said = [r.port for r in rec.of(task) if r.port is not None]
                assert said == [read_port(tmp_path / "tasks" / f"{task}.1")], said
                assert all(r.state is RUNNING for r in rec.of(task) if r.port is not None)
            # A task no check probes tells its port when the agent samples its tasks.
            assert [r.port for r in rec.of("web.3") if r.port is not None] == []
            with trio.fail_after(60):
                while read_port(tmp_path / "tasks" / "web.3.1") is None:
                    await trio.sleep(0.05)
            ex.declare_ports(undeclared=True)
            ex.declare_ports()  # said once: no news the second time
            said = [r.port for r in rec.of("web.3") if r.port is not None]
            assert said == [read_port(tmp_path / "tasks" / "web.3.1")], said

    trio.run(main)


def test_http_check_on_a_server_that_never_starts_is_never_healthy(limits, tmp_path: Path):
    rec = Recorder()
    check = HealthCheck(http="/healthz", interval=0.1, timeout=0.1, failures=1)

    async def main() -> None:
        async with open_executor(machine="m1", work_dir=tmp_path, limits=limits, report=rec) as ex:
            # Declares no port, and ends by itself after many check intervals.
            ex.start("web.0", 1, TaskSpec(argv=script("import time; time.sleep(2)"), check=check))
            final = await rec.wait_final("web.0")
        # Not healthy, and not judged unhealthy either: a port not declared yet is
        # no failure, so the task ran its course.
        assert final.state is ReportedState.EXITED and final.exit_code == 0
        assert verdicts(rec, "web.0") == []

    trio.run(main)


def test_an_exec_check_no_process_can_be_started_with_fails_and_the_agent_goes_on(
    tmp_path: Path,
):
    """A NUL byte in a check's argument (a spec logged before the edge refused one) made
    `subprocess` raise ValueError, which no caller caught: the check fails instead."""
    from agents.health import probe

    async def main() -> None:
        check = HealthCheck(exec=("test", "a\0b"))
        assert await probe(check, tmp_path, {}) is False
        assert await probe(HealthCheck(exec=("true",)), tmp_path, {}) is True

    trio.run(main)
