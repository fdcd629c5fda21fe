"""The operator's commands against a real cell (`omega up`: replica, schedulers, agents in
processes), used only through `omega` and, for metrics, as Prometheus scrapes them.

- `submit --wait` fails early, naming the constraint, once a scheduler explained it;
- `nodes` shows human units; labels and `-l` selectors on jobs, tasks, nodes, kill;
- `quota get/set` and `node state` with errors that name the argument; `node remove`;
- `events` from the change feed; a crash loop's restarts and last exit; `/metrics` on a replica, a scheduler and an agent,
  parsed by prometheus-client's own parser;
- `top` writes every refresh when its output is not a terminal.
"""

from __future__ import annotations

import json
import re
import ssl
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.upcell import up_cell, wait_for

pytestmark = pytest.mark.slow

SPEC = """\
name: {name}
scheduler: batch
tasks: 2
resources: {{cpu: 100m, memory: 16Mi}}
command: ["sh", "-c", "{shell}"]
labels: {labels}
grace_period: 1
"""


@pytest.fixture(scope="module")
def cell(tmp_path_factory):
    data = tmp_path_factory.mktemp("operator")
    with up_cell(data / "cell", "--replicas", "1", "--agents", "2") as started:
        started.start()
        yield started


def spec(cell, name: str, labels: str, shell: str = "exit 0") -> str:
    path = cell.data_dir.parent / f"{name}.yaml"
    path.write_text(SPEC.format(name=name, labels=labels, shell=shell))
    return str(path)


def test_submit_wait_fails_early_naming_the_constraint(cell):
    began = time.monotonic()
    out = cell.omega(
        "submit", "examples/unplaceable.yaml", "--wait", "--blocked-timeout", "3", check=False
    )
    took = time.monotonic() - began
    assert out.returncode == 2, out
    assert "Placement failures" in out.stdout, out.stdout
    assert "constraint:accel" in out.stderr and "cannot be placed" in out.stderr, out.stderr
    # Before: it waited its whole --timeout (300 s) and said only `pending=1`.
    assert took < 60, took


def test_nodes_show_human_units(cell):
    table = cell.omega("nodes").stdout
    memory = re.findall(r"\b\d+(?:\.\d)?(?:Ki|Mi|Gi|Ti)?/(\S+)", table)
    assert memory, table
    assert not re.search(r"\d{5,}Ki", table), table  # before: 64Mi/6171023Ki
    assert re.search(r"/\d+(\.\d)?Gi", table), table


def test_labels_and_selectors_choose_jobs_tasks_and_nodes(cell):
    ml = cell.json("submit", spec(cell, "ml-train", "{team: ml, env: dev}"))["id"]
    prod = cell.json("submit", spec(cell, "ml-serve", "{team: ml, env: prod}"))["id"]
    web = cell.json("submit", spec(cell, "web", "{team: web}"))["id"]
    chosen = {j["id"] for j in cell.json("jobs", "-l", "team=ml,env!=prod")}
    assert chosen == {ml}
    assert {j["id"] for j in cell.json("jobs", "-l", "team in (ml,web),!env")} == {web}
    assert {j["id"] for j in cell.json("jobs", "-l", "team")} >= {ml, prod, web}
    assert cell.json("jobs", "--json", "-l", "team=ml")[0]["labels"]["team"] == "ml"
    tasks = cell.json("tasks", "-l", "env=prod")
    assert {t["job"] for t in tasks} == {prod} and len(tasks) == 2
    every = cell.json("nodes")
    assert len(cell.json("nodes", "-l", "omega.agent")) == len(every) == 2
    assert cell.json("nodes", "-l", "!omega.agent") == []
    bad = cell.omega("jobs", "-l", "team=ml,=x", check=False)
    assert bad.returncode == 2 and "cannot read '=x'" in bad.stderr, bad.stderr


