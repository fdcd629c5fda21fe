"""A cell whose processes each live on a host of their own (`harness.hosts.Hosts`), started
with the README's command lines for several hosts, and the soak's bed on it.

`NetnsCell` runs replica i on host i with `omega store --id I --peer ... --token-file
--secret-file` (its own address, the same ports everywhere, a skewed clock if asked);
`NetnsSchedulers` runs `omega scheduler --kind batch` and `NetnsAgents` runs `omega agent`
(real or hollow), each on a host of its own with `OMEGA_ADDR` naming every replica.
`netns_bed` puts them together for `harness.faults.run_scenario(netns=True)`, with faults the
loopback soak cannot make: one-way partitions, lossy and slow links, agent kills.
"""

from __future__ import annotations

import contextlib
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import trio

from cellstore.tls import issue
from harness.cluster import LocalCluster, cell_options
from harness.faults import FAULT_WEIGHTS, Bed, Faults, ProcessGroup, SchedulerProcs, Workload
from harness.hosts import Hosts, skewed_python_clock

# Replicas are hosts 0-2; then the scheduler processes, then the agents.
SCHEDULER_HOSTS = {"batch-a": 3, "batch-b": 4}
AGENT_HOSTS = {"hollow": 5, "real-0": 6}
HOSTS = 7
# Per replica: r0 keeps the host's clock, r1 runs ahead, r2 behind.
SKEWS = {1: 30.0, 2: -15.0}
# Long enough that a leader change or a full restart (each restarts every machine's timer)
# costs no machine; short enough that a heartbeat lost for real would show.
SOAK_HEARTBEAT_TIMEOUT_S = 30.0


class NetnsCell(LocalCluster):
    """A 3-replica cell, replica i on host i, each started with the README's command line for
    several hosts (`omega store --id I --peer API/RAFT ... --token-file --secret-file`): its
    own address, the same ports everywhere. `skews[i]` moves replica i's wall clock by that
    many seconds."""

    def __init__(
        self,
        base: Path,
        hosts: Hosts,
        *,
        skews: dict[int, float] | None = None,
        heartbeat_timeout_s: float = 60.0,
    ) -> None:
        super().__init__(base, 3, tls=True, **cell_options(heartbeat_timeout_s=heartbeat_timeout_s))
        # The README's several-hosts set-up: https, with a certificate naming the hosts.
        self.certificate = issue(base / "tls", base / "tls", "hosts", hosts.addresses[:3])
        self.hosts = hosts
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.api = [f"{a}:7000" for a in hosts.addresses[:3]]
        self.raft_addresses = [f"{a}:7001" for a in hosts.addresses[:3]]
        skews = skews or {}
        for i in range(3):
            self.wrappers[i] = [
                *hosts.exec_prefix(i),
                *(skewed_python_clock(skews[i]) if i in skews else ()),
            ]
        self.partitioned: set[int] = set()

    def replica_command(self, i: int, config_file: Path) -> list[str]:
        files = []
        for name, value in (("token", self.token), ("raft-secret", self.secret)):
            path = self.data_dir(i) / name
            path.touch(mode=0o600)
            path.write_text(value)
            files.append(str(path))
        peers = [f"--peer={a}/{r}" for a, r in zip(self.api, self.raft_addresses, strict=True)]
        return [
            *(sys.executable, "-m", "omega", "store", f"--id={i}", *peers),
            *(f"--data-dir={self.data_dir(i)}", f"--token-file={files[0]}"),
            *(f"--secret-file={files[1]}", f"--heartbeat-timeout={self.heartbeat_timeout_s:g}"),
            *(f"--tls-cert={self.certificate.cert}", f"--tls-key={self.certificate.key}"),
        ]

    # The fault suite's interface (as `ProxiedCluster`), made of rules on host links.

    def partition(self, k: int, *, inbound: bool = True, outbound: bool = True) -> None:
        self.partitioned.add(k)
        self.hosts.cut(k, inbound=inbound, outbound=outbound)

    def heal(self) -> None:
        for k in sorted(self.partitioned):
            self.hosts.heal(k)
        self.partitioned.clear()

    def degrade(self, k: int, how: Callable[[int], None]) -> None:
        """Apply `how` (a `Hosts` method: `lose`, `slow`) to host k until `heal()`."""
        self.partitioned.add(k)
        how(k)


def omega_env(cluster: LocalCluster) -> dict[str, str]:
    """The environment the README gives every part but the store: all replica addresses, the
    token (never on a command line, where `ps` shows it) and the CA."""
    return cluster.env()


def _spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


class NetnsSchedulers(SchedulerProcs):
    """`omega scheduler --kind batch --name NAME`, each on the host `SCHEDULER_HOSTS` gives."""

    def __init__(self, cluster: LocalCluster, hosts: Hosts) -> None:
        super().__init__(cluster, list(SCHEDULER_HOSTS))
        self.hosts = hosts

    def start(self, name: str) -> None:
        argv = [
            *self.hosts.exec_prefix(SCHEDULER_HOSTS[name]),
            *(sys.executable, "-m", "omega", "scheduler", "--kind", "batch"),
            *("--name", name, "--report-period", "1"),
        ]
        log = self.cluster.base_dir / f"scheduler-{name}.log"
        self.procs[name] = proc = _spawn(argv, omega_env(self.cluster), log)
        self.hosts.adopt(proc.pid)


