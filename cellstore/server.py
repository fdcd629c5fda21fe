"""The replica process: Raft member + HTTP API on trio, served by hypercorn's trio worker.

`run_replica(config)` blocks until SIGINT/SIGTERM, then stops serving and stops Raft. It is what
`omega store` and `python -m cellstore` call.
"""

from __future__ import annotations

import signal

import structlog
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from cellstore.api import Replica, build_router
from cellstore.config import ReplicaConfig
from cellstore.datadir import DamagedDataDir, DataDirInUse
from cellstore.feed import AppliedFeed
from cellstore.heap import tune_for_large_heaps
from cellstore.http import AsgiApp
from cellstore.logs import configure_json_logging
from cellstore.raft import ReplicatedMachine
from cellstore.tls import TlsError, TlsFiles, warn_insecure

log = structlog.get_logger("cellstore.server")


def run_replica(config: ReplicaConfig, *, configure_logging: bool = True) -> None:
    """Run one replica until SIGINT or SIGTERM. Logs JSON to stderr. A damaged data dir
    (`cellstore.datadir`) is logged and ends the process with status 3, serving nothing."""
    if configure_logging:
        configure_json_logging()
    tune_for_large_heaps()
    try:
        trio.run(serve_replica, config)
    except DamagedDataDir as exc:
        log.critical("data_dir_damaged", replica=config.id, error=str(exc))
        raise SystemExit(3) from None
    except DataDirInUse as exc:
        log.critical("data_dir_in_use", replica=config.id, error=str(exc))
        raise SystemExit(2) from None
    except TlsError as exc:
        log.critical("tls_refused", replica=config.id, error=str(exc))
        raise SystemExit(2) from None


async def serve_replica(
    config: ReplicaConfig, *, task_status: trio.TaskStatus[Replica] = trio.TASK_STATUS_IGNORED
) -> None:
    """Start Raft and serve the API until cancelled or signalled. Reports the `Replica` via
    `task_status` once the API socket is listening."""
    bound = log.bind(replica=config.id)
    if not config.insecure:
        TlsFiles(config.tls_cert, config.tls_key).check(serving=True, dialing=False)
    feed = AppliedFeed(config.watch_buffer)
    feed.attach()
    raft = await trio.to_thread.run_sync(ReplicatedMachine, config, feed)
    raft.start()
    replica = Replica(config, raft, feed)
    router = build_router(replica)
    for extension in config.extensions:
        extension(router, replica)
    app = AsgiApp(
        router,
        replica.authenticate,
        config.max_body_bytes,
        replica.metrics.observe_request,
        replica.authorize,
    )

    hc = HypercornConfig()
    hc.bind = [config.api_address]
    hc.accesslog = None
    hc.errorlog = None
    hc.keep_alive_timeout = 75
    # hypercorn closes a keep-alive connection after 1,000 requests by default.
    hc.keep_alive_max_requests = 10_000_000
    hc.graceful_timeout = 1.0
    if config.insecure:
        warn_insecure(f"replica {config.id}", config.api_address)
    else:
        TlsFiles(config.tls_cert, config.tls_key).serve_with(hc)
    stop = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_wait_for_signal, stop)
            nursery.start_soon(replica.sample_stats)
            for background in replica.background:
                nursery.start_soon(background)
            await nursery.start(_serve_http, app, hc, stop)
            bound.info(
                "replica_serving",
                api=config.api_address,
                raft=config.raft_address,
                routes=[f"{m} {p}" for m, p in router.paths()],
            )
            task_status.started(replica)
            await stop.wait()
            bound.info("replica_stopping")
            nursery.cancel_scope.cancel()
    finally:
        feed.detach()
        await trio.to_thread.run_sync(raft.stop)
        bound.info("replica_stopped")


async def _serve_http(
    app: AsgiApp,
    hc: HypercornConfig,
    stop: trio.Event,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    await serve(app, hc, shutdown_trigger=stop.wait, task_status=task_status)  # type: ignore[arg-type]


async def _wait_for_signal(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            stop.set()
            return
