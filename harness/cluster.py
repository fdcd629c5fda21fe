"""The local cluster: real replica processes on 127.0.0.1, and a toy machine to run in them.

`KVMachine` is a tiny key/value + counter machine implementing the `Machine` contract, with
command-id deduplication as the real cell state has. `LocalCluster` starts N replica processes
(`python -m cellstore`) on 127.0.0.1 with free ports and its own data dirs, waits for a leader,
and kills every process it started, by pid, when closed (also when a test fails).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson

from cellstore.cell import (
    DEFAULT_HEARTBEAT_TIMEOUT_S,
    DEFAULT_JOB_RETENTION_S,
    DEFAULT_MACHINE_RETENTION_S,
    CellSettings,
    replica_fields,
)
from cellstore.config import ReplicaConfig, free_ports, replica_document
from cellstore.tls import client_context, issue, make_ca


class KVMachine:
    """Commands: `{"id", "op": "put", "key", "value"}` and `{"id", "op": "add", "key",
    "delta"}`. A command id seen before is not applied again (`"duplicate": true`); every
    command, bad or duplicate, still bumps `version`."""

    def __init__(self) -> None:
        self.version = 0
        self.data: dict[str, Any] = {}
        self.log: list[str] = []  # ids of applied commands, in order
        self._seen: set[str] = set()

    def apply_encoded(self, command: bytes) -> bytes:
        self.version += 1
        try:
            cmd = orjson.loads(command)
            cid, op, key = cmd["id"], cmd["op"], cmd["key"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return _error("invalid_command", "need id, op and key")
        if cid in self._seen:
            return orjson.dumps({"ok": True, "duplicate": True, "id": cid, "version": self.version})
        if op == "put":
            self.data[key] = cmd.get("value")
        elif op == "add" and isinstance(cmd.get("delta"), int):
            current = self.data.get(key, 0)
            self.data[key] = (current if isinstance(current, int) else 0) + cmd["delta"]
        else:
            return _error("invalid_op", f"unknown op {op!r}")
        self._seen.add(cid)
        self.log.append(cid)
        return orjson.dumps(
            {"ok": True, "id": cid, "version": self.version, "value": self.data[key]}
        )

    def snapshot(self) -> bytes:
        return orjson.dumps(
            {"version": self.version, "data": self.data, "log": self.log},
            option=orjson.OPT_SORT_KEYS,
        )

    @classmethod
    def restore(cls, data: bytes) -> KVMachine:
        raw = orjson.loads(data)
        machine = cls()
        machine.version = raw["version"]
        machine.data = raw["data"]
        machine.log = raw["log"]
        machine._seen = set(machine.log)
        return machine


def lone_replica_config(data_dir: Path, name: str = "r0") -> ReplicaConfig:
    """The config of one replica of a three-replica `KVMachine` cell whose other two never
    start, on free ports: for tests that drive a `ReplicatedMachine`'s Raft state by hand."""
    api, raft_port, *others = free_ports(4)
    return ReplicaConfig(
        id=name,
        api_host="127.0.0.1",
        api_port=api,
        raft_host="127.0.0.1",
        raft_port=raft_port,
        peers_raft=(f"127.0.0.1:{raft_port}", *(f"127.0.0.1:{p}" for p in others[:2])),
        peers_api=(f"127.0.0.1:{api}",) * 3,
        data_dir=data_dir,
        token="tok",
        secret="s3cret",
        machine_class=KVMachine,
        insecure=True,
    )


def _error(code: str, message: str) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message, "field": None}})


