"""The ids a client chooses for what it sends to a cell: job ids and command ids.

A command carries an id chosen before it is first sent, so that a retry after a failover is
applied once; a job's id is chosen by whoever submits it for the same reason. Both are minted
here and nowhere else. They are random on purpose: a restarted client must not reuse the ids
of its previous life (the cell state itself never draws them, it only compares them).
"""

from __future__ import annotations

JOB_NAME_PREFIX = 50  # characters of the job's name kept in its id


def new_job_id(name: str | None) -> str:
    """`NAME-xxxxxx`: the job's name (or `job`) and six random hex digits."""
    import secrets  # here, not at the top: a read-only `omega` command never mints an id

    base = name if isinstance(name, str) and name else "job"
    return f"{base[:JOB_NAME_PREFIX]}-{secrets.token_hex(3)}"


def new_command_id() -> str:
    """A fresh id for one command, kept across its retries."""
    import secrets

    return secrets.token_hex(12)
