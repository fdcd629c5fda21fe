"""Fuzzing the edge: whatever a client sends gets a clear 4xx and changes nothing.

In process, hypothesis throws arbitrary JSON, mutated valid commands and job
specs at the strict converter: every input either becomes a well-typed command
or raises `SpecError` with a message and a field path, never anything else.
Against a real replica, random bodies on every write endpoint get 4xx answers,
never 5xx, the process stays up and the cell's state is unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cellstate import JobSpec, SpecError
from cellstate.commands import COMMAND_TYPES
from cellstate.wire import decode_command, parse, parse_json
from cellstore.cell import CellMachine
from cellstore.cellclient import WRITE_ROUTES
from cellstore.client import COMMANDS, SNAPSHOT
from harness.cluster import LocalCluster, cell_options

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)

VALID_SPEC = {
    "name": "web",
    "owner": "alice",
    "scheduler": "service",
    "tasks": 3,
    "resources": {"cpu": "500m", "memory": "256Mi"},
    "command": ["true"],
}
VALID_COMMANDS = [
    {"type": "submit_job", "job": "web-1", "spec": VALID_SPEC},
    {"type": "kill_job", "job": "web-1"},
    {"type": "commit", "txn": {"scheduler": "s", "claims": [["web-1.0", "m0", 0, []]]}},
    {
        "type": "register_machines",
        "machines": [{"id": "m0", "capacity": {"cpu": 4, "memory": "8Gi"}, "domain": "d0"}],
    },
    {
        "type": "report_tasks",
        "reports": [{"task": "web-1.0", "machine": "m0", "incarnation": 0, "state": "running"}],
    },
    {"type": "heartbeat", "machines": ["m0"]},
]


def mutate(document: dict, data: st.DataObject) -> dict:
    """Replace, drop or add one field somewhere in `document`."""
    doc = orjson.loads(orjson.dumps(document))
    node = doc
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = data.draw(st.sampled_from(keys))
        if isinstance(node[key], dict | list) and node[key] and data.draw(st.booleans()):
            node = node[key]
            continue
        action = data.draw(st.sampled_from(["replace", "drop", "add"]))
        if action == "replace":
            node[key] = data.draw(json_values)
        elif action == "drop" and isinstance(node, dict):
            del node[key]
        elif isinstance(node, dict):
            node[data.draw(st.text(min_size=1, max_size=8))] = data.draw(json_values)
        break
    return doc


def must_be_refused_cleanly(fn, document) -> None:
    try:
        fn(document)
    except SpecError as exc:
        assert (exc.message and exc.field is not None) or exc.code in (
            "malformed_json",
            "too_large",
        )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=json_values)
def test_arbitrary_json_is_a_command_or_a_named_refusal(document):
    must_be_refused_cleanly(CellMachine.canonical, document)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_commands_are_valid_or_refused_with_a_field(data):
    document = mutate(data.draw(st.sampled_from(VALID_COMMANDS)), data)
    try:
        encoded = CellMachine.canonical(document)
    except SpecError as exc:
        assert exc.message and exc.field and exc.field.startswith("$")
        return
    command = decode_command(encoded)
    assert type(command) in COMMAND_TYPES.values()


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_mutated_job_specs_and_raw_bytes(data):
    must_be_refused_cleanly(lambda d: parse(d, JobSpec), mutate(VALID_SPEC, data))
    raw = data.draw(st.binary(max_size=200))
    must_be_refused_cleanly(lambda b: parse_json(b, JobSpec), raw)


def test_deep_nesting_and_unicode_names_are_refused_cleanly():
    deep: object = []
    for _ in range(10_000):
        deep = [deep]
    must_be_refused_cleanly(
        lambda b: parse_json(b, JobSpec), orjson.dumps({"a": 1})[:-1] + b"[" * 5000
    )
    must_be_refused_cleanly(CellMachine.canonical, {"type": "kill_job", "job": "ŵéb\u0000"})
    with pytest.raises(SpecError) as caught:
        parse({**VALID_SPEC, "name": "wéb"}, JobSpec)
    assert caught.value.field == "$.name"


WRITE_ENDPOINTS = [COMMANDS, *WRITE_ROUTES.values()]


@pytest.mark.slow
def test_fuzzed_http_bodies_get_4xx_and_change_nothing(tmp_path: Path):
    bodies = []

    @settings(max_examples=300, deadline=None, database=None)
    @given(data=st.data())
    def collect(data):
        endpoint = data.draw(st.sampled_from(WRITE_ENDPOINTS))
        kind = data.draw(st.sampled_from(["json", "mutant", "bytes"]))
        if kind == "bytes":
            body = data.draw(st.binary(max_size=100))
        elif kind == "json":
            body = json.dumps(data.draw(json_values)).encode()
        else:
            command = mutate(data.draw(st.sampled_from(VALID_COMMANDS)), data)
            body = json.dumps(command).encode()
        bodies.append((endpoint, body))

    collect()
    # Fuzzed registrations have no agent: a timeout that never fires keeps the log the test's.
    with LocalCluster(tmp_path, **cell_options(heartbeat_timeout_s=3600.0)) as cluster:
        base = f"http://{cluster.api[0]}"
        auth = {"authorization": f"Bearer {cluster.token}"}
        with httpx.Client(timeout=15) as http:
            for endpoint, body in bodies:
                resp = http.post(base + endpoint, headers=auth, content=body)
                assert resp.status_code < 500, (endpoint, body, resp.text)
                if resp.status_code >= 400:
                    assert resp.json()["error"]["message"]
            assert cluster.alive() == [0, 1, 2]
            cell = CellMachine.restore(http.get(base + SNAPSHOT, headers=auth).content).cell
            # Mutants that happened to be valid may have registered machines or
            # submitted jobs; the promise is that the state is consistent.
            cell.check_invariants()
