"""`omega quota get|set` and `omega node state`: the cell's settings that were reachable only
over raw HTTP, as commands with errors that name the argument.

Registered onto the `omega` app by `omega.cli`; like it, this module imports only what
every command needs, the rest inside the commands.
"""

from __future__ import annotations

from typing import Annotated

import typer

from omega.cli import (
    Addr,
    AsJson,
    Token,
    app,
    call,
    chosen_by_labels,
    console,
    emit_json,
    fail,
)

quota_app = typer.Typer(help="Quota per owner and priority band.", no_args_is_help=True)
node_app = typer.Typer(help="Change a machine.", no_args_is_help=True)
app.add_typer(quota_app, name="quota")
app.add_typer(node_app, name="node")

BANDS = ("monitoring", "production", "batch")
MACHINE_STATES = ("up", "draining", "down")


@quota_app.command("get")
def quota_get(
    addr: Addr = "",
    token: Token = "",
    as_json: AsJson = False,
    owner: Annotated[str, typer.Option(help="Only this owner's quotas.")] = "",
) -> None:
    """Each owner's quota per band (limit, or unlimited) and what its tasks take."""
    found = [q for q in call(addr, token, lambda cell: cell.quotas()) if owner in ("", q["owner"])]
    if as_json:
        emit_json(found)
        return
    from rich.table import Table

    from omega.units import dimensions, human

    table = Table("owner", "band", "taken/limit")
    for q in found:
        limit, taken = q["limit"] or {}, q["taken"]
        # What it limits (zero included), then what it takes of the dimensions it does not.
        dims = dict.fromkeys([*dimensions(limit), *dimensions(taken)])
        shown = [
            f"{dim} {human(taken, dim)}/{human(limit, dim) if dim in limit else 'unlimited'}"
            for dim in dims
        ]
        table.add_row(q["owner"], q["band"], "  ".join(shown) or "-")
    console().print(table)


@quota_app.command("set")
def quota_set(
    owner: Annotated[str, typer.Argument(help="The owner, as job specs name it.")],
    band: Annotated[str, typer.Argument(help="monitoring, production or batch.")],
    limits: Annotated[
        list[str] | None,
        typer.Argument(help="NAME=AMOUNT per dimension: cpu=64 memory=128Gi gpu=4 (gpu=0: none)."),
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove the quota: unlimited.")] = False,
    addr: Addr = "",
    token: Token = "",
) -> None:
    """Set an owner's quota in one band (a dimension not named is unlimited, one set to 0
    may not be used)."""
    from cellstate import Band, Limit
    from cellstate.resources import UnitError, parse_declaration

    if band not in BANDS:
        fail(
            f"band {band!r}: use one of {', '.join(BANDS)} (best-effort has no quota: "
            "it is unlimited)",
            2,
        )
    if clear == bool(limits):
        fail("give limits (cpu=64 memory=128Gi ...) or --clear, not both or neither", 2)
    amounts: dict[str, int] = {}
    for text in limits or ():
        try:
            name, amount = parse_declaration(text, zero=True)
        except UnitError as exc:
            fail(f"limit {text!r}: {exc}", 2)
        amounts[name] = amount
    limit = None if clear else Limit.of(amounts)
    chosen = Band[band.upper()]
    call(addr, token, lambda cell: cell.set_quota(owner, chosen, limit))
    told = "unlimited" if limit is None else " ".join(limits or ())
    console().print(f"quota of [bold]{owner}[/bold] in {band}: {told}")


@node_app.command("state")
def node_state(
    machine: Annotated[str, typer.Argument(help="Machine id.")],
    state: Annotated[str, typer.Argument(help="up, draining or down.")],
    addr: Addr = "",
    token: Token = "",
) -> None:
    """Set a machine's state: `draining` takes no new tasks, `down` loses its tasks (they are
    rescheduled), `up` takes work again."""
    from cellstate import MachineState

    if state not in MACHINE_STATES:
        fail(f"state {state!r}: use one of {', '.join(MACHINE_STATES)}", 2)
    call(addr, token, lambda cell: cell.set_machine_state(machine, MachineState(state)))
    console().print(f"machine [bold]{machine}[/bold] is {state}")


@node_app.command("label")
def node_label(
    words: Annotated[
        list[str],
        typer.Argument(
            help="Machine ids (or -l to choose machines by label), then KEY=VALUE to set a "
            "label and KEY- to take one away, as kubectl label nodes.",
            metavar="[MACHINE]... KEY=VALUE|KEY-...",
        ),
    ],
    addr: Addr = "",
    token: Token = "",
    selector: Annotated[
        str, typer.Option("--selector", "-l", help="Label every machine whose labels match.")
    ] = "",
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Label more than one machine without asking.")
    ] = False,
) -> None:
    """Set or take away machines' labels, which job selectors and constraints choose by: kept
    over what the machine's agent registers, even after it restarts. Tasks already placed
    stay; all or none."""
    machines: list[str] = []
    labels: dict[str, str] = {}
    remove: list[str] = []
    for word in words:
        if "=" in word:
            key, _, value = word.partition("=")
            if not key:
                fail(f"label {word!r}: the key before = is empty", 2)
            labels[key] = value
        elif word.endswith("-") and len(word) > 1:
            remove.append(word[:-1])
        elif labels or remove:
            fail(f"{word!r}: machines come first, then KEY=VALUE or KEY- (kubectl's order)", 2)
        else:
            machines.append(word)
    if not labels and not remove:
        fail("nothing to do: give KEY=VALUE to set a label or KEY- to take one away", 2)
    if bool(machines) == bool(selector):
        fail("name machine ids, or choose machines with -l SELECTOR", 2)
    if not machines:
        every = call(addr, token, lambda cell: cell.machines())
        machines = chosen_by_labels(
            selector, every, "machine", "machines", "label", "labelled", yes
        )
    chosen = machines
    call(addr, token, lambda cell: cell.label_machines(chosen, labels, remove))
    said = [f"{k}={v}" for k, v in labels.items()] + [f"{k}-" for k in remove]
    console().print(
        f"labelled {', '.join(f'[bold]{m}[/bold]' for m in machines)}: {' '.join(said)}"
    )


@node_app.command("remove")
def node_remove(
    machines: Annotated[
        list[str] | None,
        typer.Argument(help="Machine ids, each down (or -l to choose down machines by label)."),
    ] = None,
    addr: Addr = "",
    token: Token = "",
    selector: Annotated[
        str,
        typer.Option("--selector", "-l", help="Remove every down machine whose labels match."),
    ] = "",
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Remove more than one machine without asking.")
    ] = False,
) -> None:
    """Forget machines that are down (retired or replaced): they leave `omega nodes` and every
    scheduler's tables. All or none. An agent still running registers its machine again."""
    if bool(machines) == bool(selector):
        fail("name machine ids, or choose down machines with -l SELECTOR", 2)
    if not machines:
        down = call(addr, token, lambda cell: cell.machines("down"))
        machines = chosen_by_labels(
            selector, down, "down machine", "down machines", "remove", "removed", yes
        )
    chosen = machines
    call(addr, token, lambda cell: cell.remove_machines(chosen))
    console().print(f"removed {', '.join(f'[bold]{m}[/bold]' for m in machines)}")
