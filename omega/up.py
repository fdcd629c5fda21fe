"""`omega up`: a whole local cell in one command, supervised until Ctrl-C.

It starts the store replicas, one scheduler of each kind and the agents as
child processes, restarts any that dies, and on SIGINT or SIGTERM stops them
all (SIGTERM, then SIGKILL after a grace period). No child outlives it, however
it ends (`omega.children`): each is armed to get SIGTERM when the supervisor
dies, even by SIGKILL; and a closed output pipe (`omega up | tee log`, then
Ctrl-C, which kills `tee` first) is a request to stop, not a crash that
strands them. Everything lives in the data
directory: the token and the Raft secret (mode 0600), the ports chosen on the
first start (so a restart brings back the same cell at the same addresses),
each part's log, and `env`, shell exports for the client commands.

Security, as a multi-host cell would have it (README, "Security"): a throwaway CA and one
certificate for 127.0.0.1 in `tls/` (0600), every listener on https, `OMEGA_CA` in `env`; the
token in `token` is the admin's; each scheduler and agent gets a token of its own (`tokens/`,
0600) with the narrowest role, issued once the store answers and before they start. Plain http
only with `--insecure`, which every part logs loudly.
"""

from __future__ import annotations

import functools
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import attrs
import orjson
import psutil
import structlog
import trio

from cellstore.cell import DEFAULT_SETTINGS, CellSettings, replica_fields
from cellstore.config import free_ports, replica_document
from cellstore.tls import CA_CERT, TlsFiles, issue, make_ca
from omega import children
from omega.console import with_console
from omega.units import count

if TYPE_CHECKING:
    from cellstore.cellclient import CellSummary

log = structlog.get_logger("omega.up")

STOP_GRACE_S = 5.0


@attrs.frozen
class Part:
    """One supervised child: what to run and where its log goes."""

    name: str
    argv: tuple[str, ...]
    log: Path
    env: tuple[tuple[str, str], ...] = ()


@attrs.frozen
class CellLayout:
    data_dir: Path
    token: str
    secret: str
    api: tuple[str, ...]
    raft: tuple[str, ...]
    # The certificate every local listener serves, and the CA that signed it; None: --insecure.
    tls: TlsFiles | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    @property
    def addr(self) -> str:
        return ",".join(f"{self.scheme}://{a}" for a in self.api)

    @property
    def ca(self) -> str | None:
        return str(self.tls.ca) if self.tls is not None else None

    def tls_args(self) -> tuple[str, ...]:
        """The flags that give a scheduler or agent this cell's certificate (its CA comes in
        `OMEGA_CA`), or `--insecure`."""
        if self.tls is None:
            return ("--insecure",)
        return ("--tls-cert", str(self.tls.cert), "--tls-key", str(self.tls.key))


@attrs.frozen
class PartToken:
    """The token `omega up` issues to one of its parts: `role`, bound to `machines`."""

    name: str
    role: str
    secret: str
    machines: tuple[str, ...] = ()


def dev_tls(data_dir: Path) -> TlsFiles:
    """The data dir's CA and the certificate for 127.0.0.1 it signed (made on first start)."""
    directory = data_dir / "tls"
    if not (directory / CA_CERT).exists():
        make_ca(directory, "omega up CA")
    files = TlsFiles(directory / "local.pem", directory / "local-key.pem", directory / CA_CERT)
    if not (files.cert and files.cert.exists()):
        files = issue(directory, directory, "local", ["127.0.0.1", "localhost"])
    return files


def _secret_file(path: Path) -> str:
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value


