"""The trio client of a replicated store: given every replica's API address and the token.

It sends writes to the replica it believes leads (learnt from `x-omega-leader`), and on a
connection error, a timeout, a 5xx or a `not_committed` answer it moves on to the next replica
and retries after a capped exponential back-off, until `retry_deadline_s`. A request unanswered
after a second is watched: once the replica waited on is silent and another names a leader, it
is abandoned for that leader (`cellstore.leader`), so a leader cut off by a link that drops
packets costs about an election, not the request timeout. At most `MAX_IN_FLIGHT` requests are
on the wire at once (more wait in the client, unwatched: waiting for a connection of our own is
no sign of a partition), and all requests waiting on one replica share one probe, so a burst of
a thousand concurrent calls neither floods the replicas with status probes nor drowns httpx's
connection pool, whose queue costs time quadratic in its length. A retry resends the
same command bytes (the ids inside are the client's, never re-invented): for `commands()` only
the commands whose outcome is unknown are resent. `watch()` reconnects to any replica and
resumes after the last version it yielded, so the consumer sees no gap and no duplicate.
"""

from __future__ import annotations

import argparse
import base64
import os
import random
from collections.abc import AsyncGenerator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import httpx
import orjson
import structlog
import trio

from cellstore.errors import ApiError
from cellstore.leader import (
    PROBE_AFTER_S,
    PROBE_PERIOD_S,
    PROBE_TIMEOUT_S,
    UNREACHABLE_FOR_S,
    leader_elsewhere,
)
from cellstore.tls import TlsFiles, client_context

log = structlog.get_logger("cellstore.client")

RETRYABLE_STATUS = frozenset({500, 502, 503, 504})

# The generic store's own endpoints (`cellstore.api`); a machine's typed ones are its client's.
COMMANDS = "/v1/commands"
STATUS = "/v1/status"
SNAPSHOT = "/v1/snapshot"
WATCH = "/v1/watch"
ROUTES = (("POST", COMMANDS), ("GET", STATUS), ("GET", SNAPSHOT), ("GET", WATCH))

# Below the pool's 64 connections: watch streams hold connections of their own.
MAX_IN_FLIGHT = 48


class StoreUnavailable(Exception):
    """No replica gave an answer before the retry deadline."""


@attrs.frozen
class WatchBatch:
    """One step of the watch feed. If `snapshot` is set, it is the machine's snapshot at
    `version` and replaces the consumer's state; otherwise `commands` are `(version, command)`
    pairs, consecutive, following the previous batch. `version` is the last version covered."""

    version: int
    commands: list[tuple[int, Any]] = attrs.field(factory=list)
    snapshot: bytes | None = None


class _Retryable(Exception):
    pass


class _LeaderMoved(_Retryable):
    """The replica waited on fell silent and another leads: retry there, not at the next."""


