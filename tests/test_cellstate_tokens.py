"""API tokens in the cell state (rules 6): created and revoked by commands, kept as digests,
carried by snapshots, refused under older rules; and who sent a command stays out of the
bytes of commands that do not say."""

from __future__ import annotations

import hashlib

from cellstate import (
    Author,
    CellState,
    CreateToken,
    Error,
    KillJob,
    Ok,
    RevokeToken,
    Role,
)
from cellstate.commands import Command
from cellstate.wire import internal


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def test_create_revoke_and_snapshot() -> None:
    cell = CellState()
    ops = CreateToken("ops", Role.OPERATOR, digest("s1"), at=1.0)
    assert cell.apply(ops).result == Ok()
    # The same token again is a no-op (a restarted `omega up` issues its tokens again) ...
    assert cell.apply(ops).result == Ok()
    # ... a different one under the name is refused, unless it replaces it.
    other = CreateToken("ops", Role.ADMIN, digest("s2"))
    assert cell.apply(other).result == Error(
        "token_exists", "a different token is named 'ops'; revoke it first", "name"
    )
    agent = CreateToken("a1", Role.AGENT, digest("s3"), ("m1", "hollow-*"), at=2.0)
    assert cell.apply(agent).result == Ok()
    restored = CellState.restore(cell.snapshot())
    assert restored.snapshot() == cell.snapshot()
    assert restored.token_digests[digest("s3")].machines == ("m1", "hollow-*")
    assert cell.apply(RevokeToken("ops")).result == Ok()
    assert digest("s1") not in cell.token_digests
    assert cell.apply(RevokeToken("ops")).result == Error("token_unknown", "no token 'ops'", "name")
    replaced = CreateToken("a1", Role.AGENT, digest("s4"), ("m2",), replace=True)
    assert cell.apply(replaced).result == Ok()
    assert set(cell.token_digests) == {digest("s4")}


def test_bad_tokens_change_nothing() -> None:
    cell = CellState()
    before = cell.snapshot()
    bad = [
        (CreateToken("Bad Name", Role.ADMIN, digest("x")), "invalid_name"),
        (CreateToken("t", Role.ADMIN, "not-hex"), "invalid_digest"),
        (CreateToken("t", Role.AGENT, digest("x")), "invalid_machines"),
        (CreateToken("t", Role.OPERATOR, digest("x"), ("m1",)), "invalid_machines"),
    ]
    for command, code in bad:
        result = cell.apply(command).result
        assert isinstance(result, Error) and result.code == code, result
    assert cell.snapshot().replace(b'"version":4', b'"version":0') == before


def test_tokens_need_rules_6() -> None:
    cell = CellState(rules=5)
    result = cell.apply(CreateToken("ops", Role.OPERATOR, digest("s"))).result
    assert isinstance(result, Error) and result.code == "rules_too_old"
    assert not cell.tokens


def test_author_written_only_when_known() -> None:
    plain = internal.unstructure(KillJob("j", at=1.0, id="c1"), Command)
    assert "by" not in plain
    signed = KillJob("j", at=1.0, id="c1", by=Author("alice", Role.OPERATOR))
    document = internal.unstructure(signed, Command)
    assert document["by"] == {"name": "alice", "role": "operator"}
    assert internal.structure(document, Command) == signed
