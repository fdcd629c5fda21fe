"""Issue #21 against a real 3-replica cell serving https with a CA of its own.

- TLS: a client without the CA, or trusting another CA, cannot connect; the API port speaks no
  plain http; a replica without certificates refuses to start unless told `--insecure`.
- The role matrix: every route the replica serves is declared in `cellstore.access.ACCESS`, and
  every role against every declared route gets 403 exactly where the table says.
- An agent token speaks only for its machines: registering, heartbeating or reporting about a
  task on another machine is refused 403 and changes nothing.
- A revoked token is refused (401) by every replica within a second of the revocation's
  acknowledgement (each replica checks its own applied state).
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import time

import httpx
import orjson
import pytest

from cellstate import (
    Claim,
    JobSpec,
    MachineSpec,
    Resources,
    SchedulerClass,
    Transaction,
    parse_cpu,
    parse_memory,
)
from cellstore.access import ACCESS, digest
from cellstore.cellclient import CellError, SyncCellClient
from cellstore.tls import TlsError, client_context, make_ca
from cellstore.tls import issue as issue_certificate
from harness.cluster import LocalCluster, cell_options

pytestmark = pytest.mark.slow

ROLES = ("admin", "operator", "scheduler", "agent", "read-only")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("security")
    with LocalCluster(base, tls=True, **cell_options(heartbeat_timeout_s=3600)) as started:
        yield started


def admin(cluster: LocalCluster) -> SyncCellClient:
    return SyncCellClient(cluster.api, cluster.token, ca=str(cluster.ca))


def issue(cluster: LocalCluster, name: str, role: str, machines: tuple[str, ...] = ()) -> str:
    secret = f"secret-of-{name}-{time.monotonic_ns()}"
    with admin(cluster) as cell:
        cell.create_token(name, role, digest(secret), machines)
    return secret


def get(cluster: LocalCluster, i: int, path: str, secret: str) -> httpx.Response:
    return httpx.get(
        f"{cluster.url(i)}{path}",
        headers={"authorization": f"Bearer {secret}"},
        verify=cluster.verify,
        timeout=10,
    )


def test_tls_only_with_the_cells_ca(cluster, tmp_path):
    auth = {"authorization": f"Bearer {cluster.token}"}
    url = f"{cluster.url(0)}/v1/status"
    assert httpx.get(url, headers=auth, verify=cluster.verify).status_code == 200
    # The system's trust store does not know the cell's CA ...
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(url, headers=auth)
    # ... nor does another CA vouch for it.
    other = client_context(make_ca(tmp_path / "other"))
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(url, headers=auth, verify=other)
    with (
        SyncCellClient(
            cluster.api, cluster.token, ca=str(tmp_path / "other" / "ca.pem"), retry_deadline_s=1.0
        ) as stranger,
        pytest.raises(CellError) as refused,
    ):
        stranger.summary()
    assert refused.value.code == "unavailable" and "CERTIFICATE_VERIFY_FAILED" in str(refused.value)
    # No plain http on the API port: a token sent in clear gets no answer at all.
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{cluster.api[0]}/v1/status", headers=auth, timeout=5)


def test_a_replica_keeps_its_data_dir_to_its_owner(cluster):
    # The harness made each data dir with the umask's 0755, as an operator's mkdir would;
    # the log in it holds every job's environment, readable then by any user's task.
    for i in range(3):
        assert cluster.data_dir(i).stat().st_mode & 0o777 == 0o700, i
    log = (cluster.data_dir(0) / "replica.log").read_text()
    assert '"data_dir_permissions_tightened"' in log and '"was": "0755"' in log, log[-2000:]


def test_a_replica_without_certificates_refuses_to_start(cluster, tmp_path):
    document = cluster.config(0)
    for field in ("tls_cert", "tls_key", "insecure"):
        document.pop(field, None)
    document["data_dir"] = str(tmp_path / "data")
    config = tmp_path / "replica.json"
    config.write_bytes(orjson.dumps(document))
    done = subprocess.run(
        [sys.executable, "-m", "cellstore", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "--tls-cert is required (or --insecure for plain http)" in done.stderr


@pytest.mark.parametrize("host", ["not_an_ip!", "a..b", "-x", "web server"])
def test_a_certificate_for_a_name_no_client_can_dial_is_refused(tmp_path, host):
    # It was signed, with `not_an_ip!` in its subjectAltName: a certificate no client
    # would ever accept, found only when the part it was for could not be reached.
    make_ca(tmp_path / "ca")
    with pytest.raises(TlsError, match=f"--host {host!r} is neither an IP address"):
        issue_certificate(tmp_path / "ca", tmp_path / "out", "x", ["127.0.0.1", host])
    assert not (tmp_path / "out").exists()
    issued = issue_certificate(tmp_path / "ca", tmp_path / "out", "x", ["::1", "*.cell.example"])
    assert issued.cert is not None and issued.cert.exists()


def served_routes(cluster: LocalCluster) -> set[tuple[str, str]]:
    """The routes replica 0 logged when it began serving."""
    for line in (cluster.data_dir(0) / "replica.log").read_text().splitlines():
        if '"replica_serving"' in line:
            return {tuple(r.split(" ", 1)) for r in json.loads(line)["routes"]}  # type: ignore[misc]
    raise AssertionError("replica 0 never logged its routes")


def test_every_role_against_every_endpoint(cluster):
    served = served_routes(cluster)
    assert served - set(ACCESS) == set(), "routes missing from cellstore.access.ACCESS"
    secrets = {
        role: issue(cluster, f"matrix-{role}", role, ("nowhere",) if role == "agent" else ())
        for role in ROLES
    }
    with admin(cluster) as cell:
        before = cell.summary()
    answers = {}
    with httpx.Client(verify=cluster.verify, timeout=10) as http:
        for method, path in sorted(served):
            for role, secret in secrets.items():
                request = http.build_request(
                    method,
                    f"{cluster.url(0)}{path}",
                    headers={"authorization": f"Bearer {secret}"},
                    # Writes carry an empty object: refused (400) after the role check,
                    # so the matrix changes nothing.
                    content=b"{}" if method == "POST" else None,
                )
                answer = http.send(request, stream=path == "/v1/watch")
                answers[(method, path, role)] = answer.status_code
                answer.close()
    wrong = {
        key: status
        for key, status in answers.items()
        if (status == 403) == (key[2] in ACCESS[key[:2]]) or status in (401, 404, 405)
    }
    assert wrong == {}, f"answers that break the table: {wrong}"
    with admin(cluster) as cell:
        after = cell.summary()
    assert (after["jobs"], after["machines"]) == (before["jobs"], before["machines"])


def test_an_agent_token_speaks_only_for_its_machines(cluster):
    r = Resources(parse_cpu("2"), parse_memory("1Gi"))
    with admin(cluster) as cell:
        cell.register_machines([MachineSpec("sec-m2", r)])
        spec = JobSpec(
            name="guarded",
            owner="alice",
            scheduler=SchedulerClass.BATCH,
            resources=Resources(parse_cpu("100m"), parse_memory("16Mi")),
            tasks=1,
            command=("sleep", "60"),
        )
        job = cell.submit(spec).job
        task = f"{job}.0"
        cell.commit(Transaction("test", (Claim(task, "sec-m2"),)))
    secret = issue(cluster, "agent-sec-m1", "agent", ("sec-m1",))
    with SyncCellClient(cluster.api, secret, ca=str(cluster.ca)) as agent, admin(cluster) as cell:
        assert agent.register_machines([MachineSpec("sec-m1", r)]).version > 0
        version = cell.summary()["version"]
        attempts = [
            lambda: agent.register_machines([MachineSpec("sec-m2", r)]),
            lambda: agent.heartbeat(["sec-m1", "sec-m2"]),
            # About a task on sec-m2, whether it names that machine or its own.
            lambda: agent._run(report(task, "sec-m2")),
            lambda: agent._run(report(task, "sec-m1")),
        ]
        for attempt in attempts:
            with pytest.raises(CellError) as refused:
                attempt()
            assert (refused.value.status, refused.value.code) == (403, "machine_refused")
            assert "sec-m2" in refused.value.message
        # Nothing was committed: the version is where it was, the task as it was.
        assert cell.summary()["version"] == version
        assert cell.task(task)["state"] == "assigned"
        assert agent.heartbeat(["sec-m1"]).version > version


def report(task: str, machine: str):
    from cellstate import TaskReport
    from cellstate.commands import ReportedState
    from cellstore.cellclient import _Calls

    return _Calls.report_tasks([TaskReport(task, machine, 0, ReportedState.RUNNING)], None)


def test_a_revoked_token_is_refused_by_every_replica_within_a_second(cluster):
    secret = issue(cluster, "short-lived", "read-only")
    # Each replica knows it once it has applied the creation.
    deadline = time.monotonic() + 30
    while any(get(cluster, i, "/v1/cell", secret).status_code != 200 for i in range(cluster.n)):
        assert time.monotonic() < deadline, "a replica never learnt the new token"
        time.sleep(0.05)
    with admin(cluster) as cell:
        cell.revoke_token("short-lived")
    revoked = time.monotonic()
    refused: dict[int, float] = {}
    while len(refused) < cluster.n and time.monotonic() - revoked < 5:
        for i in range(cluster.n):
            if i not in refused and get(cluster, i, "/v1/cell", secret).status_code == 401:
                refused[i] = time.monotonic() - revoked
    assert sorted(refused) == list(range(cluster.n)), refused
    assert max(refused.values()) < 1.0, refused


def test_writes_record_who_sent_them(cluster):
    secret = issue(cluster, "op-alice", "operator")
    with SyncCellClient(cluster.api, secret, ca=str(cluster.ca)) as operator:
        operator.set_weights({"team-a": 2})
    auth = {"authorization": f"Bearer {cluster.token}"}
    with (
        httpx.Client(verify=cluster.verify, timeout=10) as http,
        http.stream("GET", f"{cluster.url(0)}/v1/watch?from=1", headers=auth) as feed,
    ):
        for line in feed.iter_lines():
            batch = json.loads(line)
            found = [c for _, c in batch.get("commands", ()) if c["type"] == "set_weights"]
            if found:
                assert found[-1]["by"] == {"name": "op-alice", "role": "operator"}
                return
    raise AssertionError("the weights command never reached the feed")


def test_the_table_names_real_roles():
    assert {str(role) for roles in ACCESS.values() for role in roles} <= set(ROLES)


def test_omega_tls_and_store_flags(tmp_path):
    """`omega tls ca|cert` write 0600 PEM files a server can use; a second CA over the first
    is refused; `omega store` without certificates exits 2 naming the flags."""

    def omega(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "omega", *args], capture_output=True, text=True, timeout=60
        )

    ca_dir = tmp_path / "ca"
    assert omega("tls", "ca", str(ca_dir)).returncode == 0
    again = omega("tls", "ca", str(ca_dir))
    assert again.returncode == 2 and "exists" in again.stderr, again.stderr
    made = omega(
        "tls", "cert", str(ca_dir), "store-1", "--host", "127.0.0.1", "--out", str(tmp_path)
    )
    assert made.returncode == 0, made.stderr
    for name in ("ca/ca.pem", "ca/ca-key.pem", "store-1.pem", "store-1-key.pem"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "store-1.pem", tmp_path / "store-1-key.pem")
    token = tmp_path / "token"
    token.write_text("t")
    plain = omega(
        "store",
        "--id=0",
        "--peer=127.0.0.1:1/127.0.0.1:2",
        f"--data-dir={tmp_path / 'data'}",
        f"--token-file={token}",
        f"--secret-file={token}",
    )
    assert plain.returncode == 2, plain.stderr
    assert "--tls-cert and --tls-key are required (or --insecure" in plain.stderr