class NetnsAgents(ProcessGroup):
    """`omega agent` processes, each on the host `AGENT_HOSTS` gives: `hollow` stands in for
    8 machines, `real-0` runs tasks as real processes. A kill is SIGKILL, which leaves a real
    agent's tasks running for the next agent on the same work dir to adopt."""

    def __init__(self, cluster: LocalCluster, hosts: Hosts) -> None:
        super().__init__(cluster, list(AGENT_HOSTS))
        self.hosts = hosts

    def argv(self, name: str) -> list[str]:
        work = self.cluster.base_dir / "agents" / name
        if name == "hollow":
            shape = ["--hollow", "8", "--cpu", "8", "--memory", "16Gi"]
        else:  # a real agent serves its tasks' logs: https, with its host's certificate
            pki = self.cluster.base_dir / "tls"
            address = self.hosts.addresses[AGENT_HOSTS[name]]
            files = issue(pki, pki, f"agent-{name}", [address])
            shape = ["--cpu", "2", "--memory", "2Gi"]
            shape += [f"--tls-cert={files.cert}", f"--tls-key={files.key}"]
        return [
            *self.hosts.exec_prefix(AGENT_HOSTS[name]),
            *(sys.executable, "-m", "omega", "agent", "--name", name),
            *("--domain", f"rack-{name}", "--work-dir", str(work), "--heartbeat", "1", *shape),
        ]

    def start(self, name: str) -> None:
        log = self.cluster.base_dir / f"agent-{name}.log"
        self.procs[name] = proc = _spawn(self.argv(name), omega_env(self.cluster), log)
        self.hosts.adopt(proc.pid)

    def logs(self) -> list[Path]:
        return [self.cluster.base_dir / f"agent-{name}.log" for name in self.names]


class NetnsFaults(Faults):
    """The fault suite's faults, plus what only a network of hosts can do: a leader cut off one
    way (what it sends is dropped, or what it receives), a leader's link that loses a share
    of its packets, or is slow, for a few seconds, and an agent killed and restarted."""

    cluster: NetnsCell

    def __init__(self, *args: object, agents: NetnsAgents, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.agents = agents

    async def partition_leader_inbound(self) -> None:
        await self._partition_leader(lambda k: self.cluster.partition(k, outbound=False))

    async def partition_leader_outbound(self) -> None:
        await self._partition_leader(lambda k: self.cluster.partition(k, inbound=False))

    async def lossy_leader(self) -> None:
        await self._degrade_leader(lambda k: self.cluster.hosts.lose(k, 30), "30% loss")

    async def slow_leader(self) -> None:
        await self._degrade_leader(self.cluster.hosts.slow, "slow link")

    async def _degrade_leader(self, how: Callable[[int], None], what: str) -> None:
        c = self.cluster
        leader = await self._sync(c.wait_leader)
        acks_before = len(self.workload.acks)
        await self._sync(c.degrade, leader, how)
        await trio.sleep(self.rng.uniform(3.0, 6.0))
        await self._sync(c.heal)
        self.say(f"{what} on r{leader}: {len(self.workload.acks) - acks_before} acks meanwhile")
        await self._sync(c.wait_leader, None, 45.0)

    async def agent_kill(self) -> None:
        name = self.rng.choice(self.agents.names)
        await self._sync(self.agents.kill, name)
        await trio.sleep(self.rng.uniform(0.5, 2.0))
        await self._sync(self.agents.start, name)


NETNS_FAULT_WEIGHTS = {
    **FAULT_WEIGHTS,
    "partition_leader_inbound": 1,
    "partition_leader_outbound": 1,
    "lossy_leader": 1,
    "slow_leader": 1,
    "agent_kill": 2,
}

# Task specs in a cell with agents: real processes that end, hollow ones that end as soon.
REAL_TASK = {"command": ["sleep", "1"], "duration": 1}


@contextlib.contextmanager
def netns_bed(base_dir: Path, seed: int, say: Callable[[str], None]) -> Iterator[Bed]:
    """Seven hosts: three replicas (r1's clock 30 s ahead, r2's 15 s behind), two batch
    scheduler processes, a hollow agent for 8 machines and a real agent; the workload runs
    in the test process, which reaches every host over the bridge."""
    with Hosts(HOSTS) as hosts:
        cluster = NetnsCell(
            base_dir, hosts, skews=SKEWS, heartbeat_timeout_s=SOAK_HEARTBEAT_TIMEOUT_S
        )
        with cluster:
            say(
                f"hosts {hosts.names[0]}..: replicas {cluster.api} "
                f"(clock offsets {[SKEWS.get(i, 0.0) for i in range(3)]} s)"
            )
            scheds = NetnsSchedulers(cluster, hosts)
            agents = NetnsAgents(cluster, hosts)
            # Few machines of its own, so that placements reach the agents' machines too.
            workload = Workload(cluster, seed, machines=2, spec_extra=REAL_TASK, heartbeat_s=2.0)
            faults = NetnsFaults(
                cluster, scheds, workload, random.Random(seed + 1), say, agents=agents
            )

            def quiesce() -> None:
                scheds.close()
                agents.close()

            try:
                scheds.start_all()
                agents.start_all()
                yield Bed(
                    cluster,
                    scheds,
                    workload,
                    faults,
                    NETNS_FAULT_WEIGHTS,
                    quiesce,
                    lambda: sorted(base_dir.glob("scheduler-*.log")) + agents.logs(),
                )
            finally:
                quiesce()


# The CI run's faults, in order: every kind a network of hosts adds and a few classic ones
# (the loopback suite has the leader kills).
NETNS_CI_SCHEDULE = (
    "partition_leader_outbound",
    "agent_kill",
    "lossy_leader",
    "partition_leader_inbound",
    "scheduler_kill",
    "slow_leader",
    "partition_leader",
    "full_restart",
)
