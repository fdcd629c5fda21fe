"""`omega snapshot save FILE`: the live cell's state in one file, for tools that run the real
scheduler core on a copy of the cell away from it (`omega bench compaction --snapshot FILE`).

The file holds the cell state's own serialised form (`cellstate.snapshot`), as a replica
serves it to a scheduler catching up: `CellState.restore` reads it back. It is written
whole or not at all (a temporary file beside it, then a rename).

Registered onto the `omega` app by `omega.cli`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from omega.cli import Addr, Token, app, call, console, fail

snapshot_app = typer.Typer(
    help="The cell's state as a file, for tools that run the scheduler on a copy of it.",
    no_args_is_help=True,
)
app.add_typer(snapshot_app, name="snapshot")


@snapshot_app.command("save")
def save(
    file: Annotated[Path, typer.Argument(help="Where to write the snapshot.")],
    addr: Addr = "",
    token: Token = "",
) -> None:
    """Save a snapshot of the live cell to FILE (machines, jobs, tasks, placements), for
    `omega bench compaction --snapshot FILE`."""
    if file.is_dir():
        fail(f"snapshot file {str(file)!r}: is a directory; name a file", 2)
    if not file.parent.is_dir():
        fail(f"snapshot file {str(file)!r}: directory {str(file.parent)!r} does not exist", 2)
    data = call(addr, token, lambda cell: cell.snapshot())
    partial = file.with_name(f".{file.name}.partial")
    try:
        # Owner-only, as the data dir it comes from: it holds every job's spec, their
        # environments (where secrets go) among them.
        partial.unlink(missing_ok=True)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(partial, file)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        fail(f"snapshot file {str(file)!r}: cannot write it: {exc.strerror}", 2)
    console().print(f"saved the cell's snapshot ({len(data)} bytes) to {file}")
