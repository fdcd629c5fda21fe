"""The replica's configuration: one frozen value built by the CLI and passed to `run_replica`.

`replica_document` is the one place a replica's config document (the JSON file `python -m
cellstore --config` reads) is built from the cell's address lists, for `omega up`, `omega
store` and the test harness alike; `free_ports` picks the ports of a cell on one host.
"""

from __future__ import annotations

import functools
import importlib
import random
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from cellstore.machine import MachineClass


def import_object(path: str) -> Any:
    """Import `"package.module:attr"` and return the attribute."""
    module_name, _, attr = path.partition(":")
    if not attr:
        raise ValueError(f"expected 'module:attribute', got {path!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


# Where `free_ports` looks, unless the kernel's ephemeral range leaves it too little room.
LOWEST_PORT = 10_000
_FALLBACK_EPHEMERAL = (32_768, 60_999)


def ephemeral_range() -> tuple[int, int]:
    """The ports the kernel hands out to outgoing connections (`ip_local_port_range`)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return _FALLBACK_EPHEMERAL


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct ports free now on `host` (all held open together, so they differ; free
    only until someone else binds them), drawn at random below the kernel's ephemeral range.

    A port the kernel picks (`bind(0)`) lies in that range, from which every outgoing
    connection on the host also takes its local port: one could take a port handed out here
    before the process meant to listen on it binds it, and that process then fails to start
    (a replica's `BindError`, seen under parallel tests). Below the range only a listener
    that asks for the port by number can take it."""
    low = LOWEST_PORT
    high = ephemeral_range()[0] - 1
    rng = random.SystemRandom()
    socks: list[socket.socket] = []
    try:
        tries = 0
        while len(socks) < n and high - low >= 1000 and tries < 50 * n:
            tries += 1
            s = socket.socket()
            try:
                s.bind((host, rng.randint(low, high)))
            except OSError:  # taken (or, below, by one of ours): draw again
                s.close()
                continue
            socks.append(s)
        while len(socks) < n:  # a host whose ephemeral range leaves no room below it
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def replica_document(
    index: int,
    peers_api: Sequence[str],
    peers_raft: Sequence[str],
    /,
    *,
    data_dir: Path | str,
    token: str,
    secret: str,
    machine: str,
    **fields: Any,
) -> dict[str, Any]:
    """The config document of replica `index` of a cell whose replicas have the API addresses
    `peers_api` and the Raft addresses `peers_raft` (`HOST:PORT`, index for index, as this
    replica names its peers; it binds to its own). `machine` is an import path; `fields` sets
    any other `ReplicaConfig` field (`extensions`, `raft` tuning, `commit_timeout_s`, ...)."""
    api_host, api_port = peers_api[index].rsplit(":", 1)
    raft_host, raft_port = peers_raft[index].rsplit(":", 1)
    return {
        "id": f"r{index}",
        "api_host": api_host,
        "api_port": int(api_port),
        "raft_host": raft_host,
        "raft_port": int(raft_port),
        "peers_raft": list(peers_raft),
        "peers_api": list(peers_api),
        "data_dir": str(data_dir),
        "token": token,
        "secret": secret,
        "machine": machine,
        **fields,
    }


@attrs.frozen(kw_only=True)
class RaftTuning:
    """pysyncobj knobs. The defaults, measured on the 2-core development machine with pysyncobj
    0.3.17: elections of 0.15-0.45 s with a long `connection_timeout_s` fail over in ~0.2 s
    instead of ~1.7 s (the idle link between followers is checked only on send); compaction
    every 5,000 entries or 300 s, into a dump written by a forked child (`cellstore.raft`)."""

    election_min_s: float = 0.15
    election_max_s: float = 0.45
    append_entries_period_s: float = 0.04
    connection_timeout_s: float = 10.0
    connection_retry_s: float = 0.5
    leader_fallback_s: float = 0.75
    compaction_min_entries: int = 5000
    compaction_min_time_s: float = 300.0
    commands_queue_size: int = 100_000
    # Ask peers before raising the term for an election (`cellstore.raft`): a replica cut off
    # and back cannot depose a healthy leader. Off only to show what it prevents.
    pre_vote: bool = True


@attrs.frozen(kw_only=True)
class ReplicaConfig:
    """Everything one replica process needs.

    `peers_raft` and `peers_api` list every replica of the cell (this one included) in the same
    order, so index i of one names the same replica as index i of the other.
    """

    id: str
    api_host: str
    api_port: int
    raft_host: str
    raft_port: int
    peers_raft: tuple[str, ...]
    peers_api: tuple[str, ...]
    data_dir: Path = attrs.field(converter=Path)
    token: str = attrs.field(repr=False)
    secret: str = attrs.field(repr=False)
    machine_class: MachineClass
    raft: RaftTuning = RaftTuning()
    # Each is called as `extension(router, replica)` before serving: where typed endpoints
    # register (see `cellstore.api.Replica` and `cellstore.http.Router`).
    extensions: tuple[Callable[..., None], ...] = ()
    max_body_bytes: int = 8 * 1024 * 1024
    watch_buffer: int = 200_000
    commit_timeout_s: float = 10.0
    max_in_flight: int = 4000  # commands submitted to Raft and not yet acknowledged
    # Sync the journal before acknowledging (`cellstore.durability`): an acknowledged write
    # then survives the loss of power of every host, at the cost `bench.store --fsync` shows.
    fsync: bool = False
    # The API's certificate and key (PEM files, `cellstore.tls`); without them the replica
    # refuses to start unless `insecure`, which serves plain http and says so in its log.
    tls_cert: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    tls_key: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    insecure: bool = False

    @property
    def raft_address(self) -> str:
        return f"{self.raft_host}:{self.raft_port}"

    @property
    def api_address(self) -> str:
        return f"{self.api_host}:{self.api_port}"

    def api_address_of(self, raft_address: str | None) -> str | None:
        """The API address of the replica whose Raft address is `raft_address`."""
        if raft_address is None:
            return None
        try:
            return self.peers_api[self.peers_raft.index(raft_address)]
        except ValueError:
            return None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReplicaConfig:
        """Build from a plain dict (the `python -m cellstore --config FILE` format);
        `machine` is an import path `"module:Class"`; each of `extensions` is one too, or
        `{"use": "module:function", **keyword_arguments}` to pass it settings."""
        data = dict(data)
        machine_class = import_object(data.pop("machine"))
        raft = RaftTuning(**data.pop("raft", {}))
        data["extensions"] = tuple(_extension(e) for e in data.pop("extensions", ()))
        data["peers_raft"] = tuple(data["peers_raft"])
        data["peers_api"] = tuple(data["peers_api"])
        return cls(machine_class=machine_class, raft=raft, **data)


def _extension(entry: str | dict[str, Any]) -> Callable[..., None]:
    """An extension named by its import path, or `{"use": path, **keywords}`: the extension
    with those keyword arguments bound (how a service takes its settings from the config)."""
    if isinstance(entry, str):
        return import_object(entry)
    keywords = dict(entry)
    return functools.partial(import_object(keywords.pop("use")), **keywords)