def prepare(
    data_dir: Path,
    replicas: int,
    settings: CellSettings = DEFAULT_SETTINGS,
    insecure: bool = False,
) -> CellLayout:
    """Create or reopen a cell's data dir: secrets, certificates, ports and replica configs
    (rewritten on every start, so `settings` such as the heartbeat timeout follow the command
    line)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    token = _secret_file(data_dir / "token")
    secret = _secret_file(data_dir / "raft-secret")
    tls = None if insecure else dev_tls(data_dir)
    layout_file = data_dir / "cell.json"
    if layout_file.exists():
        saved = orjson.loads(layout_file.read_bytes())
        if len(saved["api"]) != replicas:
            raise SystemExit(
                f"{data_dir} holds a cell of {len(saved['api'])} replicas; "
                f"--replicas {replicas} would change its membership"
            )
    else:
        ports = free_ports(2 * replicas)
        saved = {
            "api": [f"127.0.0.1:{p}" for p in ports[:replicas]],
            "raft": [f"127.0.0.1:{p}" for p in ports[replicas:]],
        }
        layout_file.write_bytes(orjson.dumps(saved, option=orjson.OPT_INDENT_2))
    layout = CellLayout(data_dir, token, secret, tuple(saved["api"]), tuple(saved["raft"]), tls)
    for i in range(replicas):
        write_replica_config(layout, i, settings)
    env = data_dir / "env"
    exports = f"export OMEGA_ADDR={layout.addr}\nexport OMEGA_TOKEN={token}\n"
    if layout.ca is not None:
        exports += f"export OMEGA_CA={layout.ca}\n"
    fd = os.open(env, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(exports)
    os.chmod(env, 0o600)
    return layout


def write_replica_config(
    layout: CellLayout, i: int, settings: CellSettings = DEFAULT_SETTINGS
) -> Path:
    directory = layout.data_dir / f"replica-{i}"
    directory.mkdir(exist_ok=True)
    config = replica_document(
        i,
        layout.api,
        layout.raft,
        data_dir=directory,
        token=layout.token,
        secret=layout.secret,
        **tls_fields(layout),
        **with_console(replica_fields(settings)),
    )
    path = directory / "replica.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(orjson.dumps(config))
    return path


def tls_fields(layout: CellLayout) -> dict[str, Any]:
    """A replica config's TLS fields: the cell's certificate, or `insecure`."""
    if layout.tls is None:
        return {"insecure": True}
    return {"tls_cert": str(layout.tls.cert), "tls_key": str(layout.tls.key)}


def part_tokens(layout: CellLayout, parts: Sequence[Part]) -> dict[str, PartToken]:
    """Per scheduler and agent part, its own token (secret kept in `tokens/NAME`, 0600): a
    scheduler's may read and commit, an agent's only speaks for its machine(s)."""
    directory = layout.data_dir / "tokens"
    directory.mkdir(exist_ok=True)
    os.chmod(directory, 0o700)
    found = {}
    for part in parts:
        machines: tuple[str, ...]
        if part.name.startswith("scheduler-"):
            role, machines = "scheduler", ()
        elif part.name == "agent-hollow":
            role, machines = "agent", ("hollow-*",)
        elif part.name.startswith("agent-"):
            role, machines = "agent", (part.name,)
        else:
            continue
        secret = _secret_file(directory / part.name)
        found[part.name] = PartToken(part.name, role, secret, machines)
    return found


async def issue_tokens(layout: CellLayout, tokens: Sequence[PartToken], timeout_s: float) -> None:
    """Enter the parts' tokens into the cell (by digest; again on a restart, a no-op), as soon
    as its leader has raised the log to this build's rules."""
    from cellstore.access import digest
    from cellstore.cellclient import CellError, SyncCellClient

    deadline = trio.current_time() + timeout_s
    with SyncCellClient(
        layout.api, layout.token, timeout_s=2.0, retry_deadline_s=2.0, ca=layout.ca
    ) as cell:
        for token in tokens:
            create = functools.partial(
                cell.create_token, token.name, token.role, digest(token.secret), token.machines
            )
            while True:
                try:
                    await trio.to_thread.run_sync(create)
                    break
                except CellError as exc:
                    if trio.current_time() > deadline:
                        raise TimeoutError(f"token {token.name} not issued: {exc}") from None
                    await trio.sleep(0.25)


