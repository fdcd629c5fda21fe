"""`python -m cellstore --config replica.json`: run one replica from a JSON config file.

The file holds `ReplicaConfig` fields (`machine` and `extensions` as "module:attr" import
paths); it carries the token and the Raft secret, so keep it private (mode 0600), never argv.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import orjson

from cellstore.config import ReplicaConfig
from cellstore.server import run_replica


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cellstore", description=__doc__)
    parser.add_argument("--config", type=Path, required=True, help="replica config JSON file")
    args = parser.parse_args(argv)
    run_replica(ReplicaConfig.from_json(orjson.loads(args.config.read_bytes())))


if __name__ == "__main__":
    main()
