"""The agent's log endpoint: a task's captured stdout/stderr, read by `omega logs`.

`GET /v1/logs?task=ID&incarnation=N&stream=stdout|stderr&offset=K` answers the
raw bytes of the run's stream from byte K (at most `MAX_CHUNK` of them; an empty body
means nothing new yet; `agents.output` keeps the stream to a size), with the offset they
start at in `x-omega-log-start` (later than K when K was rotated away), over TLS, to the
tokens of the cell (looked up in the agent's copy of it) whose role
`cellstore.access` admits. It reuses the store's ASGI layer, served by
hypercorn's trio worker, in the agent's nursery.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import structlog
import trio

from agents import output
from agents.task import task_dir_name
from cellstore.access import authorize
from cellstore.errors import ApiError
from cellstore.http import Authenticate, Request, Response, Router, serve_router
from cellstore.metrics import metrics_endpoint

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from cellstore.tls import TlsFiles

log = structlog.get_logger("agents.logserver")

MAX_CHUNK = 1 << 20
STREAMS = output.STREAMS


def read_chunk(
    work_dir: Path, task: str, incarnation: int, stream: str, offset: int
) -> tuple[int, bytes]:
    """Up to `MAX_CHUNK` bytes of a task's stream from `offset`, and where they start;
    ApiError if unknown."""
    if stream not in STREAMS:
        raise ApiError(400, "invalid_parameter", "stream must be stdout or stderr", "stream")
    if offset < 0:
        raise ApiError(400, "invalid_parameter", "offset must be >= 0", "offset")
    run_dir = Path(work_dir) / "tasks" / task_dir_name(task, incarnation)
    try:
        return output.read(run_dir, stream, offset, MAX_CHUNK)
    except FileNotFoundError:
        raise ApiError(
            404,
            "log_unknown",
            f"no {stream} for task {task!r} incarnation {incarnation} here",
            "task",
        ) from None


def build_router(work_dir: Path, registry: CollectorRegistry | None = None) -> Router:
    router = Router()
    if registry is not None:
        metrics_endpoint(router, registry)

    async def logs(request: Request) -> Response:
        task = (request.query.get("task") or [""])[0]
        if not task:
            raise ApiError(400, "missing_parameter", "query parameter task is required", "task")
        incarnation = request.query_int("incarnation")
        offset = request.query_int("offset", 0)
        stream = (request.query.get("stream") or ["stdout"])[0]
        start, body = await trio.to_thread.run_sync(
            read_chunk, work_dir, task, incarnation, stream, offset
        )
        headers = [
            (b"content-type", b"application/octet-stream"),
            (b"x-omega-log-start", str(start).encode()),
        ]
        return Response(200, body, headers)

    router.add("GET", "/v1/logs", logs)
    return router


async def serve_logs(
    work_dir: Path,
    authenticate: Authenticate,
    host: str = "127.0.0.1",
    port: int = 0,
    registry: CollectorRegistry | None = None,
    *,
    tls: TlsFiles | None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `/v1/logs` (and `/metrics` from `registry`, if given) on host:port (0: any free
    port) over https with `tls` (None: plain http, `--insecure`) until cancelled, to the
    tokens `authenticate` knows and `cellstore.access` admits;
    `task_status.started("host:port")` with the bound address."""
    await serve_router(
        build_router(work_dir, registry),
        authenticate,
        host,
        port,
        tls=tls,
        authorize=authorize,
        name="logs",
        task_status=task_status,
    )
