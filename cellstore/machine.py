"""The state-machine contract the replicated store is generic over, and its snapshot envelope.

`Machine` is the byte-level interface a replica drives: wire-encoded commands in, wire-encoded
results out, a monotonically bumped `version`, and the machine's own compact serialised form.
`MachineBox` is the single attribute of the Raft object that pysyncobj persists at log
compaction; it pickles as nothing but `Machine.snapshot()` bytes (see `cellstore.raft`).
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable


@runtime_checkable
class Machine(Protocol):
    """A deterministic state machine driven by wire-encoded (JSON bytes) commands.

    `version` bumps by exactly 1 on every applied command. `apply_encoded` never raises for bad
    content: it returns an encoded error result. `snapshot()` returns the machine's own compact
    serialised form; `restore(snapshot())` rebuilds an equal machine at the same version.
    """

    version: int

    def apply_encoded(self, command: bytes) -> bytes: ...

    def snapshot(self) -> bytes: ...

    @classmethod
    def restore(cls, data: bytes) -> Machine: ...


class MachineClass(Protocol):
    """What a replica is configured with: a class (or factory object) that builds an empty
    machine when called and rebuilds one from its snapshot with `restore`."""

    def __call__(self) -> Machine: ...

    def restore(self, data: bytes) -> Machine: ...


class MachineBox:
    """Holds the live machine; pickles as the machine's own snapshot bytes only.

    pysyncobj's log compaction pickles the Raft object's state in a forked child. The box's
    `__reduce__` makes that pickle `MachineBox._from_snapshot(<snapshot bytes>)`: the dump file
    (and the install-snapshot transfer to a lagging follower) carries exactly `snapshot()`.
    An unpickled box holds the bytes as `pending` until the Raft object, which knows the machine
    class, calls `materialise`.
    """

    __slots__ = ("machine", "pending")
    _format: ClassVar[int] = 1

    def __init__(self, machine: Machine | None, pending: bytes | None = None) -> None:
        self.machine = machine
        self.pending = pending

    @classmethod
    def _from_snapshot(cls, fmt: int, data: bytes) -> MachineBox:
        if fmt != cls._format:
            raise ValueError(f"unknown snapshot envelope format {fmt}")
        return cls(None, data)

    def __reduce__(self) -> tuple[Any, ...]:
        # Runs in pysyncobj's forked compaction child (no lock: the Raft thread, the only
        # mutator, is the thread that forked, so the copy is quiescent).
        if self.machine is None:
            data = self.pending if self.pending is not None else b""
        else:
            data = self.machine.snapshot()
        return (MachineBox._from_snapshot, (self._format, data))

    def materialise(self, machine_class: MachineClass) -> Machine:
        """Return the live machine, restoring it from pending snapshot bytes if needed."""
        if self.pending is not None:
            self.machine = machine_class.restore(self.pending)
            self.pending = None
        assert self.machine is not None
        return self.machine
