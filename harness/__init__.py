"""harness: the whole-system test harness, kept out of the shipped product.

`cluster` starts real replica processes on 127.0.0.1 (`LocalCluster`) and holds the toy
key/value machine the tests use to prove the store generic; `faults` cuts Raft links through
TCP proxies, drives a recorded workload, injects faults and checks the history. It sits above
every product package (the README's "Layout"; `lint-imports` checks it): it may import any of
them, none may import it; only `bench` sits above it. It is not
in the wheel (`[tool.setuptools.packages.find]` leaves it out); tests and benchmarks import it
from the repository root.
"""