def test_a_job_s_selector_chooses_its_machines_in_the_syntax_of_l(cell):
    """`selector` in a spec: the batch scheduler process places only where it holds, a
    job it matches no machine of is explained by the requirement's key, and one that
    does not parse is refused at submit, naming the field."""
    path = cell.data_dir.parent / "chosen.yaml"
    path.write_text(
        SPEC.format(name="chosen", labels="{}", shell="exit 0") + "selector: omega.agent\n"
    )
    chosen = cell.json("submit", str(path))["id"]
    # `submit --wait` returns once every task runs, which may be before they exit.
    wait_for("the job to finish", lambda: cell.json("job", chosen)["state"] == "done")
    assert {t["machine"] for t in cell.json("tasks", "--job", chosen)} <= {
        n["id"] for n in cell.json("nodes", "-l", "omega.agent")
    }
    path.write_text(
        SPEC.format(name="nowhere", labels="{}", shell="exit 0") + "selector: '!omega.agent'\n"
    )
    job = cell.json("submit", str(path))["id"]
    wait_for(
        "an explanation", lambda: "constraint:omega.agent" in cell.omega("explain", job).stdout
    )
    cell.omega("kill", job)
    path.write_text(
        SPEC.format(name="bad", labels="{}", shell="exit 0") + "selector: 'zone in ()'\n"
    )
    bad = cell.omega("submit", str(path), check=False)
    assert bad.returncode != 0 and "selector" in bad.stderr and "is empty" in bad.stderr, bad


def test_kill_by_selector_asks_before_killing_several(cell):
    one = cell.json("submit", spec(cell, "sleepy-a", "{group: sleepy}", "sleep 600"))["id"]
    two = cell.json("submit", spec(cell, "sleepy-b", "{group: sleepy}", "sleep 600"))["id"]
    refused = cell.omega("kill", "-l", "group=sleepy", check=False)  # no terminal: answers no
    assert refused.returncode == 1 and "2 jobs match" in refused.stdout, refused
    assert "killed" not in {cell.json("job", j)["state"] for j in (one, two)}
    # A task's id is not a job's: the refusal says what kill takes, and kills nothing.
    task = cell.omega("kill", f"{one}.0", check=False)
    assert task.returncode == 2, task
    assert f"{one}.0 is a task of job {one}: omega kill stops whole jobs" in task.stderr
    assert cell.json("job", one)["state"] != "killed"
    cell.omega("kill", "-l", "group=sleepy", "--yes")
    assert {cell.json("job", j)["state"] for j in (one, two)} == {"killed"}


def test_quota_and_machine_state_from_the_cli(cell):
    cell.omega("quota", "set", "team-a", "batch", "cpu=2", "memory=1.5Gi")
    quotas = {(q["owner"], q["band"]): q for q in cell.json("quota", "get")}
    assert quotas[("team-a", "batch")]["limit"]["cpu_milli"] == 2000
    assert quotas[("team-a", "batch")]["limit"]["memory_bytes"] == 3 << 29
    assert "1.5Gi" in cell.omega("quota", "get", "--owner", "team-a").stdout
    bad_band = cell.omega("quota", "set", "team-a", "gold", "cpu=1", check=False)
    assert bad_band.returncode == 2 and "band 'gold'" in bad_band.stderr
    bad_amount = cell.omega("quota", "set", "team-a", "batch", "cpu=lots", check=False)
    assert bad_amount.returncode == 2 and "limit 'cpu=lots'" in bad_amount.stderr
    # A zero limits a dimension to none; one not named (memory here) is unlimited.
    cell.omega("quota", "set", "team-a", "batch", "cpu=2", "gpu=0")
    quotas = {(q["owner"], q["band"]): q for q in cell.json("quota", "get")}
    assert quotas[("team-a", "batch")]["limit"] == {"cpu": "2", "cpu_milli": 2000, "gpu": 0}
    shown = cell.omega("quota", "get", "--owner", "team-a").stdout
    assert "gpu 0/0" in shown and "memory 0/unlimited" in shown, shown
    told = cell.omega("events").stdout
    assert "quota of team-a in batch set: cpu=2 gpu=0" in told, told
    cell.omega("quota", "set", "team-a", "batch", "--clear")
    assert ("team-a", "batch") not in {(q["owner"], q["band"]) for q in cell.json("quota", "get")}
    assert "quota of team-a in batch cleared: unlimited" in cell.omega("events").stdout

    machine = cell.json("nodes")[0]["id"]
    cell.omega("node", "state", machine, "draining")
    assert {m["id"]: m["state"] for m in cell.json("nodes")}[machine] == "draining"
    cell.omega("node", "state", machine, "up")
    wrong = cell.omega("node", "state", machine, "sleeping", check=False)
    assert wrong.returncode == 2 and "state 'sleeping'" in wrong.stderr
    unknown = cell.omega("node", "state", "no-such-machine", "up", check=False)
    assert unknown.returncode == 1 and "no-such-machine" in unknown.stderr, unknown.stderr


