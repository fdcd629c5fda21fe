"""A cell whose processes each live on a host of their own (`harness.hosts.Hosts`), started
with the README's command lines for several hosts.

`NetnsCell` runs replica i on host `replica_hosts[i]` with `omega store --id I --peer ...
--token-file --secret-file`: its own address, the same ports everywhere.
"""

from __future__ import annotations

import sys
from pathlib import Path

from harness.cluster import LocalCluster, cell_options
from harness.hosts import Hosts


class NetnsCell(LocalCluster):
    """A 3-replica cell, replica i on host i, each started with the README's command line for
    several hosts (`omega store --id I --peer API/RAFT ... --token-file --secret-file`): its
    own address, the same ports everywhere."""

    def __init__(self, base: Path, hosts: Hosts) -> None:
        super().__init__(base, 3, **cell_options(heartbeat_timeout_s=60.0))
        self.api = [f"{a}:7000" for a in hosts.addresses]
        self.raft_addresses = [f"{a}:7001" for a in hosts.addresses]
        for i in range(3):
            self.wrappers[i] = hosts.exec_prefix(i)

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
            *(f"--secret-file={files[1]}", "--heartbeat-timeout=60"),
        ]