class StoreClient:
    """An async (trio) client. Use as `async with StoreClient(addresses, token) as client:`."""

    def __init__(
        self,
        addresses: Sequence[str],
        token: str,
        *,
        timeout_s: float = 15.0,
        retry_deadline_s: float = 30.0,
        backoff_initial_s: float = 0.02,
        backoff_max_s: float = 0.5,
        watch_idle_timeout_s: float = 5.0,
        ca: Path | str | None = None,
    ) -> None:
        """`ca`: the CA file that signed the replicas' certificates (`cellstore.tls`); with
        it, addresses without a scheme are https, without it plain http."""
        if not addresses:
            raise ValueError("at least one replica address is needed")
        self._scheme = "https" if ca is not None else "http"
        # The cell's CA, for the requests and the leader probes alike.
        self._verify = client_context(ca)
        self._urls = [a if "://" in a else f"{self._scheme}://{a}" for a in addresses]
        self._addresses = [u.split("://", 1)[1] for u in self._urls]
        self._auth = {"authorization": f"Bearer {token}"}
        self._timeout = httpx.Timeout(timeout_s, connect=1.0)
        self._retry_deadline_s = retry_deadline_s
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._watch_idle_timeout_s = watch_idle_timeout_s
        self._preferred = 0
        self._http = httpx.AsyncClient(
            verify=self._verify,
            timeout=self._timeout,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        )
        self._in_flight = trio.CapacityLimiter(MAX_IN_FLIGHT)
        # Probes get their own small pool: they must not queue behind the requests they judge.
        self._probe_http: httpx.AsyncClient | None = None
        # Per replica waited on: the probe under way (its event) or the last verdict and when.
        self._probing: dict[int, trio.Event] = {}
        self._verdicts: dict[int, tuple[float, str | None]] = {}
        # Per replica: when a connection to it last failed to open; for `UNREACHABLE_FOR_S`
        # after that, probes only ask the others who leads.
        self._unreachable: dict[int, float] = {}

    async def __aenter__(self) -> StoreClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()
        if self._probe_http is not None:
            await self._probe_http.aclose()

    # -- writes --------------------------------------------------------------------------------

    async def commands(self, commands: Sequence[Mapping[str, Any]]) -> list[Any]:
        """Commit each command as its own Raft entry; their results (parsed JSON) in order.

        Raises `ApiError` for a 4xx answer (not retried) and `StoreUnavailable` if some command
        is still unacknowledged at the retry deadline.
        """
        encoded = [orjson.dumps(c) for c in commands]
        results: list[Any] = [None] * len(encoded)
        pending = list(range(len(encoded)))
        deadline = trio.current_time() + self._retry_deadline_s
        delay = self._backoff[0]
        while pending:
            body = b'{"commands":[' + b",".join(encoded[i] for i in pending) + b"]}"
            try:
                data = await self._send("POST", COMMANDS, body, deadline, partial_ok=True)
                for i, result in zip(pending, data["results"], strict=True):
                    results[i] = result
                return results
            except ApiError as exc:
                if exc.status != 503 or exc.body.code != "not_committed":
                    raise
                partial = exc.extra.get("results") or [None] * len(pending)
                still = []
                for i, result in zip(pending, partial, strict=True):
                    if result is None:
                        still.append(i)
                    else:
                        results[i] = result
                pending = still
                log.info("commands_retry", unacknowledged=len(pending), reason=exc.body.message)
                self._rotate()
                if trio.current_time() > deadline:
                    raise StoreUnavailable(str(exc)) from exc
                await trio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, self._backoff[1])
        return results

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        """Call an endpoint (typed ones included) with the retry policy; the parsed JSON answer.
        The body is encoded once, so a retry resends the same bytes."""
        raw = orjson.dumps(body) if body is not None else None
        return await self._send(method, path, raw, trio.current_time() + self._retry_deadline_s)

    # -- reads ---------------------------------------------------------------------------------

    async def status(self, address: str | None = None) -> dict[str, Any]:
        """`GET /v1/status` of `address`, or of any replica that answers."""
        if address is not None:
            resp = await self._http.get(self._url_of(address) + STATUS, headers=self._auth)
            return self._decode(resp)
        return await self._send(
            "GET",
            STATUS,
            None,
            trio.current_time() + self._retry_deadline_s,
            prefer_leader=False,
        )

    async def snapshot(self, address: str) -> tuple[int, bytes]:
        """`GET /v1/snapshot` of one replica: (version, snapshot bytes)."""
        resp = await self._http.get(self._url_of(address) + SNAPSHOT, headers=self._auth)
        if resp.status_code != 200:
            self._decode(resp)
        return int(resp.headers["x-omega-version"]), resp.content

    async def watch(self, from_version: int = 1) -> AsyncGenerator[WatchBatch, None]:
        """Yield the applied-command feed from `from_version` on, forever, across replica
        failures (reconnecting to the next replica with back-off)."""
        next_version = from_version
        index = self._preferred
        delay = self._backoff[0]
        timeout = httpx.Timeout(
            self._timeout.connect or 1.0,
            read=self._watch_idle_timeout_s,
            write=self._watch_idle_timeout_s,
            pool=self._watch_idle_timeout_s,
        )
        while True:
            url = self._urls[index] + WATCH
            try:
                async with self._http.stream(
                    "GET", url, params={"from": next_version}, headers=self._auth, timeout=timeout
                ) as resp:
                    if resp.status_code != 200:
                        await resp.aread()
                        self._decode(resp)
                    async for line in resp.aiter_lines():
                        if not line:
                            continue
                        batch = _parse_watch_line(orjson.loads(line), next_version)
                        if batch is None:
                            continue
                        delay = self._backoff[0]
                        next_version = batch.version + 1
                        yield batch
                raise _Retryable("watch stream ended")
            except (httpx.TransportError, _Retryable) as exc:
                log.info(
                    "watch_reconnect",
                    replica=self._addresses[index],
                    error=repr(exc),
                    next_version=next_version,
                )
            except ApiError as exc:
                if exc.status not in RETRYABLE_STATUS:
                    raise
            index = (index + 1) % len(self._urls)
            await trio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self._backoff[1])

    # -- plumbing ------------------------------------------------------------------------------

    def _url_of(self, address: str) -> str:
        """The URL of replica `address` (HOST:PORT or a URL) with this client's scheme for it."""
        if "://" in address:
            return address
        if address in self._addresses:
            return self._urls[self._addresses.index(address)]
        return f"{self._scheme}://{address}"

    def _rotate(self) -> None:
        self._preferred = (self._preferred + 1) % len(self._urls)

    def _follow_leader(self, resp: httpx.Response) -> None:
        leader = resp.headers.get("x-omega-leader")
        if leader in self._addresses:
            self._preferred = self._addresses.index(leader)

    async def _send(
        self,
        method: str,
        path: str,
        body: bytes | None,
        deadline: float,
        *,
        prefer_leader: bool = True,
        partial_ok: bool = False,
    ) -> Any:
        delay = self._backoff[0]
        headers = dict(self._auth)
        if body is not None:
            headers["content-type"] = "application/json"
        last_error: Exception | None = None
        while True:
            url = self._urls[self._preferred] + path
            try:
                resp = await self._watched(self._preferred, method, url, body, headers)
                if prefer_leader:
                    self._follow_leader(resp)
                if resp.status_code in RETRYABLE_STATUS and not (
                    partial_ok and _is_not_committed(resp)
                ):
                    raise _Retryable(f"{resp.status_code} from {url}")
                return self._decode(resp)
            except (httpx.TransportError, _Retryable) as exc:
                last_error = exc
                log.info("request_retry", url=url, error=repr(exc))
                if not isinstance(exc, _LeaderMoved):
                    self._rotate()
            if trio.current_time() > deadline:
                raise StoreUnavailable(f"{method} {path}: no replica answered: {last_error!r}")
            await trio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self._backoff[1])

    async def _watched(
        self, index: int, method: str, url: str, body: bytes | None, headers: dict[str, str]
    ) -> httpx.Response:
        """The request to replica `index`, abandoned (`_Retryable`, the preferred replica set
        to the new leader) if that replica falls silent while another names a leader."""
        moved: list[str] = []
        failed: list[Exception] = []
        resp: httpx.Response | None = None
        async with self._in_flight, trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_leader, index, moved, nursery.cancel_scope)
            try:
                resp = await self._http.request(method, url, content=body, headers=headers)
            except httpx.TransportError as exc:
                failed.append(exc)
            nursery.cancel_scope.cancel()
        if moved:
            self._preferred = self._addresses.index(moved[0])
            raise _LeaderMoved(f"{url}: unreachable, and {moved[0]} leads")
        if failed:
            raise failed[0]
        assert resp is not None
        return resp

    async def _watch_leader(self, index: int, moved: list[str], scope: trio.CancelScope) -> None:
        await trio.sleep(PROBE_AFTER_S)
        while True:
            leader = await self._leader_instead_of(index)
            if leader is not None and leader in self._addresses:
                log.info("request_abandoned", replica=self._addresses[index], leader=leader)
                moved.append(leader)
                scope.cancel()
                return
            await trio.sleep(PROBE_PERIOD_S)

    async def _leader_instead_of(self, index: int) -> str | None:
        """`leader_elsewhere` for replica `index`, probed at most once per `PROBE_PERIOD_S`
        however many requests wait on it: the others wait for that probe's verdict."""
        verdict = self._verdicts.get(index)
        if verdict is not None and trio.current_time() - verdict[0] < PROBE_PERIOD_S:
            return verdict[1]
        running = self._probing.get(index)
        if running is not None:
            await running.wait()
            return self._verdicts.get(index, (0.0, None))[1]
        done = self._probing[index] = trio.Event()
        leader: str | None = None
        try:
            target = self._addresses[index]
            cut_at = self._unreachable.get(index)
            if cut_at is None or trio.current_time() - cut_at > UNREACHABLE_FOR_S:
                # First the connection, then the question: a replica that can be reached is
                # slow, not cut off, and needs no one asked; one that cannot be is asked about
                # once the connect has timed out, by when the others have had that much longer
                # to elect (asked at once, they still named the cut leader one time in three).
                reachable: list[bool] = []
                await self._connects(target, reachable)
                if reachable:
                    self._unreachable.pop(index, None)
                    return None
                self._unreachable[index] = trio.current_time()
            answers: dict[str, dict[str, Any] | None] = {}
            async with trio.open_nursery() as nursery:
                for address in self._addresses:
                    if address != target:
                        nursery.start_soon(self._probe, address, answers)
            leader = leader_elsewhere(target, answers)
        finally:
            # Set even when cancelled, so no waiter is left behind on a dead probe.
            self._verdicts[index] = (trio.current_time(), leader)
            del self._probing[index]
            done.set()
        return leader

    async def _connects(self, address: str, reachable: list[bool]) -> None:
        """Append True if a new TCP connection to `address` opens within the probe timeout."""
        host, _, port = address.rpartition(":")
        with trio.move_on_after(PROBE_TIMEOUT_S):
            try:
                stream = await trio.open_tcp_stream(host.strip("[]"), int(port))
            except OSError:
                return
            await stream.aclose()
            reachable.append(True)

    async def _probe(self, address: str, answers: dict[str, dict[str, Any] | None]) -> None:
        answers[address] = None
        if self._probe_http is None:
            self._probe_http = httpx.AsyncClient(
                verify=self._verify, limits=httpx.Limits(max_connections=8)
            )
        try:
            resp = await self._probe_http.get(
                self._url_of(address) + STATUS, headers=self._auth, timeout=PROBE_TIMEOUT_S
            )
            if resp.status_code == 200:
                answers[address] = resp.json()
        except (httpx.HTTPError, ValueError):
            pass

    @staticmethod
    def _decode(resp: httpx.Response) -> Any:
        try:
            data = orjson.loads(resp.content) if resp.content else None
        except orjson.JSONDecodeError:
            data = None
        if resp.status_code >= 400:
            err = (data or {}).get("error", {}) if isinstance(data, dict) else {}
            extra = (
                {k: v for k, v in data.items() if k != "error"} if isinstance(data, dict) else {}
            )
            raise ApiError(
                resp.status_code,
                err.get("code", "http_error"),
                err.get("message", resp.text[:200]),
                err.get("field"),
                extra,
            )
        return data