def write_metrics_targets(layout: CellLayout, schedulers: Sequence[str]) -> Path:
    """`DATA_DIR/metrics.json`: where Prometheus scrapes this cell (its `file_sd_configs`
    form), replicas and schedulers; each agent serves `/metrics` at its machine's
    `omega.agent` label. All under the cell's bearer token."""
    path = layout.data_dir / "metrics.json"
    targets = [
        {"targets": list(layout.api), "labels": {"part": "replica"}},
        {"targets": list(schedulers), "labels": {"part": "scheduler"}},
    ]
    path.write_bytes(orjson.dumps(targets, option=orjson.OPT_INDENT_2))
    return path


def plan_parts(
    layout: CellLayout,
    schedulers: list[str],
    agents: int,
    hollow: int,
    resources: Sequence[str] = (),
) -> list[Part]:
    python = sys.executable
    logs = layout.data_dir / "logs"
    logs.mkdir(exist_ok=True)
    parts = [
        Part(
            f"replica-{i}",
            (
                python,
                "-m",
                "cellstore",
                "--config",
                str(layout.data_dir / f"replica-{i}" / "replica.json"),
            ),
            logs / f"replica-{i}.log",
        )
        for i in range(len(layout.api))
    ]
    metrics_ports = free_ports(len(schedulers))
    for kind, port in zip(schedulers, metrics_ports, strict=True):
        parts.append(
            Part(
                f"scheduler-{kind}",
                (
                    python,
                    "-m",
                    "schedulers",
                    "--kind",
                    kind,
                    "--name",
                    kind,
                    "--metrics",
                    f"127.0.0.1:{port}",
                    *layout.tls_args(),
                ),
                logs / f"scheduler-{kind}.log",
            )
        )
    write_metrics_targets(layout, [f"127.0.0.1:{p}" for p in metrics_ports])
    # Disk and devices each machine declares (`--resource gpu=2`).
    declared = [arg for text in resources for arg in ("--resource", text)]
    cpus = psutil.cpu_count() or 1
    memory = psutil.virtual_memory().total // max(1, agents)
    for i in range(agents):
        name = f"agent-{i}"
        parts.append(
            Part(
                name,
                (
                    python,
                    "-m",
                    "agents",
                    "--name",
                    name,
                    "--cpu",
                    str(cpus),
                    "--memory",
                    str(memory),
                    "--domain",
                    f"rack-{i % 2}",
                    *declared,
                    "--work-dir",
                    str(layout.data_dir / "agents" / name),
                    # As root, tasks run as nobody: the data dir (0700) is out of their reach.
                    *(("--task-user", "nobody") if os.geteuid() == 0 else ()),
                    *layout.tls_args(),
                ),
                logs / f"{name}.log",
            )
        )
    if hollow:
        parts.append(
            Part(
                "agent-hollow",
                (
                    python,
                    "-m",
                    "agents",
                    "--name",
                    "hollow",
                    "--hollow",
                    str(hollow),
                    "--work-dir",
                    str(layout.data_dir / "agents" / "hollow"),
                    *declared,
                    *layout.tls_args(),
                ),
                logs / "agent-hollow.log",
            )
        )
    return parts


async def supervise(part: Part, layout: CellLayout, stopping: trio.Event) -> None:
    """Run `part`, restarting it with back-off if it dies, until `stopping`."""
    env = {
        **os.environ,
        "OMEGA_ADDR": layout.addr,
        "OMEGA_TOKEN": layout.token,
        "PYTHONUNBUFFERED": "1",
        **({"OMEGA_CA": layout.ca} if layout.ca is not None else {}),
        **dict(part.env),
    }
    delay = 0.5
    while not stopping.is_set():
        with open(part.log, "ab") as out:
            process = children.spawn(list(part.argv), stdout=out, env=env)
        log.info("part_started", part=part.name, pid=process.pid)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stop_on_request, process, stopping)
                code = await children.wait(process)
                nursery.cancel_scope.cancel()
        finally:
            # Cancelled from outside (the supervisor failing): stop the child all the same.
            with trio.CancelScope(shield=True):
                await _terminate(process)
        if stopping.is_set():
            return
        log.warning("part_exited", part=part.name, code=code, restart_in_s=delay)
        await trio.sleep(delay)
        delay = min(delay * 2, 30.0)