def test_a_machine_that_is_down_is_removed_and_its_running_agent_registers_it_again(cell):
    """`omega node remove`: refused (and nothing changes) while the machine is up; once it
    is down, it leaves the cell (named, or chosen by label among the down machines). Its agent still runs, so it registers the machine again,
    as a new one on the last row: the schedulers' tables, whose rows moved, still place an
    anti-affine job on both machines."""
    machine = sorted(m["id"] for m in cell.json("nodes"))[0]
    refused = cell.omega("node", "remove", machine, check=False)
    assert refused.returncode == 1, refused
    assert "machine_not_down" in refused.stderr and "take it down first" in refused.stderr
    assert machine in {m["id"] for m in cell.json("nodes")}
    unknown = cell.omega("node", "remove", "no-such-machine", check=False)
    assert unknown.returncode == 1 and "no machine 'no-such-machine'" in unknown.stderr
    # A selector chooses among the machines that are down only: none yet.
    none = cell.omega("node", "remove", "-l", "omega.agent", check=False)
    assert none.returncode == 1, none
    assert "no down machine matches -l 'omega.agent'" in none.stderr, none.stderr
    both = cell.omega("node", "remove", machine, "-l", "omega.agent", check=False)
    assert both.returncode == 2 and "name machine ids, or choose" in both.stderr, both

    cell.omega("node", "state", machine, "down")
    # What is down, to remove: `nodes --state` (a state there is not is refused, naming them).
    assert [m["id"] for m in cell.json("nodes", "--state", "down")] == [machine]
    assert machine not in {m["id"] for m in cell.json("nodes", "--state", "up")}
    wrong = cell.omega("nodes", "--state", "sleeping", check=False)
    assert wrong.returncode == 1, wrong
    assert "state 'sleeping': use one of up, draining, down" in wrong.stderr, wrong.stderr
    # By label, as `omega kill -l` chooses jobs: only the down machine matches.
    removed = cell.omega("node", "remove", "-l", "omega.agent")
    assert f"removed {machine}" in removed.stdout
    told = cell.omega("events", "--machine", machine).stdout
    assert f"machine {machine} removed" in told, told
    # Its agent's next heartbeat names a machine the cell no longer knows: it registers
    # it again, up (the operator's `down` went with the machine it was set on).
    wait_for(
        "the agent to register its machine again",
        lambda: {m["id"]: m["state"] for m in cell.json("nodes")}.get(machine) == "up",
    )
    told = cell.omega("events", "--machine", machine).stdout
    assert told.index(f"machine {machine} removed") < told.rindex(f"machine {machine} up"), told

    path = cell.data_dir.parent / "apart.yaml"
    path.write_text(
        SPEC.format(name="apart", shell="sleep 30", labels="{}") + "anti_affinity: true\n"
    )
    job = cell.json("submit", str(path))["id"]
    wait_for(
        "both tasks placed",
        lambda: cell.json("job", job)["tasks"].get("pending", 0) == 0,
    )
    hosts = [t["machine"] for t in cell.json("tasks", "--job", job)]
    assert sorted(hosts) == sorted(m["id"] for m in cell.json("nodes")), hosts
    cell.omega("kill", job, "--yes")


