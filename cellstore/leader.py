"""Who leads, judged by a client from the replicas' own status answers.

A leader cut off by a link that drops packets neither answers nor resets the connection: a
client waiting on it would wait out its whole request timeout. Both clients (`StoreClient` and
the blocking transport of `SyncCellClient`) look around once a request has waited
`PROBE_AFTER_S`: they try a new TCP connection to the replica they wait on and, if it does not
open, ask the others for their status. They give up on that replica only if it cannot even be connected to (a busy
replica's kernel still completes the handshake: slowness is never taken for a partition) and
another replica names a leader that is not it. The request is then resent to that leader
unchanged: the command ids inside make that safe, as every retry is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# A healthy replica answers a write in milliseconds; probing costs a connection attempt and a
# few status requests per request that waits longer.
PROBE_AFTER_S = 0.25
PROBE_PERIOD_S = 0.1
PROBE_TIMEOUT_S = 0.2
# A replica that could not be connected to is taken as still cut off for this long: the probes
# in between only ask the others, every `PROBE_PERIOD_S`, so a new leader is seen about as soon
# as it is elected rather than one more connect timeout later.
UNREACHABLE_FOR_S = 1.0


def leader_elsewhere(target: str, answers: Mapping[str, Mapping[str, Any] | None]) -> str | None:
    """The API address of the leader named by the answering replica with the highest term, if
    it is not `target` (the replica waited on, which the caller has failed to connect to);
    else None. `answers` maps replicas' API addresses to their `GET /v1/status`, None where
    there was no answer."""
    best: tuple[int, str] | None = None
    for status in answers.values():
        if status is None:
            continue
        leader = (status.get("leader") or {}).get("api")
        term = status.get("term")
        if isinstance(leader, str) and isinstance(term, int) and (best is None or term > best[0]):
            best = (term, leader)
    if best is None or best[1] == target:
        return None
    return best[1]
