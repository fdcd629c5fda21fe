"""cellstore: the replicated store, generic over a deterministic state machine.

A replica is a pysyncobj Raft member (`raft`) wrapping a `Machine` (`machine`), with an HTTP/JSON
API on trio (`http`, `api`, `server`), a watch feed of applied commands (`feed`) and the
trio-to-Raft seam (`gateway`). `client` is the trio client. The toy machine and the process
harness used by the tests live outside the product, in `harness/`. The cell's own parts sit
beside the store: `cell` (its endpoints), `copy` (the local copy) and `cellclient` (the typed
client).

The names below are imported on first use, not with the package: a client that imports
`cellstore.cellclient` must not pay for the server stack (hypercorn, pysyncobj), which is most
of an `omega` read command's start-up otherwise.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cellstore.api import Replica
    from cellstore.client import StoreClient, StoreUnavailable, WatchBatch
    from cellstore.config import RaftTuning, ReplicaConfig
    from cellstore.errors import ApiError
    from cellstore.http import Request, Response, Router, StreamResponse
    from cellstore.machine import Machine, MachineClass
    from cellstore.server import run_replica, serve_replica

_HOMES = {
    "ApiError": "cellstore.errors",
    "Machine": "cellstore.machine",
    "MachineClass": "cellstore.machine",
    "RaftTuning": "cellstore.config",
    "Replica": "cellstore.api",
    "ReplicaConfig": "cellstore.config",
    "Request": "cellstore.http",
    "Response": "cellstore.http",
    "Router": "cellstore.http",
    "StoreClient": "cellstore.client",
    "StoreUnavailable": "cellstore.client",
    "StreamResponse": "cellstore.http",
    "WatchBatch": "cellstore.client",
    "run_replica": "cellstore.server",
    "serve_replica": "cellstore.server",
}

__all__ = [
    "ApiError",
    "Machine",
    "MachineClass",
    "RaftTuning",
    "Replica",
    "ReplicaConfig",
    "Request",
    "Response",
    "Router",
    "StoreClient",
    "StoreUnavailable",
    "StreamResponse",
    "WatchBatch",
    "run_replica",
    "serve_replica",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'cellstore' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