def test_events_tell_a_jobs_story(cell):
    job = cell.json("submit", spec(cell, "story", "{}", "exit 3"))["id"]
    wait_for("the job to end", lambda: cell.json("job", job)["state"] in ("done", "failed"))
    lines = cell.omega("events", "--job", job).stdout.splitlines()
    text = "\n".join(lines)
    assert f"job {job} submitted (2 tasks, batch)" in text, text
    assert re.search(rf"task {re.escape(job)}\.0 placed on agent-\d by batch", text), text
    assert re.search(rf"task {re.escape(job)}\.1 (exited|failed) on agent-\d with code 3", text)
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00  v\d+", x) for x in lines)
    records = [json.loads(x) for x in cell.omega("events", "--json").stdout.splitlines()]
    assert {"machine"} <= {r["kind"] for r in records}
    assert all(
        set(r) >= {"version", "at", "kind", "job", "task", "machine", "message"} for r in records
    )
    assert [r["version"] for r in records] == sorted(r["version"] for r in records)
    # Who sent each command: the admin submitted, the batch scheduler's own token placed.
    mine = [r for r in records if r["job"] == job]
    assert {r["by"] for r in mine if r["kind"] == "submitted"} == {"bootstrap (admin)"}
    assert {r["by"] for r in mine if r["kind"] == "placed"} == {"scheduler-batch (scheduler)"}
    assert f"job {job} submitted (2 tasks, batch)  [by bootstrap (admin)]" in text, text
    # A filter naming nothing the cell knows (a job's name for its id) is refused, not
    # answered with an empty feed.
    for flag, code in (("--job", "job_unknown"), ("--machine", "machine_unknown")):
        unknown = cell.omega("events", flag, "story", check=False)
        assert unknown.returncode == 1 and f"{code}: no " in unknown.stderr, unknown


def test_a_crash_loop_shows_its_restarts_and_why(cell, monkeypatch):
    # It read `starting  -  -` however often it had died: no restarts, no exit code.
    monkeypatch.delenv("COLUMNS", raising=False)  # piped: the reason is not wrapped
    path = cell.data_dir.parent / "crash.yaml"
    path.write_text(
        "name: crash\nscheduler: service\npriority: production\ntasks: 1\n"
        "resources: {cpu: 50m, memory: 16Mi}\n"
        'command: ["sh", "-c", "exit 3"]\nrestart: on-failure\ngrace_period: 1\n'
    )
    job = cell.json("submit", str(path))["id"]
    (task,) = wait_for(
        "a restart",
        lambda: [t for t in cell.json("tasks", "--job", job) if t["restarts"] >= 1],
    )
    assert (task["exit_code"], task["reason"]) == (3, "restart after exit:3"), task
    shown = cell.omega("tasks", "--job", job).stdout
    assert "restarts" in shown and "restart after exit:3" in shown, shown
    assert re.search(rf"{re.escape(job)}\.0 +│ \w+ +│ - +│ agent-\d │ 0 +│ [1-9]", shown), shown
    told = cell.omega("events", "--job", job).stdout
    assert f"task {job}.0 starting on " in told and "(restart after exit:3)" in told, told
    on = cell.json("tasks", "--machine", task["machine"])
    assert f"{job}.0" in {t["id"] for t in on} and {t["machine"] for t in on} == {task["machine"]}
    unknown = cell.omega("tasks", "--machine", "no-such-machine", check=False)
    assert unknown.returncode == 1 and "machine_unknown" in unknown.stderr, unknown
    cell.omega("kill", job)


