"""Who leads, judged by a client from the replicas' own status answers.

A leader cut off by a link that drops packets neither answers nor resets the connection: a
client waiting on it would wait out its whole request timeout. Both clients (`StoreClient` and
the blocking transport of `SyncCellClient`) ask the other replicas once a request has waited
`PROBE_AFTER_S`, and give up on the one they wait for as soon as it is silent and a peer names
another leader. The request is then resent there unchanged: the command ids inside make that
safe, as every retry is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# A healthy replica answers a write in milliseconds. Probing costs a few status requests, and
# a false alarm nothing worse: a replica is abandoned only if it does not answer its own probe
# and the others name a leader that is not it (a slow leader is named by its peers).
PROBE_AFTER_S = 0.5
PROBE_PERIOD_S = 0.25
PROBE_TIMEOUT_S = 0.3


def leader_elsewhere(target: str, answers: Mapping[str, Mapping[str, Any] | None]) -> str | None:
    """The API address of the leader named by the answering replica with the highest term, if
    `target` (the replica waited on) did not answer and the leader named is another; else
    None. `answers` maps each replica's API address to its `GET /v1/status`, None if silent."""
    if answers.get(target) is not None:
        return None
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
