"""A replica's data dir checked before it is used: a damaged one is refused, never served,
and one another live process holds (`hold`) is refused too.

pysyncobj 0.3.17 keeps no checksum in its journal and trusts whatever it reads back: a journal
cut short crashed the replica with a bare `struct.error`, and one flipped byte inside a command
was replayed as a different command, a state no other replica had (issue #19). So:

* Every command this store puts in the log is sealed (`seal`): `~`, the CRC-32 of the command
  in 8 hex digits, the command. `ReplicatedMachine.apply_command` unseals it and will not apply
  one whose checksum fails. Entries written before sealing (no `~`) are taken as they are.
* `check_data_dir` runs before pysyncobj opens anything: it walks the journal record by record
  (sizes, index order, terms, every sealed command's checksum), reads the dump through gzip
  (whose CRC covers it whole) and loads the term-and-vote file. Any fault raises
  `DamagedDataDir` naming the file, where, and what to do: the replica exits (status 3)
  instead of starting. The remedy is to move the data dir aside and start the replica on an
  empty one: it rejoins by taking a snapshot from its peers (one replica at a time, the
  others up; a replica that lost its log must not be counted on for the majority that
  acknowledged writes, as with any lost disk).
"""

from __future__ import annotations

import fcntl
import gzip
import os
import struct
import zlib
from pathlib import Path

from pysyncobj.pickle import loads

SEAL = "~"
_HEADER = 24 + 8 + 4 + 4  # pysyncobj's journal: app name, version, format, last record offset
_REGULAR = 0  # pysyncobj's _COMMAND_TYPE.REGULAR: a call of a replicated method


class DamagedDataDir(Exception):
    """A replica's data dir fails its check; the message says where and what to do."""


class DataDirInUse(Exception):
    """Another live process holds the data dir (`hold`); the message names its pid."""


def hold(data_dir: Path, name: str, holder: str) -> int:
    """Lock `data_dir/name` for this process's life (a POSIX lock: released when the
    process ends however it ends, and not inherited by the children it forks), and write
    this pid in it; the open descriptor, which must stay open. Raise `DataDirInUse` if a
    live process holds it: two replicas on one journal, or two `omega up` on one data dir,
    would corrupt it (a second `omega up` on a running cell's dir crash-looped its
    replicas against the first's ports, appending to the same logs)."""
    fd = os.open(data_dir / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        other = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise DataDirInUse(
            f"{data_dir} is in use by another {holder} (pid {other}): stop it first; two on "
            "one data dir would corrupt it"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


class DamagedEntry(Exception):
    """A log entry whose checksum does not match its command."""


def seal(command: str) -> str:
    """The command as it goes into the log: checksummed."""
    return f"{SEAL}{zlib.crc32(command.encode()):08x}{command}"


def unseal(entry: str) -> str:
    """The command of a log entry; `DamagedEntry` if its checksum fails. An entry written
    before sealing is its own command."""
    if not entry.startswith(SEAL):
        return entry
    command = entry[9:]
    if len(entry) < 9 or f"{zlib.crc32(command.encode()):08x}" != entry[1:9]:
        raise DamagedEntry(f"log entry fails its checksum: {entry[:60]!r}")
    return command


def _remedy(data_dir: Path) -> str:
    return (
        f"the data dir {data_dir} is damaged: this replica will not start on it. Move it "
        "aside (keep it to inspect) and start the replica on an empty data dir: it rejoins "
        "by taking a snapshot from its peers. Do so for one replica at a time, the others up."
    )


def check_data_dir(data_dir: Path) -> None:
    """Raise `DamagedDataDir` if the journal, dump or term-and-vote file in `data_dir` is
    damaged; missing files are fine (a new replica)."""
    checks = (
        ("raft.journal", _check_journal),
        ("raft.dump", _check_dump),
        ("raft.journal.meta", _check_meta),
    )
    for name, check in checks:
        path = data_dir / name
        if not path.exists():
            continue
        try:
            problem = check(path.read_bytes())
        except OSError as exc:
            problem = f"cannot be read ({exc.strerror or exc})"
        if problem is not None:
            raise DamagedDataDir(f"{path}: {problem}; {_remedy(data_dir)}")


def _check_journal(data: bytes) -> str | None:
    if len(data) < _HEADER:
        return f"{len(data)} bytes, shorter than the journal's {_HEADER}-byte header"
    if not data.startswith(b"PYSYNCOBJ"):
        return "not a pysyncobj journal (no PYSYNCOBJ header)"
    (end,) = struct.unpack_from("<I", data, _HEADER - 4)
    if not _HEADER <= end <= len(data):
        return f"its header says records end at byte {end}, but the file has {len(data)}"
    offset, number, last = _HEADER, 0, None
    while offset < end:
        where = f"record {number} at byte {offset}"
        if offset + 4 > end:
            return f"{where}: cut short"
        (size,) = struct.unpack_from("<I", data, offset)
        if size < 16 or offset + 8 + size > end:
            return f"{where}: size {size} runs past the end of the records ({end})"
        (trailer,) = struct.unpack_from("<I", data, offset + 4 + size)
        if trailer != size:
            return f"{where}: size {size} at its start, {trailer} at its end"
        index, term = struct.unpack_from("<QQ", data, offset + 4)
        if last is not None and (index != last[0] + 1 or term < last[1]):
            return f"{where}: entry {index} (term {term}) follows entry {last[0]} (term {last[1]})"
        problem = _check_command(data[offset + 20 : offset + 4 + size])
        if problem is not None:
            return f"{where} (entry {index}): {problem}"
        last = (index, term)
        offset += size + 8
        number += 1
    return None


def _check_command(command: bytes) -> str | None:
    if not command or command[0] != _REGULAR:
        return None  # pysyncobj's own entries (no-op, version) carry no command of ours
    try:
        call = loads(command[1:])
        args = call[1] if isinstance(call, tuple) and len(call) > 1 else ()
        for arg in args:
            if isinstance(arg, str):
                unseal(arg)
    except DamagedEntry as exc:
        return str(exc)
    except Exception as exc:
        return f"does not decode ({exc!r:.120})"
    return None


def _check_dump(data: bytes) -> str | None:
    try:
        gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        return f"does not read back whole ({exc}): cut short or corrupted"
    return None


def _check_meta(data: bytes) -> str | None:
    try:
        meta = loads(data)
    except Exception as exc:
        return f"the term and vote do not decode ({exc!r:.120})"
    if not isinstance(meta, dict):
        return "the term and vote do not decode (not a mapping)"
    return None