async def _stop_on_request(process: subprocess.Popen[bytes], stopping: trio.Event) -> None:
    await stopping.wait()
    await _terminate(process)


async def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    with trio.move_on_after(STOP_GRACE_S):
        await children.wait(process)
    if process.poll() is None:
        process.kill()
        await children.wait(process)


def say(line: str, stream: TextIO | None = None) -> None:
    """Print a line for the person running `omega up`; a closed pipe loses the line, and
    nothing else (the watcher of the pipe turns it into a stop)."""
    out = stream or sys.stdout
    try:
        print(line, file=out, flush=True)
    except (BrokenPipeError, ValueError):
        # Python would report the lost flush again at exit, and logs would die of it too.
        children.silence_closed_outputs()


async def wait_ready(
    layout: CellLayout,
    machines: int,
    schedulers: int,
    timeout_s: float = 90.0,
    since: float | None = None,
) -> CellSummary:
    """Poll the store until it has a leader, `machines` registered by their agents and
    `schedulers` reporting. A machine counts once it is up, or, held down or draining by
    an operator (which its agent's registering keeps), once its agent has registered
    since `since` (wall-clock seconds): a cell with a machine an operator took down came
    back all the same, then waited for it for good."""
    from cellstore.cellclient import CellError, SyncCellClient

    deadline = trio.current_time() + timeout_s
    summary: CellSummary | None = None
    counted = 0
    # The blocking client, in a thread: it retries quietly, where the trio one logs every
    # refused connection of replicas still starting. Each poll gives up after 2 s.
    with SyncCellClient(
        layout.api, layout.token, timeout_s=2.0, retry_deadline_s=2.0, ca=layout.ca
    ) as cell:
        while trio.current_time() < deadline:
            try:
                current = await trio.to_thread.run_sync(cell.summary)
                summary = current
                counted = current["machines"].get("up", 0)
                held = sum(current["machines"].get(s, 0) for s in ("down", "draining"))
                if counted < machines and held and since is not None:
                    # Only then the whole list (it may hold 100,000 machines).
                    listed = await trio.to_thread.run_sync(cell.machines)
                    counted = sum(
                        m["state"] == "up" or m["last_heartbeat"] >= since for m in listed
                    )
            except CellError:
                await trio.sleep(0.25)
                continue
            if counted >= machines and len(current["schedulers"]) >= schedulers:
                return current
            await trio.sleep(0.25)
    if summary is None:
        raise TimeoutError(f"cell not ready after {timeout_s:.0f} s: no replica answered")
    states = ", ".join(f"{n} {state}" for state, n in sorted(summary["machines"].items()))
    raise TimeoutError(
        f"cell not ready after {timeout_s:.0f} s: {counted} of {machines} machines "
        f"registered ({states or 'none known'}), {len(summary['schedulers'])} of "
        f"{schedulers} schedulers reporting"
    )


async def submit_specs(layout: CellLayout, specs: list[Path]) -> None:
    """Submit job spec files to the cell (what `omega up --submit` does once ready).

    A spec whose job name a live (pending, running, or idle: scaled to zero) job of the
    same owner already has is not submitted again: `omega up` on a data dir it ran before (the demo, twice)
    brings that job back with the cell rather than running a second copy beside it."""
    from cellstore.cellclient import CellClient
    from omega.specfile import load_spec

    async with CellClient.connect(layout.api, layout.token, ca=layout.ca) as cell:
        live = {
            (job["owner"], job["name"]): job["id"]
            for state in ("pending", "running", "idle")
            for job in await cell.jobs(state)
        }
        for path in specs:
            spec = load_spec(path)
            known = live.get((spec.owner, spec.name))
            if known is not None:
                say(
                    f"{path}: job {known} ({spec.name}) is still live in this cell; not "
                    f"submitted again (omega update {known} {path} changes it)"
                )
                continue
            submitted = await cell.submit(spec)
            live[(spec.owner, spec.name)] = submitted.job
            say(f"submitted {path} as job {submitted.job}")


