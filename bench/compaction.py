"""Cell compaction from a checkout: `python -m bench.compaction --preset A` is
`omega bench compaction --preset A` (the same flags, `cellsim.options.COMPACTION_FLAGS`),
kept beside the other benchmarks; the engine is `cellsim.compaction`."""

from __future__ import annotations

from cellsim.compaction import main

if __name__ == "__main__":
    main(prog="python -m bench.compaction")