def _is_not_committed(resp: httpx.Response) -> bool:
    return resp.status_code == 503 and b'"not_committed"' in resp.content[:200]


def _parse_watch_line(msg: dict[str, Any], next_version: int) -> WatchBatch | None:
    if "snapshot" in msg:
        return WatchBatch(version=int(msg["version"]), snapshot=base64.b64decode(msg["snapshot"]))
    if "commands" in msg:
        commands = [(int(v), c) for v, c in msg["commands"] if v >= next_version]
        if not commands:
            return None
        if commands[0][0] != next_version:
            raise _Retryable(f"gap in watch feed: expected {next_version}, got {commands[0][0]}")
        return WatchBatch(version=commands[-1][0], commands=commands)
    return None  # heartbeat


# -- command lines of the cell's components ----------------------------------------------------


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    """`--addr`, `--token` and `--tls-ca`, defaulting to OMEGA_ADDR, OMEGA_TOKEN and OMEGA_CA;
    `--tls-cert`/`--tls-key` for what the component serves; `--insecure` for plain http."""
    parser.add_argument(
        "--addr",
        default=os.environ.get("OMEGA_ADDR", ""),
        help="comma-separated replica API addresses (env OMEGA_ADDR)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("OMEGA_TOKEN", ""),
        help="API bearer token (env OMEGA_TOKEN)",
    )
    parser.add_argument(
        "--tls-ca",
        default=os.environ.get("OMEGA_CA") or None,
        help="CA file the replicas' certificates are checked against (env OMEGA_CA)",
    )
    parser.add_argument("--tls-cert", default=None, help="certificate (PEM) of what this serves")
    parser.add_argument("--tls-key", default=None, help="its private key (PEM)")
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="plain http to the store and on this component's own listener (tokens in clear)",
    )


def store_from_arguments(
    parser: argparse.ArgumentParser, args: argparse.Namespace, *, serving: bool
) -> tuple[tuple[str, ...], str, TlsFiles | None]:
    """The replica addresses, token and TLS files (None: `--insecure`) given to a component
    that serves a listener of its own if `serving`; exits with a usage error naming what is
    missing."""
    from cellstore.tls import TlsError

    addresses = tuple(a.strip() for a in args.addr.split(",") if a.strip())
    if not addresses:
        parser.error("no store address: pass --addr or set OMEGA_ADDR")
    if not args.token:
        parser.error("no token: pass --token or set OMEGA_TOKEN")
    if args.insecure:
        return addresses, args.token, None
    tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_ca)
    try:
        tls.check(serving=serving, dialing=True)
    except TlsError as exc:
        parser.error(str(exc))
    return addresses, args.token, tls