async def run_cell(
    data_dir: Path,
    replicas: int,
    agents: int,
    hollow: int,
    schedulers: list[str],
    specs: list[Path] | None = None,
    settings: CellSettings = DEFAULT_SETTINGS,
    resources: Sequence[str] = (),
    insecure: bool = False,
) -> None:
    from cellstore.datadir import DataDirInUse, hold

    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        # Held while this supervisor lives: a second `omega up` on a running cell's dir
        # rewrote its replicas' configs and crash-looped its own against their ports.
        _held = hold(data_dir, "up.lock", "omega up")
    except DataDirInUse as exc:
        say(f"error: {exc}", sys.stderr)
        raise SystemExit(1) from None
    layout = prepare(data_dir, replicas, settings, insecure)
    parts = plan_parts(layout, schedulers, agents, hollow, resources)
    tokens = part_tokens(layout, parts)
    stopping = trio.Event()
    say(f"OMEGA_ADDR={layout.addr}")
    say(f"OMEGA_TOKEN={layout.token}")
    if layout.ca is not None:
        say(f"OMEGA_CA={layout.ca}")
    else:
        say("WARNING: --insecure: plain http, the token crosses the network in clear text")
    began = time.time()
    failed = False
    # The replicas stop last: schedulers and agents post a last report as they stop (a
    # scheduler's figures, the tasks an agent ended), which a store stopping beside them
    # lost, each retrying it against replicas already gone.
    store_stopping = trio.Event()
    clients: set[str] = set()

    async def client_part(part: Part) -> None:
        clients.add(part.name)
        try:
            await supervise(part, layout, stopping)
        finally:
            clients.discard(part.name)

    async def stop_store_after_clients() -> None:
        await stopping.wait()
        # Bounded: each client part is killed STOP_GRACE_S after its SIGTERM anyway.
        with trio.move_on_after(STOP_GRACE_S + 1.0):
            while clients:
                await trio.sleep(0.05)
        store_stopping.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_for_stop, stopping)
        nursery.start_soon(stop_store_after_clients)
        for part in parts:
            if part.name not in tokens:
                nursery.start_soon(supervise, part, layout, store_stopping)
        try:
            # Schedulers and agents start with their own tokens, once the cell knows them.
            await issue_tokens(layout, list(tokens.values()), 90.0)
            for part in parts:
                token = tokens.get(part.name)
                if token is not None:
                    own = attrs.evolve(part, env=(*part.env, ("OMEGA_TOKEN", token.secret)))
                    nursery.start_soon(client_part, own)
            await wait_ready(layout, agents + hollow, len(schedulers), since=began)
        except TimeoutError as exc:
            say(f"error: {exc}; see the logs in {data_dir / 'logs'}", sys.stderr)
            # The parts stop once `stopping` is set; the exit status waits for them (raised
            # in here, it came out wrapped in the nursery's exception group, as a traceback).
            stopping.set()
            failed = True
        else:
            hollows = f", {count(hollow, 'hollow machine')}" if hollow else ""
            say(
                f"cell ready: {count(replicas, 'replica')}, "
                f"{count(len(schedulers), 'scheduler')}, {count(agents, 'agent')}{hollows}; "
                f"source {data_dir / 'env'} to use it; console at "
                f"{layout.scheme}://{layout.api[0]}/ui"
            )
            if specs:
                await submit_specs(layout, specs)
    if failed:
        raise SystemExit(1)


async def watch_for_stop(stopping: trio.Event) -> None:
    """Set `stopping` on SIGINT, SIGTERM or a closed output pipe; return once it is set."""

    async def on_signal() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                # Stop first, then say so: the pipe we print to may be gone already.
                stopping.set()
                say("stopping cell")
                return

    async def on_output_closed() -> None:
        await children.output_closed(sys.stdout)
        children.silence_closed_outputs()
        log.warning("output_closed_stopping")
        stopping.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(on_signal)
        nursery.start_soon(on_output_closed)
        await stopping.wait()
        nursery.cancel_scope.cancel()
