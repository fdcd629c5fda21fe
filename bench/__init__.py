"""omega-cell benchmarks: each module prints a human summary, then one JSON line."""