def test_tokens_from_the_cli(cell):
    """`omega up` gave each part its narrowest token; a read-only token reads and may not
    write (403, nothing changed); a revoked one is refused (401); bad roles exit 2."""
    listed = {t["name"]: t for t in cell.json("token", "list")}
    assert listed["agent-0"]["role"] == "agent" and listed["agent-0"]["machines"] == ["agent-0"]
    assert listed["scheduler-batch"]["role"] == "scheduler"
    assert listed["bootstrap"]["role"] == "admin"
    secret = cell.json("token", "create", "--role", "read-only", "--name", "viewer")["secret"]
    as_viewer = {**cell.env, "OMEGA_TOKEN": secret}
    job = cell.json("submit", spec(cell, "guarded", "{}", "sleep 30"))["id"]
    viewer = cell.omega_as(as_viewer, "jobs", "--json")
    assert job in viewer.stdout, viewer.stderr
    refused = cell.omega_as(as_viewer, "kill", job)
    assert refused.returncode == 1 and "forbidden" in refused.stderr, refused.stderr
    assert cell.json("job", job)["state"] != "killed"
    cell.omega("token", "revoke", "viewer")
    gone = cell.omega_as(as_viewer, "jobs")
    assert gone.returncode == 1 and "unauthorized" in gone.stderr, gone.stderr
    bad = cell.omega("token", "create", "--role", "root", check=False)
    assert bad.returncode == 2 and "'root'" in bad.stderr, bad.stderr
    unbound = cell.omega("token", "create", "--role", "agent", check=False)
    assert unbound.returncode == 2 and "--machines" in unbound.stderr, unbound.stderr
    cell.omega("kill", job)


def scrape(address: str, token: str, cafile: str) -> dict[str, list]:
    """`/metrics` over https, checked against the cell's CA; the listener speaks no plain
    http and wants the bearer token, as everywhere."""
    url = f"https://{address}/metrics"
    ca = ssl.create_default_context(cafile=cafile)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{address}/metrics", headers={"authorization": f"Bearer {token}"})
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(url, headers={"authorization": f"Bearer {token}"}, timeout=10)
    assert httpx.get(url, timeout=10, verify=ca).status_code == 401
    answer = httpx.get(url, headers={"authorization": f"Bearer {token}"}, timeout=10, verify=ca)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return {f.name: f.samples for f in text_string_to_metric_families(answer.text)}


def value(families: dict[str, list], name: str, **labels: str) -> float:
    """The first sample named `name` (or `name_total`) whose labels include `labels`."""
    for samples in families.values():
        for sample in samples:
            if sample.name in (name, f"{name}_total") and labels.items() <= sample.labels.items():
                return sample.value
    raise AssertionError(f"no sample {name} {labels}")


def test_metrics_on_replica_scheduler_and_agent(cell):
    # A read-only token may scrape every part: each checks it against its copy of the cell.
    token = cell.json("token", "create", "--role", "read-only", "--name", "prometheus")["secret"]
    ca = cell.env["OMEGA_CA"]
    job = cell.json("submit", spec(cell, "measured", "{}"))["id"]
    wait_for("the job to end", lambda: cell.json("job", job)["state"] in ("done", "failed"))
    targets = json.loads((cell.data_dir / "metrics.json").read_text())
    parts = {group["labels"]["part"]: group["targets"] for group in targets}

    replica = scrape(parts["replica"][0], token, ca)
    assert value(replica, "omega_replica_raft_leader") == 1
    assert value(replica, "omega_replica_raft_term") >= 1
    assert value(replica, "omega_replica_version") >= value(replica, "omega_replica_raft_term")
    assert value(replica, "omega_replica_raft_applied_index") > 0
    assert value(replica, "omega_replica_watchers") >= 3  # schedulers and agents follow it
    assert value(replica, "omega_replica_requests", route="/v1/jobs", method="POST", code="200")
    assert value(replica, "omega_replica_commit_seconds_count") > 0

    by_kind = {}
    for address in parts["scheduler"]:
        families = scrape(address, token, ca)
        kind = families["omega_scheduler_transactions"][0].labels["kind"]
        by_kind[kind] = families
    batch = by_kind["batch"]
    assert value(batch, "omega_scheduler_transactions") >= 1
    assert value(batch, "omega_scheduler_claims_accepted") >= 2
    assert 0 <= value(batch, "omega_scheduler_busyness") <= 1
    assert value(batch, "omega_scheduler_decision_seconds_count") >= 1
    assert "omega_scheduler_conflicts" in batch and "omega_scheduler_pending_tasks" in batch

    machines = cell.json("nodes")
    agent = scrape(machines[0]["labels"]["omega.agent"], token, ca)
    assert value(agent, "omega_agent_machines") == 1
    assert "omega_agent_tasks" in agent and "omega_agent_oom_kills" in agent
    assert value(agent, "omega_agent_request_seconds_count", what="register") >= 1