def _parent_death_is_process_death() -> bool:
    """PR_SET_PDEATHSIG fires when the *thread* that forked the child exits. From
    a worker thread (trio.to_thread retires idle ones after a few seconds) it
    would kill a healthy replica mid-test, so only the main thread arms it;
    `close()` still kills every replica by pid."""
    return sys.platform == "linux" and threading.current_thread() is threading.main_thread()


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL if the process that started us dies (Linux), so a
    test runner killed hard (e.g. by a timeout) leaves no replica behind."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def cell_options(
    heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S,
    job_retention_s: float = DEFAULT_JOB_RETENTION_S,
    machine_retention_s: float = DEFAULT_MACHINE_RETENTION_S,
    **extra: Any,
) -> dict[str, Any]:
    """`LocalCluster` keyword arguments for a cluster of the cell rather than the toy machine:
    the cell's machine and endpoints, machines marked down after `heartbeat_timeout_s` without
    a heartbeat (long, for tests whose machines have no agent), ended jobs purged after
    `job_retention_s` and machines down for silence removed after `machine_retention_s` (0:
    never), `extra` other config fields."""
    fields = replica_fields(CellSettings(heartbeat_timeout_s, job_retention_s, machine_retention_s))
    return {
        "machine": fields.pop("machine"),
        "extra": {**fields, **extra},
        "ready": _rules_current,
    }


def agentless_options(**extra: Any) -> dict[str, Any]:
    """`cell_options` for a cell whose machines no agent heartbeats (benchmarks that register
    bare machines): without a long timeout the leader marks them all down mid-run and evicts
    every task placed on them."""
    return cell_options(heartbeat_timeout_s=86_400.0, **extra)


def _rules_current(cluster: LocalCluster) -> bool:
    """The cell's leader has raised the log's rules to this build's: its first command
    (`raise_rules`), so that tests counting versions or comparing snapshots start after it."""
    from cellstate.model import RULES

    try:
        leader = cluster.wait_for_leader()
        headers = {"authorization": f"Bearer {cluster.token}"}
        resp = httpx.get(
            f"{cluster.url(leader)}/v1/cell", timeout=2, headers=headers, verify=cluster.verify
        )
        tokens = httpx.get(
            f"{cluster.url(leader)}/v1/tokens", timeout=2, headers=headers, verify=cluster.verify
        )
    except httpx.HTTPError:
        return False
    # The leader's first commands: the log's rules raised, then its config token entered.
    return (
        resp.status_code == 200
        and resp.json().get("rules") == RULES
        and tokens.status_code == 200
        and any(t["name"] == "bootstrap" for t in tokens.json()["tokens"])
    )


REPOSITORY = Path(__file__).resolve().parents[1]


