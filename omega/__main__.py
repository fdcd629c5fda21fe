"""`python -m omega` is the `omega` command."""

from omega.cli import app

app(prog_name="omega")
