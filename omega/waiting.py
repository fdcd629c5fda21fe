"""`omega submit --wait`: progress until a job's tasks run or end, and an early, explained
failure when they cannot be placed.

Each poll reads the job's explanation (`GET /v1/explain`): its task counts and
each scheduler's account of why tasks stay pending. As soon as a scheduler has
tried and explained, the accounts are printed ("Placement failures", as
`nomad job run` prints them); if the pending count then does not fall for
`blocked_timeout` seconds, the wait fails (exit 2) naming the account, which says
the constraint or the dimension. The job itself stays submitted: a machine may
yet come that fits it.
"""

from __future__ import annotations

import re
import time

from omega.cli import EXIT_BLOCKED, JOB_ENDED, call, console, counts_text, fail
from omega.units import count

SETTLED = ("running", "exited", "failed", "killed")
POLL_S = 0.3
_ATTEMPTS = re.compile(r"(\d+) attempts?\b")


def tried(account: str) -> bool:
    """Whether a scheduler's account says it has attempted the job at least once."""
    found = _ATTEMPTS.search(account)
    return found is not None and int(found.group(1)) > 0


def wait_for_job(
    addr: str, token: str, job: str, size: int, timeout: float, blocked_timeout: float
) -> None:
    """Show progress until every task of `job` runs or ends; fail (exit 1) after `timeout`,
    or (exit 2) once its pending tasks were explained and stayed pending `blocked_timeout`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.progress import TimeElapsedColumn as Elapsed

    deadline = time.monotonic() + timeout
    shown: dict[str, str] = {}
    blocked_since: float | None = None
    last_pending = -1
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Elapsed())
    with Progress(*columns, console=console(), transient=False) as progress:
        bar = progress.add_task(job, total=size)
        while True:
            found = call(addr, token, lambda cell: cell.explain(job))
            view, pending = found["job"], found["pending"]
            counts = view["tasks"]
            settled = sum(counts.get(s, 0) for s in SETTLED)
            progress.update(
                bar, completed=settled, description=f"{job} {view['state']} {counts_text(counts)}"
            )
            if view["state"] in JOB_ENDED or settled >= size:
                break
            now = time.monotonic()
            accounts = {k: v for k, v in found["schedulers"].items() if tried(v)}
            if pending and accounts:
                if accounts != shown:
                    progress.console.print("[yellow]Placement failures:[/yellow]")
                    for name, account in accounts.items():
                        progress.console.print(f"  {name}: {account}", highlight=False)
                    shown = accounts
                if blocked_since is None or pending < last_pending:
                    blocked_since = now
                if now - blocked_since >= blocked_timeout:
                    progress.stop()
                    account = "; ".join(f"{k}: {v}" for k, v in accounts.items())
                    fail(
                        f"job {job}: {count(pending, 'task')} cannot be placed "
                        f"(unchanged for {blocked_timeout:g} s): {account}; the job stays "
                        f"submitted (omega kill {job} removes it)",
                        EXIT_BLOCKED,
                    )
            else:
                blocked_since = None
            last_pending = pending
            if now > deadline:
                unseen = ""
                if pending and not found["schedulers"]:
                    # As `omega explain` says it: nothing placed it because nothing tried.
                    unseen = (
                        f"; no scheduler has reported on it (is a {view['scheduler']} "
                        "scheduler running? omega status lists those that report)"
                    )
                fail(f"job {job} not settled after {timeout:.0f} s: {counts_text(counts)}" + unseen)
            time.sleep(POLL_S)
    if view["state"] in ("failed", "killed"):
        fail(f"job {job} {view['state']}: {counts_text(counts)}")
