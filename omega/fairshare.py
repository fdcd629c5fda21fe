"""`omega weights get|set`: owners' fair-share weights (weighted DRF, `cellstate.fairshare`).

Registered onto the `omega` app by `omega.cli`; like it, this module imports only what
every command needs, the rest inside the commands.
"""

from __future__ import annotations

import math
from typing import Annotated

import typer

from omega.cli import Addr, AsJson, Token, app, call, console, emit_json, fail

weights_app = typer.Typer(
    help="Fair-share weights per owner: schedulers order pending jobs within a band by "
    "their owner's dominant share divided by its weight.",
    no_args_is_help=True,
)
app.add_typer(weights_app, name="weights")


def parse_weights(texts: list[str]) -> dict[str, float]:
    """`OWNER=WEIGHT` words as a mapping; exits 2 naming the first bad word. The owner's
    name is the cell's to judge (one rule, one message); the number is judged here."""
    weights: dict[str, float] = {}
    for text in texts:
        owner, sep, number = text.partition("=")
        if not sep or not owner:
            fail(f"weight {text!r}: write OWNER=WEIGHT, as team-a=3", 2)
        try:
            weight = float(number)
        except ValueError:
            fail(f"weight {text!r}: {number!r} is not a number", 2)
        if not math.isfinite(weight) or weight <= 0:
            fail(f"weight {text!r}: a weight must be a positive number", 2)
        if owner in weights:
            fail(f"weight {text!r}: owner {owner!r} is named twice", 2)
        weights[owner] = weight
    return weights


@weights_app.command("set")
def weights_set(
    weights: Annotated[
        list[str], typer.Argument(help="OWNER=WEIGHT per owner: team-a=3 team-b=1.")
    ],
    addr: Addr = "",
    token: Token = "",
) -> None:
    """Set owners' weights (owners not named keep theirs; 1 is the default). All or none:
    one bad word changes nothing."""
    chosen = parse_weights(weights)
    call(addr, token, lambda cell: cell.set_weights(chosen))
    told = " ".join(f"{owner}={weight:g}" for owner, weight in chosen.items())
    console().print(f"weights: {told}")


@weights_app.command("get")
def weights_get(addr: Addr = "", token: Token = "", as_json: AsJson = False) -> None:
    """Each owner's weight, dominant share of the cell, and share / weight."""
    found = call(addr, token, lambda cell: cell.weights())
    if as_json:
        emit_json(found)
        return
    if not found:
        # An empty table said nothing of what an owner's weight then is.
        console().print("no owner holds resources or has a weight: every owner weighs 1")
        return
    from rich.table import Table

    table = Table("owner", "weight", "dominant share", "share/weight")
    for w in found:
        table.add_row(
            w["owner"], f"{w['weight']:g}", f"{w['share']:.1%}", f"{w['weighted_share']:.3f}"
        )
    console().print(table)
