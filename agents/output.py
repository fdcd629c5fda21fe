"""A task run's captured output on disk, kept to a size, and read back by offset.

`<run dir>/<stream>` (stdout, stderr) is the file the task writes, opened with O_APPEND so
that it goes on writing at the end after the file is cut. Once a file passes the agent's
cap (`--max-log-bytes`) it is rotated as logrotate's `copytruncate` and the kubelet rotate a
file a process holds open: its last cap's worth copied to `<stream>.1` (the one before is
dropped) and the file cut to nothing. What the task writes between the copy and the cut
is lost; about twice the cap is kept, the newest bytes. `<stream>.base` holds where the
current file starts in the whole stream, so offsets stay those of the stream: `omega logs
-f` reads on across a rotation, and a read of bytes rotated away is answered from the
oldest kept, saying where that is. A run's output goes with its directory when the cell
forgets the task (`Executor.forget`).

Rotating and reading take one lock, so that no reader sees the files halfway through a
rotation (the log server reads from worker threads, the executor rotates from the loop).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from pathlib import Path

STREAMS = ("stdout", "stderr")
_lock = threading.Lock()


def rotate(run_dir: Path, limit: int) -> int:
    """Rotate each stream of the run in `run_dir` whose file is over `limit` bytes; the
    number of bytes moved out of the current files."""
    moved = 0
    with _lock:
        for stream in STREAMS:
            current = run_dir / stream
            try:
                if current.stat().st_size <= limit:
                    continue
            except FileNotFoundError:
                continue
            older = run_dir / f"{stream}.1"
            partial = run_dir / f"{stream}.1.tmp"
            with open(current, "rb") as src, open(partial, "wb") as dst:
                # Its last `limit` bytes: what the task wrote since the last look may be
                # far more than the cap, and the promise is twice the cap on disk.
                src.seek(max(0, src.seek(0, os.SEEK_END) - limit))
                shutil.copyfileobj(src, dst)
                end = src.tell()
                os.truncate(current, 0)
            os.replace(partial, older)
            _set_base(run_dir, stream, _base(run_dir, stream) + end)
            moved += end
    return moved


def read(run_dir: Path, stream: str, offset: int, most: int) -> tuple[int, bytes]:
    """Up to `most` bytes of the stream from `offset`, and the offset they start at: later
    than `offset` when the bytes asked for were rotated away. FileNotFoundError if the run
    never wrote the stream here."""
    with _lock:
        base = _base(run_dir, stream)
        if offset < base:
            older = run_dir / f"{stream}.1"
            with contextlib.suppress(FileNotFoundError), open(older, "rb") as f:
                start = base - os.fstat(f.fileno()).st_size
                offset = max(offset, start)
                f.seek(offset - start)
                return offset, f.read(min(most, base - offset))
            offset = base
        with open(run_dir / stream, "rb") as f:
            f.seek(offset - base)
            return offset, f.read(most)


def _base(run_dir: Path, stream: str) -> int:
    try:
        return int((run_dir / f"{stream}.base").read_text())
    except FileNotFoundError:
        return 0


def _set_base(run_dir: Path, stream: str, base: int) -> None:
    path = run_dir / f"{stream}.base"
    partial = path.with_suffix(".base.tmp")
    partial.write_text(str(base))
    os.replace(partial, path)
