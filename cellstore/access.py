"""Who may call what: the one table of every endpoint's roles, and the cell's token check.

A request's bearer token is looked up by its SHA-256 in the replica's own applied cell state
(`CellState.token_digests`, filled by `CreateToken` and emptied by `RevokeToken`), so a revoked
token is refused by each replica as soon as that replica has applied the revocation; the
replica's config token (the bootstrap token of `omega up` and of the multi-host set-up) is
`admin` and is also entered into the cell as the token `bootstrap` by the leader, so that
schedulers and agents, which check tokens against their own copy of the cell, know it too.

Roles (`cellstate.Role`):
- `admin`: everything, and alone manages tokens and sends raw commands (`/v1/commands`).
- `operator`: jobs, quotas, weights, drains; reads.
- `scheduler`: reads the cell, commits transactions, reports its figures and ends rollouts.
- `agent`: registers, heartbeats and reports for the machines its token is bound to (names or
  `fnmatch` patterns); a command naming another machine, or a task on one, is refused 403 and
  changes nothing (`machine_refused`). Reads.
- `read-only`: reads only.

The cost per request is one SHA-256 of the token and one dict lookup, without the state lock.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Iterable
from fnmatch import translate
from typing import Any

from cellstate import Role
from cellstore.http import Principal

ADMIN, OPERATOR, SCHEDULER, AGENT, READ_ONLY = (
    Role.ADMIN,
    Role.OPERATOR,
    Role.SCHEDULER,
    Role.AGENT,
    Role.READ_ONLY,
)
EVERYONE = frozenset(Role)
OPERATE = frozenset({ADMIN, OPERATOR})
SCHEDULE = frozenset({ADMIN, SCHEDULER})
AGENTS = frozenset({ADMIN, AGENT})
ADMINS = frozenset({ADMIN})

# Every endpoint of a cell's replica, agent and scheduler, and the roles it admits. A route
# missing here is refused to everyone (`CellGuard.authorize`), and a test walks the table.
ACCESS: dict[tuple[str, str], frozenset[Role]] = {
    # the generic store's own
    ("POST", "/v1/commands"): ADMINS,
    ("GET", "/v1/status"): EVERYONE,
    ("GET", "/v1/snapshot"): EVERYONE,
    ("GET", "/v1/watch"): EVERYONE,
    ("GET", "/metrics"): EVERYONE,
    # reads
    ("GET", "/v1/jobs"): EVERYONE,
    ("GET", "/v1/jobs/history"): EVERYONE,
    ("GET", "/v1/tasks"): EVERYONE,
    ("GET", "/v1/machines"): EVERYONE,
    ("GET", "/v1/quotas"): EVERYONE,
    ("GET", "/v1/weights"): EVERYONE,
    ("GET", "/v1/cell"): EVERYONE,
    ("GET", "/v1/whoami"): EVERYONE,
    ("GET", "/v1/explain"): EVERYONE,
    ("GET", "/v1/endpoints"): EVERYONE,
    # an operator's writes
    ("POST", "/v1/jobs"): OPERATE,
    ("POST", "/v1/jobs/kill"): OPERATE,
    ("POST", "/v1/jobs/planned"): OPERATE,
    ("POST", "/v1/jobs/update"): OPERATE,
    ("POST", "/v1/jobs/revert"): OPERATE,
    ("POST", "/v1/jobs/scale"): OPERATE,
    ("POST", "/v1/jobs/promote"): OPERATE,
    ("POST", "/v1/machines/state"): OPERATE,
    ("POST", "/v1/machines/remove"): OPERATE,
    ("POST", "/v1/machines/labels"): OPERATE,
    ("POST", "/v1/quotas"): OPERATE,
    ("POST", "/v1/weights"): OPERATE,
    # a scheduler's
    ("POST", "/v1/transactions"): SCHEDULE,
    ("POST", "/v1/schedulers/report"): SCHEDULE,
    # an agent's, for its own machines
    ("POST", "/v1/agents/register"): AGENTS,
    ("POST", "/v1/agents/heartbeat"): AGENTS,
    ("POST", "/v1/agents/report"): AGENTS,
    ("POST", "/v1/agents/usage"): AGENTS,
    # tokens
    ("GET", "/v1/tokens"): ADMINS,
    ("POST", "/v1/tokens"): ADMINS,
    ("POST", "/v1/tokens/revoke"): ADMINS,
    # a scheduler's own listener: its figures and explanations
    ("GET", "/v1/metrics"): EVERYONE,
    # an agent's own listener: a task's output is for people, not for other agents
    ("GET", "/v1/logs"): frozenset({ADMIN, OPERATOR, READ_ONLY}),
}


def digest(secret: str | bytes) -> str:
    """The SHA-256 (hex) a token is kept and looked up by."""
    return hashlib.sha256(secret.encode() if isinstance(secret, str) else secret).hexdigest()


def allows(role: str, method: str, path: str) -> bool:
    """Whether `role` may call `method path` (`ACCESS`; an unlisted route: nobody)."""
    roles = ACCESS.get((method, path))
    return roles is not None and role in roles


def authorize(principal: Principal, method: str, path: str) -> bool:
    return allows(principal.role, method, path)


def machine_matcher(patterns: Iterable[str]) -> Callable[[str], bool]:
    """A test of machine names against an agent token's names and `fnmatch` patterns."""
    compiled = re.compile("|".join(translate(p) for p in patterns) or r"(?!)")
    return lambda name: compiled.match(name) is not None


class CellGuard:
    """Authenticates a request's token against the cell state `tokens()` returns (`CellState.
    token_digests`: digest -> record), and against the process's own `token` as `own`."""

    def __init__(
        self, tokens: Callable[[str], Any], token: str, own: Principal | None = None
    ) -> None:
        self._lookup = tokens
        self._own = f"Bearer {token}".encode()
        self._own_principal = own or Principal("bootstrap", str(ADMIN))
        self._principals: dict[str, tuple[Any, Principal]] = {}

    def authenticate(self, header: bytes) -> Principal | None:
        if not header.startswith(b"Bearer "):
            return None
        if hmac.compare_digest(header, self._own):
            return self._own_principal
        key = hashlib.sha256(header[7:]).hexdigest()
        record = self._lookup(key)
        if record is None:
            return None
        # One principal per record: a record replaced (another role or machines) is a new one.
        cached = self._principals.get(key)
        if cached is None or cached[0] is not record:
            cached = (record, Principal(record.name, str(record.role), record.machines))
            self._principals[key] = cached
        return cached[1]
