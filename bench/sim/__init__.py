"""The simulator's live side: `python -m bench.sim` is `python -m cellsim` plus `live`, which
runs the simulator's workload against a real local cell (`live.py`, on the harness's local
cluster) and sets the live figures beside the simulated ones. The simulator itself is the
shipped `cellsim` package."""
