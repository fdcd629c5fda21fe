"""The `omega` command line: run a cell's parts and talk to a running cell."""