def test_part_commands_list_their_real_flags(cell):
    assert "--kind" in cell.omega("scheduler", "--help").stdout
    assert "--work-dir" in cell.omega("agent", "--help").stdout


def test_top_writes_each_refresh_when_its_output_is_not_a_terminal(cell):
    # Piped or redirected (`omega top > log`), a live display draws nothing a file
    # keeps: each refresh is written out in full instead, as `top -b` does.
    shown = cell.omega("top", "--iterations", "2", "--interval", "0.2").stdout
    assert shown.count("replica") >= 2 and shown.count("schedulers") == 2, shown
    assert shown.count("machines: up=2") == 2, shown


def test_piped_tables_and_lines_keep_their_ids_and_commands_whole(cell, monkeypatch):
    # Off a terminal, rich assumed 80 columns: `omega jobs | grep` saw `web-2843…` and
    # `omega explain` broke its line in two mid-sentence.
    monkeypatch.delenv("COLUMNS", raising=False)
    name = "a-job-name-long-enough-to-crowd-eighty-columns"
    job = cell.json("submit", spec(cell, name, "{team: wide, env: a-long-label-value}"))["id"]
    listed = cell.omega("jobs", "-l", "team=wide").stdout
    assert job in listed and "…" not in listed, listed
    assert max(len(line) for line in listed.splitlines()) > 80, listed
    shown = cell.omega("tasks", "--job", job).stdout
    assert f"{job}.0" in shown and f"{job}.1" in shown and "…" not in shown, shown


def test_an_80_column_terminal_shows_whole_task_ids_and_states(cell, monkeypatch):
    # Rich fitted the table to 80 columns by cutting every column: three tasks of one job
    # read `web-284…`, `web-284…`, `web-284…`.
    monkeypatch.setenv("COLUMNS", "80")
    job = cell.json("submit", spec(cell, "w80", "{team: narrow}"))["id"]
    wait_for("both tasks exited", lambda: cell.json("job", job)["tasks"] == {"exited": 2})
    shown = cell.omega("tasks", "--job", job).stdout
    assert max(len(line) for line in shown.splitlines()) <= 80, shown
    for index in (0, 1):
        assert re.search(rf"{job}\.{index}\s+│ exited ", shown), shown


def test_an_operator_labels_machines_and_a_job_s_selector_chooses_by_them(cell):
    """`omega node label` (rules 14), as `kubectl label nodes`: KEY=VALUE sets, KEY- takes
    away; the batch scheduler process sees the new label and places only there."""
    first = sorted(n["id"] for n in cell.json("nodes"))[0]
    said = cell.omega("node", "label", first, "pool=fast").stdout
    assert f"labelled {first}: pool=fast" in said, said
    assert [n["id"] for n in cell.json("nodes", "-l", "pool=fast")] == [first]
    path = cell.data_dir.parent / "fast.yaml"
    path.write_text(SPEC.format(name="fast", labels="{}", shell="exit 0") + "selector: pool=fast\n")
    job = cell.json("submit", str(path))["id"]
    wait_for("the job to finish", lambda: cell.json("job", job)["state"] == "done")
    assert {t["machine"] for t in cell.json("tasks", "--job", job)} == {first}
    told = cell.omega("events", "--machine", first).stdout
    assert f"machine {first} labels now pool=fast  [by " in told, told  # not omega.agent=
    # The agent's own label is not an operator's to change; a refusal changes nothing.
    own = cell.omega("node", "label", first, "omega.agent=elsewhere:1", check=False)
    assert own.returncode != 0 and "agent's own" in own.stderr, own
    order = cell.omega("node", "label", "pool=slow", first, check=False)
    assert order.returncode == 2 and "machines come first" in order.stderr, order
    assert cell.json("nodes", "-l", "pool=slow") == []
    cell.omega("node", "label", first, "pool-")
    assert cell.json("nodes", "-l", "pool") == []
