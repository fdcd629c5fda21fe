"""cellstore: the replicated store, generic over a deterministic state machine.

A replica is a pysyncobj Raft member (`raft`) wrapping a `Machine` (`machine`), with an HTTP/JSON
API on trio (`http`, `api`, `server`), a watch feed of applied commands (`feed`) and the
trio-to-Raft seam (`gateway`). `client` is the trio client. The toy machine and the process
harness used by the tests live outside the product, in `harness/`.
"""

from cellstore.api import Replica
from cellstore.client import StoreClient, StoreUnavailable, WatchBatch
from cellstore.config import RaftTuning, ReplicaConfig
from cellstore.errors import ApiError
from cellstore.http import Request, Response, Router, StreamResponse
from cellstore.machine import Machine, MachineClass
from cellstore.server import run_replica, serve_replica

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
