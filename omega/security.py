"""`omega token create|revoke|list|whoami` and `omega tls ca|cert`: the cell's credentials.

Tokens: `create` makes the secret here, sends only its SHA-256 to the cell (`CreateToken`),
and prints the secret once; nothing can show it again. Roles and what each may call are
`cellstore.access`'s table. TLS: a CA and server certificates for a multi-host cell, made with
`cryptography` (`cellstore.tls`), keys 0600.

Registered onto the `omega` app by `omega.cli`; like it, this module imports only what every
command needs, the rest inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from omega.cli import Addr, AsJson, Token, app, call, console, emit_json, errors, fail

ROLES = ("admin", "operator", "scheduler", "agent", "read-only")

token_app = typer.Typer(
    help="API tokens with roles: admin, operator, scheduler, agent (bound to machines), read-only.",
    no_args_is_help=True,
)
app.add_typer(token_app, name="token")
tls_app = typer.Typer(help="A CA and server certificates for the cell's TLS.", no_args_is_help=True)
app.add_typer(tls_app, name="tls")


@token_app.command("create")
def token_create(
    role: Annotated[str, typer.Option(help=f"One of {', '.join(ROLES)}.")],
    name: Annotated[str, typer.Option(help="The token's name (default: ROLE-RANDOM).")] = "",
    machines: Annotated[
        str,
        typer.Option(
            help="An agent token's machines, comma-separated: names or patterns (hollow-*)."
        ),
    ] = "",
    addr: Addr = "",
    token: Token = "",
    as_json: AsJson = False,
) -> None:
    """Issue a token and print its secret, once (the cell keeps only its SHA-256)."""
    import secrets

    from cellstore.access import digest

    if role not in ROLES:
        fail(f"--role {role!r}: use one of {', '.join(ROLES)}", 2)
    bound = [m.strip() for m in machines.split(",") if m.strip()]
    if role == "agent" and not bound:
        fail("--machines: an agent token must name the machines it is for", 2)
    if role != "agent" and bound:
        fail(f"--machines: only agent tokens are bound to machines, not {role} ones", 2)
    chosen = name or f"{role}-{secrets.token_hex(3)}"
    secret = secrets.token_urlsafe(32)
    call(addr, token, lambda cell: cell.create_token(chosen, role, digest(secret), bound))
    if as_json:
        emit_json({"name": chosen, "role": role, "machines": bound, "secret": secret})
    else:
        print(secret)
        errors().print(f"token {chosen} ({role}) created; its secret is above, once")


@token_app.command("revoke")
def token_revoke(
    name: Annotated[str, typer.Argument(help="The token's name.")],
    addr: Addr = "",
    token: Token = "",
) -> None:
    """Revoke a token: every replica refuses it once it has applied the revocation."""
    call(addr, token, lambda cell: cell.revoke_token(name))
    console().print(f"token {name} revoked")


@token_app.command("list")
def token_list(addr: Addr = "", token: Token = "", as_json: AsJson = False) -> None:
    """Every token's name, role and machines (never a secret)."""
    from rich.table import Table

    tokens = call(addr, token, lambda cell: cell.tokens())
    if as_json:
        emit_json(tokens)
        return
    table = Table("name", "role", "machines")
    for t in tokens:
        table.add_row(t["name"], t["role"], ",".join(t["machines"]) or "-")
    console().print(table)


@token_app.command("whoami")
def token_whoami(addr: Addr = "", token: Token = "", as_json: AsJson = False) -> None:
    """The token in use: its name and role, and an agent token's machines."""
    found = call(addr, token, lambda cell: cell.whoami())
    if as_json:
        emit_json(found)
        return
    bound = f", for {', '.join(found['machines'])}" if found["machines"] else ""
    console().print(f"{found['name']} ({found['role']}{bound})", highlight=False)


@tls_app.command("ca")
def tls_ca(
    directory: Annotated[Path, typer.Argument(help="Where to write ca.pem and ca-key.pem.")],
) -> None:
    """Make a new CA (ca.pem to give every host and client, ca-key.pem to keep safe)."""
    from cellstore.tls import CA_CERT, make_ca

    if (directory / CA_CERT).exists():
        fail(f"{directory / CA_CERT} exists: a new CA would orphan its certificates", 2)
    console().print(f"CA written: {make_ca(directory)}")


@tls_app.command("cert")
def tls_cert(
    ca_dir: Annotated[Path, typer.Argument(help="The CA's directory (omega tls ca).")],
    name: Annotated[str, typer.Argument(help="File name: NAME.pem and NAME-key.pem.")],
    host: Annotated[
        list[str], typer.Option(help="An IP address or DNS name clients dial it by; repeat.")
    ],
    out: Annotated[Path, typer.Option(help="Directory to write to (default: the CA's).")] = Path(),
) -> None:
    """Sign a server certificate for a replica, scheduler or agent host."""
    from cellstore.tls import CA_CERT, TlsError, issue

    if not (ca_dir / CA_CERT).exists():
        fail(f"{ca_dir / CA_CERT}: no CA there (make one with omega tls ca)", 2)
    try:
        files = issue(ca_dir, out if out != Path() else ca_dir, name, host)
    except TlsError as exc:
        fail(str(exc), 2)
    console().print(f"certificate {files.cert}, key {files.key}")