def _with_repository_on_path(env: os._Environ[str] | dict[str, str]) -> dict[str, str]:
    """`env` with the repository root first on PYTHONPATH: `harness` is not installed, and a
    replica running the toy machine must import it whatever directory the test runs from."""
    paths = [str(REPOSITORY), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    return {**env, "PYTHONPATH": os.pathsep.join(paths)}


class LocalCluster:
    """N replica processes of `machine` under `base_dir`. Use as a context manager."""

    def __init__(
        self,
        base_dir: Path,
        n: int = 3,
        *,
        machine: str = "harness.cluster:KVMachine",
        raft: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        ready: Callable[[LocalCluster], bool] | None = None,
        tls: bool = False,
    ) -> None:
        """`ready`, if given, is what `start` waits for once a leader is agreed. With `tls` the
        replicas serve https with certificates from a CA of the cluster's own (`ca`); without,
        they are told `--insecure` (loopback test infrastructure) and serve plain http."""
        self.base_dir = Path(base_dir)
        self._ready = ready
        self.n = n
        self.token = secrets.token_urlsafe(24)
        self.secret = secrets.token_urlsafe(24)
        ports = free_ports(2 * n)
        self.api = [f"127.0.0.1:{p}" for p in ports[:n]]
        self.raft_addresses = [f"127.0.0.1:{p}" for p in ports[n:]]
        self._machine = machine
        self._raft = raft or {}
        self._extra = extra or {}
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * n
        # Replica i's command line starts with `wrappers[i]`, if set: `hosts.skewed_clock` for
        # a skewed clock, `ip netns exec NAME` for a replica on a host of its own.
        self.wrappers: dict[int, list[str]] = {}
        self.ca: Path | None = None
        self._tls_fields: dict[str, Any] = {"insecure": True}
        if tls:
            pki = self.base_dir / "tls"
            make_ca(pki)
            files = issue(pki, pki, "replica", ["127.0.0.1", "localhost"])
            self.ca = files.ca
            self._tls_fields = {"tls_cert": str(files.cert), "tls_key": str(files.key)}
        self.scheme = "https" if tls else "http"
        # What httpx is told to verify the replicas with.
        self.verify: Any = client_context(self.ca) if tls else True

    def url(self, i: int) -> str:
        return f"{self.scheme}://{self.api[i]}"

    def client_args(self) -> list[str]:
        """The TLS flags of a scheduler or agent started against this cluster: its CA, or
        `--insecure` for a plain-http cluster."""
        return ["--tls-ca", str(self.ca)] if self.ca is not None else ["--insecure"]

    def env(self) -> dict[str, str]:
        """`os.environ` with the cluster's address, token and CA, as `omega up`'s env file."""
        env = {**os.environ, "OMEGA_ADDR": ",".join(map(self.url, range(self.n)))}
        env["OMEGA_TOKEN"] = self.token
        if self.ca is not None:
            env["OMEGA_CA"] = str(self.ca)
        return env

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def data_dir(self, i: int) -> Path:
        return self.base_dir / f"replica-{i}"

    def log_file(self, i: int) -> Path:
        """Where replica i's output goes."""
        return self.data_dir(i) / "replica.log"

    def raft_peers(self, i: int) -> list[str]:
        """The Raft addresses replica i binds to and calls its peers at, index for index
        (everywhere the same here; a proxied cluster gives each replica its own view)."""
        return self.raft_addresses

    def config(self, i: int) -> dict[str, Any]:
        return replica_document(
            i,
            self.api,
            self.raft_peers(i),
            data_dir=self.data_dir(i),
            token=self.token,
            secret=self.secret,
            machine=self._machine,
            raft=self._raft,
            **{**self._tls_fields, **self._extra},
        )

    def start(self, timeout: float = 20.0) -> None:
        for i in range(self.n):
            self.start_replica(i)
        self.wait_for_leader()
        # A majority elects a leader without the rest: a replica that could not start (its
        # port taken) would otherwise leave a test a cell one fault short of what it thinks.
        for i, proc in enumerate(self.procs):
            if proc is not None and proc.poll() is not None:
                tail = self.log_file(i).read_text(errors="replace").strip().splitlines()[-3:]
                raise RuntimeError(f"replica {i} exited while the cell started: {tail}")
        deadline = time.monotonic() + timeout
        while self._ready is not None and not self._ready(self):
            if time.monotonic() > deadline:
                raise TimeoutError(f"cluster not ready within {timeout}s")
            time.sleep(0.05)

    def start_replica(self, i: int) -> None:
        assert self.procs[i] is None or self.procs[i].poll() is not None, "already running"
        d = self.data_dir(i)
        d.mkdir(parents=True, exist_ok=True)
        cfg = d / "replica.json"
        fd = os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps(self.config(i)))
        with open(self.log_file(i), "ab") as out:
            self.procs[i] = subprocess.Popen(
                [*self.wrappers.get(i, ()), *self.replica_command(i, cfg)],
                env=_with_repository_on_path(os.environ),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent if _parent_death_is_process_death() else None,
            )

    def replica_command(self, i: int, config_file: Path) -> list[str]:
        """The command line that runs replica i from its config document (written to
        `config_file`, mode 0600, before each start)."""
        return [sys.executable, "-m", "cellstore", "--config", str(config_file)]

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to replica i's process (by pid) and reap it if it was SIGKILL."""
        proc = self.procs[i]
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, sig)
        if sig == signal.SIGKILL:
            proc.wait(10)

    def stop(self, i: int, timeout: float = 5.0) -> None:
        """SIGTERM replica i, then SIGKILL if it has not exited within `timeout`."""
        proc = self.procs[i]
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill(i)

    def close(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc is not None and proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(10)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass
            self.procs[i] = None

    def alive(self) -> list[int]:
        return [i for i, p in enumerate(self.procs) if p is not None and p.poll() is None]

    def status(self, i: int, timeout: float = 1.0) -> dict[str, Any] | None:
        try:
            resp = httpx.get(
                f"{self.url(i)}/v1/status",
                timeout=timeout,
                headers={"authorization": f"Bearer {self.token}"},
                verify=self.verify,
            )
        except httpx.HTTPError:
            return None
        return resp.json() if resp.status_code == 200 else None

    def wait_for_leader(self, timeout: float = 20.0) -> int:
        """Wait until every live replica answers, agrees on one leader and is ready; return the
        leader's index."""
        deadline = time.monotonic() + timeout
        last: list[Any] = []
        while time.monotonic() < deadline:
            live = self.alive()
            for i, proc in enumerate(self.procs):
                if proc is not None and proc.poll() is not None and i in live:
                    live.remove(i)
            last = [self.status(i) for i in live]
            if last and all(s is not None for s in last):
                leaders = {s["leader"]["api"] for s in last}
                if len(leaders) == 1 and None not in leaders and all(s["ready"] for s in last):
                    leader = leaders.pop()
                    if leader in self.api and self.api.index(leader) in live:
                        return self.api.index(leader)
            time.sleep(0.05)
        raise TimeoutError(f"no agreed leader within {timeout}s: {last}")

    def leader(self, among: list[int] | None = None) -> int | None:
        """The replica among `among` (default: live ones) that says it leads and whose
        peers in `among` agree; None if there is none now."""
        among = self.alive() if among is None else among
        sts = {i: self.status(i) for i in among}
        for i, s in sts.items():
            if (
                s
                and s["is_leader"]
                and s["ready"]
                and all(o is not None and o["leader"]["api"] == self.api[i] for o in sts.values())
            ):
                return i
        return None

    def wait_leader(self, among: list[int] | None = None, timeout: float = 45.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.leader(among)
            if found is not None:
                return found
            time.sleep(0.05)
        raise TimeoutError(f"no leader among {among} within {timeout}s")

    def wait_for_version(
        self, version: int, replicas: list[int] | None = None, timeout: float = 20.0
    ) -> None:
        """Wait until the given replicas (default: live ones) have applied `version`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sts = [self.status(i) for i in (replicas if replicas is not None else self.alive())]
            if all(s is not None and s["version"] >= version for s in sts):
                return
            time.sleep(0.05)
        raise TimeoutError(f"replicas did not reach version {version}")

    def snapshot(self, i: int) -> tuple[int, bytes]:
        resp = httpx.get(
            f"{self.url(i)}/v1/snapshot",
            timeout=10,
            headers={"authorization": f"Bearer {self.token}"},
            verify=self.verify,
        )
        resp.raise_for_status()
        return int(resp.headers["x-omega-version"]), resp.content


def stop_processes(procs: list[subprocess.Popen[bytes]], grace_s: float = 10.0) -> None:
    """SIGTERM every live process (a last report, a clean exit), then SIGKILL
    what has not exited after `grace_s`, all by pid."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(grace_s)


def start_scheduler(
    cluster: LocalCluster, log: Path, kind: str, name: str, *args: str
) -> subprocess.Popen[bytes]:
    """A scheduler process (`python -m schedulers`) of `kind` named `name` against
    `cluster`, its output appended to `log`; `args` are more of its options. The
    store's address and token travel in its environment, never on its command line
    (the fault suite checks that no secret shows). The caller stops it by pid."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [
                *(sys.executable, "-m", "schedulers", "--kind", kind, "--name", name),
                *cluster.client_args(),
                *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=cluster.env(),
            start_new_session=True,
        )
