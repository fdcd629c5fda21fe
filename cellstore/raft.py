"""The Raft replica: a pysyncobj `SyncObj` that wraps one `Machine`.

One `@replicated` method, `apply_command`, takes one wire-encoded command per log entry. It is
called with the command as `str` (the JSON text), not `bytes`: pysyncobj pickles each call with
protocol 2, which encodes `bytes` as a `_codecs.encode(str, 'latin1')` call (slower and larger;
a 20 KB entry moved ~300-400 entries/s as bytes against ~1,100/s as str, measured on 3 replicas
on the 2-core development machine). The machine still sees bytes.

Snapshots. Three ways were possible; we use the third:
* pysyncobj's default pickles every non-internal attribute of this object: our machine object's
  pickle, which is not its serialised form.
* `SyncObjConf(serializer=..., deserializer=...)`: pysyncobj then turns *off* its fork
  (`Serializer.__useFork` requires `serializer is None`), so the whole snapshot would be written
  on the Raft thread, stalling heartbeats into elections with a large state, unless we
  re-implemented an async fork with `serializeChecker`.
* The only persisted attribute is a `MachineBox` whose `__reduce__` is
  `MachineBox._from_snapshot(<machine.snapshot() bytes>)`. pysyncobj keeps forking, so
  `snapshot()` runs in the forked child, off the Raft thread, and the dump file holds exactly the
  machine's own bytes in a tiny pickle envelope (gzip'd by pysyncobj). The dump is only read
  from our own data dir or from peers over the encrypted, secret-authenticated Raft transport.

Every other attribute is assigned *before* `SyncObj.__init__`, which records the names present
then as internal (`__properies`) and never pickles them; the box is assigned after it. (pysyncobj adds one int of its own, the enabled code version.) To make
that free of races we run with `autoTick=False` and start our own tick thread afterwards (the
stock auto-tick thread would start inside `__init__`, before the box exists).

Configuration (measured with pysyncobj 0.3.17; `cellstore.config.RaftTuning` holds the numbers):
`appendEntriesUseBatch=False` (0.6 ms instead of ~100 ms commits),
journal and full dump both in the data dir (journal alone wedges full restarts after
compaction), Fernet encryption with the shared secret, 0.15/0.45 s elections with a long
`connectionTimeout`, static membership.

Two corrections to pysyncobj's follower, found by the soak (`bench/soak.py`) and each pinned
by a test that fails without it (`tests/test_raft_stale_tail.py`): a follower no longer commits
its own unmatched log tail while a snapshot is sent to it (`clamp_unverified_commit`), and drops
a conflicting tail at once, so catching up by appends cannot livelock (`_drop_conflicting_tail`).
Both act on incoming messages before pysyncobj sees them.

Two guards pysyncobj lacks, for partitions that drop packets rather than reset connections
(issue #19; pinned by `tests/test_netns_partitions.py`):
* Pre-vote (Raft thesis §9.6, as etcd enables it). pysyncobj starts an election, raising its
  term, whenever its timer fires while it believes itself connected, and a TCP connection into
  a dead link looks connected for many seconds: a cut-off replica raised its term 3 -> 33 and,
  on heal, its vote requests deposed the healthy leader. Here the timer first asks the peers
  whether they would vote (`pre_vote`, with the term it would take and its log's end); a peer
  says yes only if it has not heard from a leader within the minimum election timeout and
  the log is as up to date as its own, and answering changes nothing on it. Only with a
  majority's yes does pysyncobj's own election run. Rounds are numbered and a yes counts only
  for the round it answers: one sent while a link dropped packets arrives by TCP at the heal.
  Our messages ride pysyncobj's encrypted transport and are consumed before pysyncobj sees
  them.
* Check-quorum is pysyncobj's `leaderFallbackTimeout` (a leader that has heard from no
  majority for that long steps down). What it lacks is telling the clients: commands the
  leader appended and was waiting on would hang until the gateway's timeout. On stepping down
  they are failed at once (`leader_changed`: outcome unknown, the client resends them unchanged
  to the new leader, and the command ids make that safe). pysyncobj also checks when each
  follower last answered before it reads its sockets in a tick; the leader reads them first,
  so a leader thread starved of CPU for a while does not take queued answers for silence.
  Stepping down in its own term, a leader tells the follower furthest along to stand at once
  (TimeoutNow, `_hand_over`); at any step-down its own election timer starts afresh, which
  pysyncobj never does for a leader, so it cannot stand in that same tick, skipping pre-vote.

Stalls: pysyncobj applies every committed entry in one tick, before it sends heartbeats or
reads its sockets. A replica with a backlog (a burst of large transactions, a follower
catching up) then went deaf for seconds; its peers' 0.15-0.45 s election timers fired, and with
check-quorum a leader whose followers were all catching up stepped down: on a loaded 2-core
machine, 100,000 machines and a thousand concurrent submissions made an election storm
(25 terms in 20 s). Here a tick applies entries for at most `APPLY_BUDGET_S` and leaves the
rest to the next ones (`_SyncObj__applyLogEntries`), so heartbeats and acknowledgements keep
flowing while a backlog drains; a tick slower than `SLOW_TICK_S` is logged.

Acknowledgements (issue #19, pinned by `tests/test_raft_catchup.py`): pysyncobj moved a
follower's nextIndex back to the follower's log end on every answer that raised its match
index, although the batches sent after the answered one were still on their way, so each answer
during a catch-up resent them; the follower, given a batch whose entries it already held,
truncated its log after the batch and took the entries again (`truncating already-applied log
entries`, 264 times in a 30-minute soak). Here a success only ever raises nextIndex, as etcd's
`Progress` does (`_take_acknowledgement`); a reset still walks it back. A per-tick byte budget
for catch-up sends was tried beside it and taken out: a netns soak on the build that had it
found a replica serving a history other than the committed one. Its held-back heartbeats were
the one message pysyncobj never sends (no entries, naming the optimistic nextIndex as the
previous entry, after which a follower holding more truncates its log); the cause was not
pinned down further.

Installs: a follower far behind is sent the leader's dump, which pysyncobj writes over the
follower's own `raft.dump` and loads, replacing the log with the dump's last two entries. If
the follower's own compaction child was running (forked at its applied index, later than the
installed dump's when the install is a step back), pysyncobj, seeing the child succeed, put
the child's dump over the installed one and deleted the log up to the child's index: the
follower's log then began after its applied index and it could never apply again (a netns
soak ended with a replica at applied 9,999, commit 10,508, its log starting at 10,010). Before
the last chunk of an install is put in place, the child is killed and forgotten
(`_guard_snapshot_install`).

Restarts (pinned by `tests/test_raft_restart.py`): a compaction child renames its dump into
place and the replica cuts its journal to it on a later tick. pysyncobj, restarted in between,
cleared the whole journal (the dump's entries were not its head) and clamped the commit index:
a full restart in a netns soak caught two replicas so, and they wrote over 36 committed entries.
At start the journal is now cut to the dump and the rest kept (`_SyncObj__loadDumpFile`), and a
compaction child dies with the tick thread that forked it, so no orphan renames a dump beside a
restarted replica (`_compaction_child_dies_with_replica`).

Damage: the data dir is checked before pysyncobj opens it, and every command goes into the log
sealed with its checksum (`cellstore.datadir`).

Durability: with `ReplicaConfig.fsync` the journal, the term and vote, and the dump are synced
before anything that depends on them is acknowledged (`cellstore.durability`).

Threads: pysyncobj applies entries on the tick thread. `apply_command` takes `state_lock` so the
API can read a consistent (snapshot, version) pair from another thread, and hands
(version, command, result) to the `AppliedSink` (the watch feed) under the same lock.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import orjson
import structlog
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated
from pysyncobj.monotonic import monotonic as raft_clock
from pysyncobj.syncobj import _RAFT_STATE, SyncObjExceptionWrongVer
from pysyncobj.tcp_connection import TcpConnection

from cellstore.config import ReplicaConfig
from cellstore.datadir import DamagedEntry, check_data_dir, hold, seal, unseal
from cellstore.diskfull import SpaceGuard
from cellstore.durability import DurableJournal
from cellstore.machine import Machine, MachineBox, MachineClass

log = structlog.get_logger("cellstore.raft")

# Raft-thread callback: (result bytes or None, FAIL_REASON code).
CommitCallback = Callable[[bytes | None, int], None]

# A tick's share of applying: long enough to amortise a tick, short beside the 0.15 s minimum
# election timeout, so a backlog never silences a replica's heartbeats and acknowledgements.
APPLY_BUDGET_S = 0.05
SLOW_TICK_S = 0.25

# Marks the Raft tick thread, the one that forks pysyncobj's compaction children.
_ticking = threading.local()


def _compaction_child_dies_with_replica() -> None:
    """In every child forked by a tick thread (pysyncobj's compaction): SIGKILL when that thread
    ends. An orphaned child went on and renamed its dump into place after the replica was
    killed, beside the restarted replica's own: a dump older than the journal's head, or two
    writers of one `raft.dump.tmp`. Children forked by other threads (`read_snapshot`'s, from
    API worker threads that retire when idle) are left alone: PR_SET_PDEATHSIG follows the
    forking *thread*."""
    parent = getattr(_ticking, "pid", None)
    if parent is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the replica died before the signal was armed
        os._exit(1)
    threads = f"/proc/{parent}/task"
    if os.path.isdir(threads) and not os.path.exists(f"{threads}/{_ticking.tid}"):
        # Its tick thread ended (a replica stopped) before this child, on a loaded machine,
        # ran far enough to arm the signal: end as the signal would have ended it.
        os.kill(os.getpid(), signal.SIGKILL)


os.register_at_fork(after_in_child=_compaction_child_dies_with_replica)

# Linux 6.15 and later: the longest a connection's retransmission timer may back off to
# (120 s by default, and at least 1 s). A link that drops packets for a few seconds leaves
# each end's timer backed off to seconds; after the heal, what either end sends waits for
# that timer, so a follower cut off and back heard nothing for up to 25 s, and when the leader
# was cut next, the majority's pre-vote answers waited as long (a netns soak stalled 16 s).
# Capped, a Raft link is heard again within a second of the heal.
TCP_RTO_MAX_MS = getattr(socket, "TCP_RTO_MAX_MS", 44)
RAFT_RTO_MAX_MS = 1000


def cap_retransmission_backoff(sock: socket.socket) -> bool:
    """Cap `sock`'s retransmission backoff at `RAFT_RTO_MAX_MS`; False on a kernel without
    the option, which keeps its default."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_RTO_MAX_MS, RAFT_RTO_MAX_MS)
    except OSError:
        return False
    return True


def _set_raft_socket_options(connection: TcpConnection) -> None:
    """pysyncobj's own socket options (keepalive), then the backoff cap. pysyncobj calls this
    for every socket of a Raft link: those it connects and those it accepts."""
    _set_keepalive(connection)
    sock = connection._TcpConnection__socket
    if sock is not None:
        cap_retransmission_backoff(sock)


_set_keepalive = TcpConnection.setSockoptKeepalive
TcpConnection.setSockoptKeepalive = _set_raft_socket_options

FAIL_REASON_NAMES: dict[int, str] = {
    v: k.lower() for k, v in vars(FAIL_REASON).items() if isinstance(v, int)
}


class AppliedSink(Protocol):
    """Receives the applied-command stream, on the Raft thread, under `state_lock`."""

    def applied(self, version: int, command: bytes, result: bytes) -> None: ...

    def restored(self, version: int) -> None: ...


class _NullSink:
    def applied(self, version: int, command: bytes, result: bytes) -> None:
        pass

    def restored(self, version: int) -> None:
        pass


def _owner_only(data_dir: Path, replica: str) -> None:
    """Make the data dir its owner's alone, as `omega up` makes its own (and as etcd and
    PostgreSQL want theirs): the log holds every job's spec, environments among them, and
    a task running as another user on this host must not read it."""
    mode = stat.S_IMODE(os.stat(data_dir).st_mode)
    if mode & 0o077:
        os.chmod(data_dir, 0o700)
        log.warning(
            "data_dir_permissions_tightened",
            replica=replica,
            data_dir=str(data_dir),
            was=f"{mode:04o}",
            now="0700",
        )


def _write_snapshot_and_exit(machine: Machine, read_end: int, write_end: int) -> None:
    """In `read_snapshot`'s forked child: the snapshot down the pipe, then `os._exit` (no
    atexit handlers, no flushing of the parent's buffers, no other thread's locks)."""
    code = 1
    try:
        os.close(read_end)
        view = memoryview(machine.snapshot())
        while view:
            view = view[os.write(write_end, view) :]
        code = 0
    finally:
        os._exit(code)


class ApplyStats:
    """Counters written by the Raft thread, read (racily, fine for figures) by the API."""

    __slots__ = ("applied", "apply_seconds")

    def __init__(self) -> None:
        self.applied = 0
        self.apply_seconds = 0.0


def syncobj_conf(
    config: ReplicaConfig, on_state_changed: Callable[[int, int], None] | None = None
) -> SyncObjConf:
    """The pysyncobj configuration for a replica (see the module docstring for why)."""
    t = config.raft
    data_dir = config.data_dir
    return SyncObjConf(
        autoTick=False,
        appendEntriesUseBatch=False,
        # Without it pysyncobj listens on 0.0.0.0: Raft must stay on the address given.
        bindAddress=config.raft_address,
        journalFile=str(data_dir / "raft.journal"),
        fullDumpFile=str(data_dir / "raft.dump"),
        password=config.secret,
        raftMinTimeout=t.election_min_s,
        raftMaxTimeout=t.election_max_s,
        appendEntriesPeriod=t.append_entries_period_s,
        connectionTimeout=t.connection_timeout_s,
        connectionRetryTime=t.connection_retry_s,
        leaderFallbackTimeout=t.leader_fallback_s,
        logCompactionMinEntries=t.compaction_min_entries,
        logCompactionMinTime=t.compaction_min_time_s,
        commandsQueueSize=t.commands_queue_size,
        dynamicMembershipChange=False,
        useFork=True,
        # With autoTick off, SyncObj.__init__ spins on bind until it succeeds: bound it (5 s),
        # so a taken port fails the process instead of hanging it.
        bindRetryTime=0.2,
        maxBindRetries=25,
        commandsWaitLeader=True,
        onStateChanged=on_state_changed,
    )


def clamp_unverified_commit(message: dict[str, Any], own_commit_index: int) -> None:
    """Keep a follower from committing log entries the leader has not vouched for.

    Raft lets a follower advance its commit index only over entries the AppendEntries it is
    handling has just matched against the leader's log. pysyncobj 0.3.17 also advances it, to
    `min(leader commit, my last index)`, on an append_entries that carries no entries to match:
    a snapshot chunk still in flight, or `serialized: None` while the leader's own dump is
    being written. A follower holding a stale tail (entries it took as leader and never got
    committed, e.g. while cut off) then applies that tail: replicas diverge and commands that
    were never committed reach the watch feed (found by `python -m bench.soak`; the same bug
    as scylladb#9965, rabbitmq/ra#508, microsoft/CCF#8172). Such a message may still say who
    leads and what term it is; only its commit index is capped at the follower's own. The
    last chunk of a snapshot is left alone: installing it replaces the log with the
    snapshot's, which the leader has committed."""
    if "prevLogIdx" in message:
        return
    serialized = message.get("serialized")
    installs_snapshot = serialized is not None and bool(serialized[2])
    if not installs_snapshot and message.get("commit_index", 0) > own_commit_index:
        message["commit_index"] = own_commit_index


class ReplicatedMachine(SyncObj):
    """A Raft member replicating one `Machine`. Start with `start()`, stop with `stop()`."""

    @property
    def _SyncObj__raftElectionDeadline(self) -> float:
        """pysyncobj's election timer, as pysyncobj reads it: never due while pre-vote holds the
        election back (no round won, no TimeoutNow being obeyed), so pysyncobj cannot stand on
        its own. It checked its timer inside the tick, a moment after `_hold_election_for_pre_vote`
        had found it not yet due; a timer that fell due in between stood without pre-vote, and
        a cut-off replica's vote request, delivered at the heal, moved the leader (a netns soak,
        seed 1205). What pysyncobj writes is the timer `_hold_election_for_pre_vote` reads."""
        held = (
            self._pre_vote
            and not self._election_won_pre_vote
            and not getattr(self, "_SyncObj__transferInProgress", False)
            and bool(getattr(self, "_SyncObj__otherNodes", None))
        )
        return math.inf if held else self._election_deadline

    @_SyncObj__raftElectionDeadline.setter
    def _SyncObj__raftElectionDeadline(self, value: float) -> None:
        self._election_deadline = value

    def __init__(
        self,
        config: ReplicaConfig,
        sink: AppliedSink | None = None,
        machine_class: MachineClass | None = None,
    ) -> None:
        # Everything assigned before SyncObj.__init__ is internal: never pickled.
        self.replica_id = config.id
        self.machine_class: MachineClass = machine_class or config.machine_class
        self.state_lock = threading.Lock()
        self.stats = ApplyStats()
        self._sink: AppliedSink = sink or _NullSink()
        self._box_seen: MachineBox | None = None
        self._tick_period = 0.05
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._log = log.bind(replica=config.id)
        self._pre_vote = config.raft.pre_vote
        self._election_min_s = config.raft.election_min_s
        self._heard_leader_at = 0.0  # `raft_clock`; when an append_entries of our term came
        # (term asked for, round number, yes-sayers); rounds are numbered because every round
        # a cut-off replica starts asks for the same term (`_count_pre_vote`).
        self._pre_vote_round: tuple[int, int, set[Any]] | None = None
        self._pre_vote_rounds = 0
        self._led_term: int | None = None  # the term this replica last became leader in
        self._election_won_pre_vote = False
        self._election_deadline = 0.0  # pysyncobj's election timer (see the property below)
        self._durable: DurableJournal | None = None  # set once the journal exists (below)
        self._space: SpaceGuard | None = None  # likewise
        self._held_acks: list[tuple[Any, Any]] = []  # fsync: acknowledgements not yet sent
        self._send_unheld: Callable[[Any, Any], Any] = lambda node, message: None
        os.makedirs(config.data_dir, mode=0o700, exist_ok=True)
        _owner_only(config.data_dir, config.id)
        # DataDirInUse, before anything is read: another replica writes this journal.
        self._held = hold(config.data_dir, "replica.lock", "replica")
        check_data_dir(config.data_dir)  # DamagedDataDir: refused before pysyncobj reads it
        others = [p for p in config.peers_raft if p != config.raft_address]
        super().__init__(config.raft_address, others, syncobj_conf(config, self._on_state_changed))
        self._guard_raft_messages()
        self._guard_snapshot_install()
        if config.fsync:
            self._durable = DurableJournal(self, config.data_dir)
            self._sync_before_acknowledging()
        # After DurableJournal: its term-and-vote store is the one made to wait for space.
        self._space = SpaceGuard(self, self._stopping, config.id)
        # The one persisted attribute (see module docstring).
        self._box = MachineBox(self.machine_class())
        self._box_seen = self._box

    def _guard_raft_messages(self) -> None:
        """Route every incoming Raft message through two corrections to pysyncobj 0.3.17 first:
        `clamp_unverified_commit` and `_drop_conflicting_tail` (see each). The library has no
        hook for this, so the transport's one callback is re-pointed and two private members
        are used; that is why `pysyncobj` is pinned to that exact version."""
        transport = self._SyncObj__transport
        deliver = transport._onMessageReceivedCallback

        def guarded(node: Any, message: Any) -> None:
            kind = message.get("type") if isinstance(message, dict) else None
            if kind == "append_entries":
                if message.get("term", -1) >= self.raftCurrentTerm:
                    self._heard_leader_at = raft_clock()
                    self._election_won_pre_vote = False  # a leader after all: stand no more
                clamp_unverified_commit(message, self.raftCommitIndex)
                self._drop_conflicting_tail(message)
            elif kind == "pre_vote":
                self._answer_pre_vote(node, message)
                return
            elif kind == "pre_vote_response":
                self._count_pre_vote(node, message)
                return
            elif kind == "next_node_idx":
                self._take_acknowledgement(node, message, deliver)
                return
            deliver(node, message)

        transport.setOnMessageReceivedCallback(guarded)

    def _guard_snapshot_install(self) -> None:
        """Abandon this replica's own log compaction before a snapshot from the leader is
        installed (see the module docstring, "Installs")."""
        serializer = self._SyncObj__serializer
        receive = serializer.setTransmissionData

        def installing(data: Any) -> bool:
            if data is not None and data[2]:  # the last chunk: it is about to be installed
                self._abandon_compaction()
            return bool(receive(data))

        serializer.setTransmissionData = installing

    def _trim_journal_to_dump(
        self, first: tuple[Any, int, int], last: tuple[Any, int, int]
    ) -> None:
        raft_log = self._SyncObj__raftLog
        if len(raft_log) < 2:
            return
        at = first[1] - raft_log[0][1]
        if at <= 0 or at + 1 >= len(raft_log):
            return  # at the head already, or the journal does not reach the dump
        if raft_log[at][1:] != first[1:] or raft_log[at + 1][1:] != last[1:]:
            return  # another history: pysyncobj replaces the log with the dump's
        raft_log.deleteEntriesTo(at)
        self._log.warning(
            "journal_trimmed_to_dump", dump_index=last[1], kept_after=len(raft_log) - 2
        )

    def _abandon_compaction(self) -> None:
        """Kill and reap the forked child writing this replica's own dump, if one is running,
        and forget it, so it neither replaces the dump about to be installed nor, on success,
        has pysyncobj delete the log up to its index."""
        serializer = self._SyncObj__serializer
        pid = serializer._Serializer__pid
        if pid <= 0:
            return
        # It may have exited already: reaped all the same.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        serializer._Serializer__pid = 0
        self._log.info("compaction_abandoned", pid=pid, reason="snapshot_install")

    def _take_acknowledgement(
        self, node: Any, message: dict[str, Any], deliver: Callable[[Any, Any], None]
    ) -> None:
        """A follower's answer to an append, with nextIndex never moved back by a success.

        pysyncobj 0.3.17 sets nextIndex to the follower's log end on every answer that raises
        its match index, although the batches sent after the answered one are on their way: each answer
        during a catch-up made the leader send them again, and the follower truncate and
        re-journal what it had (applied entries among them). etcd's `Progress.MaybeUpdate`
        only ever raises Next on a success; so do we. A `reset` answer (the follower's log
        does not hold the entry before a batch: a conflict, or messages lost to a reconnect)
        still moves it back, which is what repairs a nextIndex that ran ahead."""
        next_index = self._SyncObj__raftNextIndex
        before = next_index.get(node)
        deliver(node, message)
        if before is None or message.get("reset") or not message.get("success"):
            return
        if self._SyncObj__raftState == _RAFT_STATE.LEADER and next_index.get(node, before) < before:
            next_index[node] = before

    def _sync_before_acknowledging(self) -> None:
        """With `fsync` on, a follower's acknowledgements of entries are held back until the
        end of the tick, then sent after one sync (`cellstore.durability`): one sync per tick,
        not per entry, as a leader sends one append per command. (The leader's side is the
        sync before each tick.)"""
        transport = self._SyncObj__transport
        send = transport.send
        held = self._held_acks

        def held_send(node: Any, message: Any) -> Any:
            if isinstance(message, dict) and message.get("type") == "next_node_idx":
                held.append((node, message))
                return True
            return send(node, message)

        transport.send = held_send
        self._send_unheld = send

    def _release_acks(self) -> None:
        """Sync what the tick wrote, then send the acknowledgements held back meanwhile."""
        durable = self._durable
        assert durable is not None
        durable.sync()
        held, self._held_acks[:] = list(self._held_acks), []
        for node, message in held:
            self._send_unheld(node, message)

    def _drop_conflicting_tail(self, message: dict[str, Any]) -> None:
        """Delete this follower's log from `prevLogIdx` on when its entry there has another
        term than the leader's.

        pysyncobj answers such a conflict with "step back one entry", but the leader has
        already sent the following batches, and each of those is answered "my log ends at N"
        (N past the conflict), which moves the leader forward again: a follower whose unmatched
        tail is longer than one batch never catches up by appends, only once the leader's log
        compaction forces a snapshot (minutes; with the third replica down the cell cannot
        commit meanwhile: found by `python -m bench.soak`). Raft allows the deletion: an entry
        whose term differs from the leader's at the same index was never committed, nor was
        anything after it (Log Matching), so it cannot be counted by any leader. The follower's
        own commit index and applied index bound it regardless."""
        if "prevLogIdx" not in message or "transmission" in message:
            return
        if message.get("term", -1) < self.raftCurrentTerm:
            return  # pysyncobj ignores a stale leader's message; so do we
        prev = message["prevLogIdx"]
        if prev <= max(self.raftCommitIndex, self.raftLastApplied):
            return
        found = self._SyncObj__getEntries(prev, 1)
        if found and found[0][2] != message["prevLogTerm"]:
            self._SyncObj__deleteEntriesFrom(prev)

    # -- pre-vote and stepping down (see the module docstring) ---------------------------------

    def _hold_election_for_pre_vote(self) -> None:
        """Before each tick: if pysyncobj's election timer has fired, and no pre-vote has been
        won for it, re-arm the timer and ask the peers instead (on the tick thread)."""
        if not self._pre_vote or self._SyncObj__raftState == _RAFT_STATE.LEADER:
            self._pre_vote_round = None
            return
        now = raft_clock()  # pysyncobj's timers' clock: not time.monotonic's (off by ~0.25 s here)
        if self._election_deadline >= now:
            return
        others = self._SyncObj__otherNodes
        if self._election_won_pre_vote or not others or self._SyncObj__transferInProgress:
            return  # pysyncobj runs the election on this tick
        self._election_deadline = now + self._SyncObj__generateRaftTimeout()
        term = self.raftCurrentTerm + 1
        self._pre_vote_rounds += 1
        self._pre_vote_round = (term, self._pre_vote_rounds, set())
        ask = {
            "type": "pre_vote",
            "term": term,
            "round": self._pre_vote_rounds,
            "last_log_index": self._SyncObj__getCurrentLogIndex(),
            "last_log_term": self._SyncObj__getCurrentLogTerm(),
        }
        transport = self._SyncObj__transport
        for node in others:
            transport.send(node, ask)

    def _answer_pre_vote(self, node: Any, message: dict[str, Any]) -> None:
        """Would we vote for this candidate? Yes only if it asks for a term above ours, no
        leader has been heard from lately (nor is this replica one), and its log is at least
        as up to date as ours.

        A yes also puts off this replica's own candidacy by a fresh election timeout, as
        granting a vote does in Raft, and drops its own round, under way or won. Both followers of a
        dead leader time out within one tick (50 ms) of each other about a third of the time;
        the first one's ask woke the other, which granted it and then asked for the same term
        itself, each won the other's yes, and both stood: a split vote, and a failover of
        0.6 s instead of 0.25 s (`bench.store --failovers`, 2 of 6)."""
        mine = (self._SyncObj__getCurrentLogTerm(), self._SyncObj__getCurrentLogIndex())
        theirs = (message.get("last_log_term", -1), message.get("last_log_index", -1))
        granted = (
            message.get("term", -1) > self.raftCurrentTerm
            and self._SyncObj__raftState != _RAFT_STATE.LEADER
            and raft_clock() - self._heard_leader_at >= self._election_min_s
            and theirs >= mine
        )
        if granted:
            self._log.info("pre_vote_granted", term=message.get("term"), to=str(node))
            self._election_deadline = raft_clock() + self._SyncObj__generateRaftTimeout()
            self._pre_vote_round = None
            # A round won in the same tick is given up too: kept, it would let this replica
            # stand a timeout later on a pre-vote that no longer says anything.
            self._election_won_pre_vote = False
        self._SyncObj__transport.send(
            node,
            {
                "type": "pre_vote_response",
                "term": message.get("term"),
                "round": message.get("round"),
                "granted": granted,
            },
        )

    def _count_pre_vote(self, node: Any, message: dict[str, Any]) -> None:
        """Count a yes to the round under way, and only to it.

        A replica cut off asks for the same term in every round (its term does not move), and
        a yes sent while its link dropped packets is delivered by TCP once the link heals,
        seconds late: counted by term alone, that stale yes won a pre-vote the peer would now
        refuse, and the election it started deposed a healthy leader (a netns soak, seed
        1204). An answer from a replica of the release before has no round and is judged by
        term alone, as it was then."""
        current = self._pre_vote_round
        if current is None or not message.get("granted"):
            return
        term, number, yes = current
        if message.get("term") != term or term != self.raftCurrentTerm + 1:
            return  # an answer to an older round, or our term moved on since
        if message.get("round", number) != number:
            return  # a yes to an earlier round of the same term
        yes.add(node)
        if len(yes) + 1 > (len(self._SyncObj__otherNodes) + 1) / 2:
            self._pre_vote_round = None
            self._election_won_pre_vote = True
            self._SyncObj__raftElectionDeadline = 0.0
            self._log.info("pre_vote_won", term=term)

    def _on_state_changed(self, old: int, new: int) -> None:
        """On the tick thread: when this replica stops leading, fail what it was waiting to
        commit, so clients resend to the new leader at once instead of timing out. Elections
        are logged too: which replica stood, from which term, is what explains a leader change
        after the fact."""
        if new == _RAFT_STATE.CANDIDATE:
            self._election_won_pre_vote = False  # spent on this election
            # pysyncobj raises the term just after this call: the term stood from.
            self._log.info("standing", term=self.raftCurrentTerm, pre_vote=self._pre_vote)
        elif new == _RAFT_STATE.LEADER:
            self._led_term = self.raftCurrentTerm
            self._log.info("leading", term=self.raftCurrentTerm)
        if old != _RAFT_STATE.LEADER or new == _RAFT_STATE.LEADER:
            return
        waiting = self._SyncObj__commandsWaitingCommit
        pending = [callback for entries in waiting.values() for _, callback in entries]
        waiting.clear()
        # pysyncobj leaves a leader's election timer where it was when it was elected, long
        # past; right after this call, in the same tick, it would stand for the next term at
        # once, skipping pre-vote. A leader deposed by a higher term whose log was longer than
        # the candidate's (so it refused its vote) did just that while its outbound link was
        # cut, and its vote request, delivered by TCP at the heal, deposed the healthy leader
        # (a netns soak, seed 1205). Its timer starts now, and pre-vote guards it when it fires.
        self._SyncObj__raftElectionDeadline = raft_clock() + self._SyncObj__generateRaftTimeout()
        handed_to = None
        if self.raftCurrentTerm == self._led_term:
            handed_to = self._hand_over()
        self._log.info(
            "stepped_down",
            term=self.raftCurrentTerm,
            failed_in_flight=len(pending),
            handed_to=handed_to,
        )
        for callback in pending:
            callback(None, FAIL_REASON.LEADER_CHANGED)

    def _hand_over(self) -> str | None:
        """Check-quorum has just made this leader step down in its own term: tell the
        follower that had acknowledged the most to stand at once (Raft's TimeoutNow, which
        pysyncobj's followers obey from the leader they follow, skipping pre-vote).

        A leader whose inbound link drops packets still reaches its followers, so they keep
        hearing its heartbeats until it steps down, 0.75 s in, and only then start their own
        0.15-0.45 s election timers: a writer waited up to 1.05 s on such a cut. Told at
        once, one follower stands with the others' timers far off, and is elected within a
        round trip. Only one is told, so two do not split the vote. If the message cannot get
        through (the link is down both ways), the timers run as before; if TCP delivers it
        late, the follower has a new leader or term by then, and pysyncobj ignores it. Not
        sent when a higher term made this leader step down: a candidate is already standing."""
        match = self._SyncObj__raftMatchIndex
        connected = self._SyncObj__connectedNodes
        candidates = [node for node in self._SyncObj__otherNodes if node in connected]
        if not candidates:
            return None
        node = max(candidates, key=lambda n: (match.get(n, 0), str(n)))
        self._SyncObj__transport.send(node, {"type": "timeout_now", "term": self.raftCurrentTerm})
        return str(node)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the Raft tick thread (loads the dump and replays the journal on first ticks)."""
        self._thread = threading.Thread(
            target=self._tick_loop, name=f"raft-{self.replica_id}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop ticking, close connections and the journal. Idempotent."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _tick_loop(self) -> None:
        _ticking.pid, _ticking.tid = os.getpid(), threading.get_native_id()
        try:
            while not self._stopping.is_set():
                try:
                    self._hold_election_for_pre_vote()
                    if self._durable is not None:
                        self._durable.sync()  # what this leader appended, before it counts it
                    began, applied = time.perf_counter(), self.stats.applied
                    # With a backlog left by the apply budget, go round again without waiting.
                    backlog = self.raftCommitIndex > self.raftLastApplied
                    if self._SyncObj__raftState == _RAFT_STATE.LEADER:
                        # Read what the followers sent before pysyncobj's check-quorum looks at
                        # when each last answered: it reads sockets only at the end of a tick,
                        # so a leader thread starved for a while would count answers queued
                        # in its sockets as silence and step down.
                        self._poller.poll(0)
                    self.doTick(0.0 if backlog else self._tick_period)
                    took = time.perf_counter() - began
                    if took > SLOW_TICK_S + self._tick_period:
                        self._log.info(
                            "slow_tick",
                            seconds=round(took, 3),
                            applied=self.stats.applied - applied,
                            backlog=self.raftCommitIndex - self.raftLastApplied,
                        )
                    if self._durable is not None:
                        self._release_acks()
                except Exception:
                    self._log.exception("raft_tick_failed")
                    time.sleep(self._tick_period)
        finally:
            self.destroy()

    def _SyncObj__loadDumpFile(self, clearJournal: bool) -> None:
        """pysyncobj's own, except that at start (`clearJournal` false: this replica's own
        dump, not one installed from the leader) the journal is trimmed to the dump, not
        cleared.

        A compaction child renames its dump into place and exits; the log is cut to the dump's
        index only on a later tick of the parent. A replica killed in between (or whose child,
        an orphan by then, finished after it died) restarts with a dump whose two entries lie
        inside the journal, not at its head, and pysyncobj 0.3.17 then clears the whole
        journal: committed entries after the dump were gone on that replica. A full restart of
        the seed-1206 netns soak caught two replicas so, and they elected a leader that wrote
        over committed entries 64,812-64,847. Here, when the journal holds the dump's two
        entries (same index and term: the same entries, by Raft's log matching), it is cut just
        before them, as the parent would have done, and pysyncobj keeps what follows. An
        installed dump replaces the journal: that load is left as it was."""
        if clearJournal:
            super()._SyncObj__loadDumpFile(clearJournal)
            return
        serializer = self._SyncObj__serializer
        deserialize = serializer.deserialize

        def trimming() -> Any:
            data = deserialize()
            self._trim_journal_to_dump(data[2], data[1])
            return data

        serializer.deserialize = trimming
        try:
            super()._SyncObj__loadDumpFile(clearJournal)
        finally:
            serializer.deserialize = deserialize

    def _SyncObj__applyLogEntries(self) -> bool:
        """pysyncobj 0.3.17's `__applyLogEntries`, applying for at most `APPLY_BUDGET_S`: the
        rest stays committed and unapplied for the next tick (see the module docstring).
        Returns whether to send append entries now, as the original does."""
        commit_index = self._SyncObj__raftCommitIndex
        if commit_index <= self._SyncObj__raftLastApplied:
            return False
        deadline = time.perf_counter() + APPLY_BUDGET_S
        waiting = self._SyncObj__commandsWaitingCommit
        entries = self._SyncObj__getEntries(
            self._SyncObj__raftLastApplied + 1, commit_index - self._SyncObj__raftLastApplied
        )
        for entry in entries:
            try:
                result = self._SyncObj__doApplyCommand(entry[0])
            except SyncObjExceptionWrongVer as exc:
                # Never advance past an entry this build cannot apply (pysyncobj's own loop
                # went on to the next entries without counting this one).
                self._log.error("raft_wrong_code_version", requested=exc.ver)
                break
            for term, callback in waiting.pop(entry[1], []):
                if term == entry[2]:
                    callback(result, FAIL_REASON.SUCCESS)
                else:
                    callback(None, FAIL_REASON.DISCARDED)
            self._SyncObj__raftLastApplied += 1
            if time.perf_counter() > deadline:
                break
        return True

    # -- the replicated command ----------------------------------------------------------------

    @replicated
    def apply_command(self, command: str) -> bytes:
        """Apply one sealed, wire-encoded command (runs on the Raft thread on every replica).
        One whose checksum fails is never applied: the replica exits (`cellstore.datadir`)."""
        try:
            encoded = unseal(command).encode()
        except DamagedEntry as exc:
            self._log.critical("damaged_log_entry", error=str(exc))
            os._exit(3)
        with self.state_lock:
            machine = self._live_machine_locked()
            started = time.perf_counter()
            try:
                result = machine.apply_encoded(encoded)
            except Exception as exc:  # the contract says never; keep Raft alive regardless
                self._log.critical("machine_apply_raised", version=machine.version, error=repr(exc))
                result = orjson.dumps(
                    {"error": {"code": "internal", "message": "command raised", "field": None}}
                )
            self.stats.apply_seconds += time.perf_counter() - started
            self.stats.applied += 1
            self._sink.applied(machine.version, encoded, result)
        return result

    def submit(self, command: bytes, callback: CommitCallback) -> None:
        """Queue one command for replication without blocking; `callback(result, reason)` runs
        on the Raft thread once it is applied here (reason 0) or has failed (reason != 0). It
        may also run synchronously, on the caller's thread, if the queue is full."""
        self.apply_command(seal(command.decode()), callback=callback)

    # -- reads ---------------------------------------------------------------------------------

    def _live_machine_locked(self) -> Machine:
        box = self._box
        machine = box.materialise(self.machine_class)
        if box is not self._box_seen:
            # pysyncobj replaced the box: a dump was loaded at start or installed from the leader.
            self._box_seen = box
            self._log.info("machine_restored", version=machine.version)
            self._sink.restored(machine.version)
        return machine

    def read_snapshot(self) -> tuple[int, bytes]:
        """A consistent (version, snapshot bytes) pair; call it from a worker thread.

        Serialised in a forked child, as pysyncobj's compaction is: applies are blocked only
        for the fork, not for the serialising, which took 2 s at 100,000 tasks and would
        have kept the Raft thread from applying (and so from ticking) for ~20 s at a
        million, long enough for several elections. The child inherits a quiescent copy of
        the state (we hold the state lock as it forks), writes the bytes to a pipe and exits
        without running anything else of the parent's."""
        read_end, write_end = os.pipe()
        try:
            with self.state_lock:
                machine = self._live_machine_locked()
                version = machine.version
                pid = os.fork()
                if pid == 0:  # pragma: no cover - the child (coverage does not follow it)
                    _write_snapshot_and_exit(machine, read_end, write_end)
        except BaseException:
            os.close(read_end)
            os.close(write_end)
            raise
        os.close(write_end)
        chunks = []
        with os.fdopen(read_end, "rb") as pipe:
            while chunk := pipe.read(1 << 20):
                chunks.append(chunk)
        _, status = os.waitpid(pid, 0)
        if status != 0:
            raise RuntimeError(f"snapshot child exited with status {status}")
        return version, b"".join(chunks)

    def with_machine(self, fn: Callable[[Machine], Any]) -> Any:
        """Run `fn(machine)` under the state lock (for read endpoints; keep `fn` short)."""
        with self.state_lock:
            return fn(self._live_machine_locked())

    def peek(self, fn: Callable[[Machine], Any]) -> Any:
        """`fn(machine)` without the lock while the machine in hand is current: for a read of
        one dict entry that may race an apply (a request's token); else as `with_machine`."""
        box = self._box
        if box is self._box_seen and box.machine is not None:
            return fn(box.machine)
        return self.with_machine(fn)

    def current_version(self) -> int:
        """The machine's version now; does not wait for a snapshot being taken. (A method, not
        a property: SyncObj.__init__ getattr()s every attribute while the box does not exist.)"""
        box = self._box
        if box is self._box_seen and box.machine is not None:
            return box.machine.version  # a racy read of one int, without the lock
        with self.state_lock:
            return self._live_machine_locked().version

    def disk_full(self) -> dict[str, Any]:
        """Whether the Raft thread is waiting for space in the data dir now, and how many times
        it has (`cellstore.diskfull`); racy reads, for status."""
        space = self._space
        return {"waiting": space.full, "stalls": space.stalls} if space else {}

    def journal_syncs(self) -> int:
        """How many times the journal was synced (0 unless `fsync` is on); racy, for figures."""
        return self._durable.syncs if self._durable is not None else 0

    def raft_status(self) -> dict[str, Any]:
        """Leader (Raft address), term, commit index, role: cheap, racy reads of Raft state."""
        leader = self._getLeader()
        return {
            "leader_raft": leader.address if leader is not None else None,
            "is_leader": self._isLeader(),
            "term": self.raftCurrentTerm,
            "commit_index": self.raftCommitIndex,
            "last_applied_index": self.raftLastApplied,
            "ready": self.isReady(),
            "log_entries": self._getRaftLogSize(),
        }
