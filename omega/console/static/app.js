// The omega-cell console (see omega/console/__init__.py). No framework and no build step:
// each page is a function that reads the cell's read models and returns HTML; the watch
// feed says when to read them again.
"use strict";

const TOKEN_KEY = "omega.token";
const HISTORY_POINTS = 90; // scheduler figures kept for the sparklines (one per refresh)
const FEED_KEPT = 500; // commands kept for the events page and a job's recent changes
const FEED_BACKLOG = 100; // commands from before sign-in that the feed starts with (a busy
// cell's commands may each be large: a hollow agent's usage reports, thousands of claims)

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  version: 0,
  feed: [], // [{version, at, type, text, doc}], newest last
  history: {}, // scheduler name -> [{busyness, conflict}]
  following: null, // AbortController of the watch stream
  refreshTimer: null,
  rendering: false,
  again: false,
  me: null, // {name, role} of the token signed in (GET /v1/whoami)
  feedFrom: 1, // the first version the feed was read from (older commands are not shown)
};

// Roles that may change jobs and machines (`cellstore.access`): the others see no buttons,
// rather than buttons every press of which is refused.
const OPERATORS = new Set(["admin", "operator"]);
const mayOperate = () => state.me !== null && OPERATORS.has(state.me.role);

const $ = (selector, root = document) => root.querySelector(selector);

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
  })[c]);
}

class CellError extends Error {
  constructor(error) {
    super(`${error.code}: ${error.message}${error.field ? ` (${error.field})` : ""}`);
    this.code = error.code;
  }
}

async function api(method, path, body) {
  const headers = { authorization: `Bearer ${state.token}` };
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    throw new CellError((data && data.error) || { code: `http_${response.status}`, message: response.statusText });
  }
  return data;
}

// -- quantities, as the CLI prints them (omega/units.py) --------------------------------

function short(value) {
  return value < 100 ? value.toFixed(1).replace(/\.0$/, "") : value.toFixed(0);
}

function humanBytes(size) {
  for (const [suffix, unit] of [["Ti", 2 ** 40], ["Gi", 2 ** 30], ["Mi", 2 ** 20], ["Ki", 2 ** 10]]) {
    if (size >= unit) return short(size / unit) + suffix;
  }
  return String(size);
}

function amount(view, dim) {
  if (dim === "cpu") return view.cpu_milli || 0;
  if (`${dim}_bytes` in view || dim === "memory" || dim === "disk") return view[`${dim}_bytes`] || 0;
  return view[dim] || 0;
}

function human(view, dim) {
  const n = amount(view, dim);
  if (dim === "cpu") return n > 0 && n < 1000 ? `${n}m` : short(n / 1000);
  if (`${dim}_bytes` in view || dim === "memory" || dim === "disk") return humanBytes(n);
  return String(n);
}

function dimensions(view) {
  return Object.keys(view).filter((d) => !d.endsWith("_milli") && !d.endsWith("_bytes"));
}

function counts(tasks, job) {
  const parts = Object.entries(tasks).map(([s, n]) =>
    `<a href="#/job/${encodeURIComponent(job)}" class="state ${esc(s)}">${esc(s)}=${n}</a>`);
  return parts.join(" ") || "-";
}

function labels(map) {
  const shown = Object.entries(map || {}).filter(([k]) => !k.startsWith("omega."));
  return shown.map(([k, v]) => `<span class="label">${esc(k)}=${esc(v)}</span>`).join(" ") || "-";
}

function heat(fraction) {
  const f = Math.max(0, Math.min(1, fraction));
  return `hsl(${Math.round(120 * (1 - f))}, 65%, ${Math.round(88 - 30 * f)}%)`;
}

function ink(fraction) {
  const f = Math.max(0, Math.min(1, fraction));
  return `hsl(${Math.round(120 * (1 - f))}, 60%, 38%)`;
}

function count(n, noun) {
  return `${n} ${noun}${n === 1 ? "" : "s"}`;
}

function when(seconds) {
  return seconds ? new Date(seconds * 1000).toISOString().replace("T", " ").slice(0, 19) : "-";
}

// Both figures are fractions: drawn against 1 (or the largest point, should a conflict
// fraction pass 1), so that a scheduler busy 0.01% of the time does not draw as if full.
function spark(points, key) {
  if (points.length < 2) return "";
  const w = 120, h = 24, top = Math.max(1, ...points.map((p) => p[key]));
  const xy = points.map((p, i) =>
    `${(i * w / (points.length - 1)).toFixed(1)},${(h - (p[key] / top) * (h - 2) - 1).toFixed(1)}`);
  return `<svg class="spark" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}"><polyline points="${xy.join(" ")}"/></svg>`;
}

// -- pages ---------------------------------------------------------------------------

async function cellPage() {
  const [summary, machines] = await Promise.all([api("GET", "/v1/cell"), api("GET", "/v1/machines")]);
  for (const s of summary.schedulers) {
    const points = (state.history[s.name] ||= []);
    points.push({ busyness: s.figures.busyness || 0, conflict: s.figures.conflict_fraction || 0 });
    if (points.length > HISTORY_POINTS) points.shift();
  }
  const tiles = machineTiles(machines.machines);
  const schedulers = summary.schedulers.map((s) => {
    const f = s.figures, points = state.history[s.name] || [];
    return `<tr data-scheduler="${esc(s.name)}"><td>${esc(s.name)}</td><td>${esc(s.kind)}</td>
      <td class="num">${Math.round(f.transactions || 0)}</td>
      <td class="num">${f.conflict_fraction === undefined ? "-" : f.conflict_fraction.toFixed(3)}</td><td>${spark(points, "conflict")}</td>
      <td class="num">${(f.busyness || 0).toFixed(3)}</td><td>${spark(points, "busyness")}</td>
      <td class="num"><a href="#/jobs?state=pending">${s.blocked}</a></td></tr>`;
  }).join("");
  const taskCounts = Object.entries(summary.tasks).filter(([, n]) => n).map(([s, n]) => `<span class="state ${esc(s)}">${esc(s)}=${n}</span>`).join(" ");
  const machineCounts = Object.entries(summary.machines).map(([s, n]) => `${esc(s)}=${n}`).join(" ");
  return `
    <h2>Cell <small>version ${summary.version}</small></h2>
    <p class="summary">jobs: <a href="#/jobs">${summary.jobs}</a> &nbsp; tasks: ${taskCounts || "-"} &nbsp; machines: ${machineCounts || "-"}</p>
    <h3>Machines <small>colour: the most used dimension</small></h3>${tiles || "<p>No machines yet.</p>"}
    <h3>Schedulers</h3>
    <table class="grid" id="schedulers"><thead><tr><th>scheduler</th><th>kind</th><th>txns</th>
      <th>conflict fraction</th><th></th><th>busyness</th><th></th><th>blocked</th></tr></thead>
      <tbody>${schedulers || `<tr><td colspan="8">No scheduler has reported.</td></tr>`}</tbody></table>`;
}

// Past this many machines a tile is a small square (colour and a tooltip; its page has the
// rest): 2,000 full tiles made a page 54,000 pixels long.
const SMALL_TILES_OVER = 120;

function machineTiles(machines) {
  const domains = {};
  for (const m of machines) (domains[m.domain] ||= []).push(m);
  const dims = [...new Set(machines.flatMap((m) => dimensions(m.capacity)))];
  const small = machines.length > SMALL_TILES_OVER;
  // Numbers read as numbers (rack-2 before rack-10), as the machines within come.
  const order = (a, b) => a.localeCompare(b, "en", { numeric: true });
  return Object.keys(domains).sort(order).map((domain) => `
    <section class="domain"><h3>failure domain ${esc(domain)} <small>${count(domains[domain].length, "machine")}</small></h3>
      <div class="tiles${small ? " small" : ""}">${domains[domain].map((m) => (small ? dot : tile)(m, dims)).join("")}</div>
    </section>`).join("");
}

// Each dimension the machine has: its share used and "500m/2"; and the most used share,
// which colours the machine. What a tile's bars and a small square's tooltip both show.
function usage(m, dims) {
  const shares = dims.filter((dim) => amount(m.capacity, dim)).map((dim) => ({
    dim, f: amount(m.used, dim) / amount(m.capacity, dim),
    text: `${human(m.used, dim)}/${human(m.capacity, dim)}`,
  }));
  return [Math.max(0, ...shares.map((s) => s.f)), shares];
}

function dot(m, dims) {
  const [worst, shares] = usage(m, dims);
  const look = m.state === "up" ? ` style="background:${heat(worst)}"` : "";
  const said = shares.map((s) => `${s.dim} ${s.text}`).join(", ");
  const title = `${m.id} ${m.state}: ${said}; ${count(m.tasks, "task")}`;
  return `<a class="tile dot ${esc(m.state)}" href="#/machine/${encodeURIComponent(m.id)}" data-machine="${esc(m.id)}" title="${esc(title)}"${look}></a>`;
}

function tile(m, dims) {
  const [worst, shares] = usage(m, dims);
  const bars = shares.map(({ dim, f, text }) => `<div class="bar" title="${esc(dim)} ${text}">
      <span class="dim">${esc(dim)}</span><span class="track"><span class="fill" style="width:${(100 * Math.min(1, f)).toFixed(1)}%;background:${ink(f)}"></span></span>
      <span class="amt">${text}</span></div>`).join("");
  const look = m.state === "up" ? `background:${heat(worst)}` : "";
  return `<a class="tile ${esc(m.state)}" href="#/machine/${encodeURIComponent(m.id)}" data-machine="${esc(m.id)}" style="${look}">
    <div class="tile-head"><b>${esc(m.id)}</b><span class="state ${esc(m.state)}">${esc(m.state)}</span></div>
    ${bars}<div class="tile-foot">${count(m.tasks, "task")}</div></a>`;
}

const EXAMPLE_SPEC = {
  name: "hello", scheduler: "batch", tasks: 3,
  resources: { cpu: "100m", memory: "16Mi" },
  command: ["sh", "-c", "echo hello; sleep 30"],
  labels: { team: "console" },
};

async function jobsPage(query) {
  const wanted = query.get("state");
  const jobs = (await api("GET", `/v1/jobs${wanted ? `?state=${encodeURIComponent(wanted)}` : ""}`)).jobs;
  jobs.sort((a, b) => b.submitted_at - a.submitted_at);
  const rows = jobs.map((j) => `<tr data-job="${esc(j.id)}">
      <td><a href="#/job/${encodeURIComponent(j.id)}">${esc(j.id)}</a></td><td>${esc(j.scheduler)}</td>
      <td class="num">${j.priority}</td><td class="state ${esc(j.state)}">${esc(j.state)}</td>
      <td>${counts(j.tasks, j.id)}</td><td class="num">${j.version ?? "-"}</td><td>${rollout(j.rollout)}</td>
      <td>${labels(j.labels)}</td><td>${when(j.submitted_at)}</td>
      <td>${["done", "failed", "killed"].includes(j.state) || !mayOperate() ? "" : `<button class="kill" data-kill="${esc(j.id)}">Kill</button>`}</td></tr>`).join("");
  return `
    <h2>Jobs${wanted ? ` <small>${esc(wanted)}</small>` : ""}</h2>
    <table class="grid" id="jobs"><thead><tr><th>id</th><th>scheduler</th><th>priority</th><th>state</th>
      <th>tasks</th><th>version</th><th>update</th><th>labels</th><th>submitted</th><th></th></tr></thead>
      <tbody>${rows || `<tr><td colspan="10">No jobs.</td></tr>`}</tbody></table>
    ${mayOperate() ? "" : readOnlyNote()}
    <details id="submit-box" ${mayOperate() ? "" : "hidden"} ${jobs.length ? "" : "open"}><summary>Submit a job</summary>
      <form id="submit-form" class="stack">
        <label>Job spec (JSON, the fields of a spec file: see examples/)<textarea id="spec" rows="10" spellcheck="false"></textarea></label>
        <label>Job id (optional) <input id="job-id" placeholder="name-xxxxxx"></label>
        <button type="submit">Submit</button> <span id="submit-error" class="error"></span>
      </form></details>`;
}

// An update's progress, as `omega history` words it: state, tasks on the new version.
function rollout(r) {
  if (!r) return "-";
  const active = r.state === "canary" || r.state === "rolling";
  return `<span class="rollout ${esc(r.state)}">v${r.previous}→v${r.version} ${esc(r.state)}${
    active ? ` ${r.current}/${r.size}` : ""}</span>`;
}

// Where a running task serves, as a link (`GET /v1/endpoints`: the port its agent reported,
// at the agent's host); muted while it is not ready.
function address(endpoint) {
  if (!endpoint) return "-";
  const link = `<a href="http://${esc(endpoint.address)}/" target="_blank" rel="noopener">${esc(endpoint.address)}</a>`;
  return endpoint.ready ? link : `<span class="muted" title="not ready">${link}</span>`;
}

// Which machines a job's spec lets its tasks run on: its constraints and selector.
function placement(spec) {
  const said = [
    ...Object.entries((spec && spec.constraints) || {}).map(([k, v]) => `${k}=${v}`),
    ...(spec && spec.selector ? [spec.selector] : []),
  ];
  return said.length ? `<code>${esc(said.join(","))}</code>` : "any";
}

async function jobPage(id) {
  const [why, tasks, history, served] = await Promise.all([
    api("GET", `/v1/explain?target=${encodeURIComponent(id)}`),
    api("GET", `/v1/tasks?job=${encodeURIComponent(id)}`),
    api("GET", `/v1/jobs/history?id=${encodeURIComponent(id)}`),
    api("GET", `/v1/endpoints?job=${encodeURIComponent(id)}`),
  ]);
  const j = why.job;
  const at = new Map(served.endpoints.map((e) => [e.task, e]));
  const rows = tasks.tasks.map((t) => `<tr data-task="${esc(t.id)}"><td>${esc(t.id)}</td>
      <td class="state ${esc(t.state)}">${esc(t.state)}</td>
      <td>${t.healthy === null ? "-" : t.healthy ? "healthy" : "unhealthy"}</td>
      <td>${t.machine ? `<a href="#/machine/${encodeURIComponent(t.machine)}">${esc(t.machine)}</a>` : "-"}</td>
      <td class="address">${address(at.get(t.id))}</td>
      <td class="num">${t.incarnation}</td><td class="num">${t.restarts}</td><td class="num">${t.version}</td>
      <td class="num">${t.exit_code ?? "-"}</td><td>${esc(t.reason || "")}</td></tr>`).join("");
  let explanation = "";
  if (why.pending) {
    const accounts = Object.entries(why.schedulers);
    explanation = `<section id="explanation" class="explain"><h3>Why ${why.pending} tasks are pending</h3>${
      accounts.length
        ? accounts.map(([name, text]) => `<p><b>${esc(name)}</b>: ${esc(text)}</p>`).join("")
        : `<p>No scheduler has reported on this job yet (is a ${esc(j.scheduler)} scheduler running?)</p>`}</section>`;
  }
  const recent = state.feed.filter((e) => e.text.includes(id)).slice(-20).reverse();
  state.currentSpec = history.versions.length ? history.versions[history.versions.length - 1].spec : null;
  const killable = !["done", "failed", "killed"].includes(j.state) && mayOperate();
  return `
    <h2>Job ${esc(j.id)} <span class="state ${esc(j.state)}" id="job-state">${esc(j.state)}</span>
      ${killable ? `<button class="kill" data-kill="${esc(j.id)}">Kill</button>` : ""}</h2>
    <dl class="facts">
      <dt>scheduler</dt><dd>${esc(j.scheduler)}</dd><dt>priority</dt><dd>${j.priority} (${esc(j.band)})</dd>
      <dt>owner</dt><dd>${esc(j.owner)}</dd><dt>tasks</dt><dd>${counts(j.tasks, j.id)}</dd>
      <dt>each task</dt><dd>${dimensions(j.resources).map((d) => `${esc(d)} ${human(j.resources, d)}`).join(", ")}</dd>
      <dt>command</dt><dd><code>${esc(j.command.join(" "))}</code></dd>
      <dt>labels</dt><dd>${labels(j.labels)}</dd><dt>machines</dt><dd id="job-machines">${placement(state.currentSpec)}</dd>
      <dt>submitted</dt><dd>${when(j.submitted_at)}</dd>
      <dt>version</dt><dd>${j.version} (stable ${j.stable_version}); update: ${rollout(j.rollout)}</dd>
      <dt>available</dt><dd>${j.available} of ${j.size}${j.max_unavailable != null ? `; at most ${j.max_unavailable} unavailable` : ""}</dd>
    </dl>
    ${mayOperate() ? "" : readOnlyNote()}
    ${killable ? `<form id="scale-form" class="inline">Scale to <input id="scale-tasks" type="number" min="0" value="${j.size}"> tasks <button type="submit">Scale</button>
      ${j.state === "idle" ? "" : `<button type="button" data-restart="${esc(j.id)}">Restart</button>`} <span id="scale-error" class="error"></span>
      ${j.rollout && j.rollout.state === "canary" ? `<button type="button" data-promote="${esc(j.id)}">Promote the canary</button>` : ""}</form>
    <details id="update-box"><summary>Update the spec (a new version, rolled out by its scheduler)</summary>
      <form id="update-form" class="stack"><textarea id="update-spec" rows="10" spellcheck="false"></textarea>
        <button type="submit">Update</button> <span id="update-error" class="error"></span></form></details>` : ""}
    ${explanation}
    <h3>Tasks</h3>
    <table class="grid" id="tasks"><thead><tr><th>task</th><th>state</th><th>health</th><th>machine</th>
      <th>address</th><th>incarnation</th><th>restarts</th><th>version</th><th>exit</th><th>reason</th></tr></thead><tbody>${rows}</tbody></table>
    <h3>History <small>version ${history.version}, stable ${history.stable_version}</small></h3>
    ${versionsTable(history)}
    <h3>Recent changes</h3>
    ${feedTable(recent, `omega events --job ${j.id}`)}`;
}

async function machinePage(id) {
  let m, tasks;
  try {
    [m, tasks] = await Promise.all([
      api("GET", `/v1/machines?id=${encodeURIComponent(id)}`),
      api("GET", `/v1/tasks?machine=${encodeURIComponent(id)}`),
    ]);
  } catch (e) {
    if (e.code !== "machine_unknown") throw e;
    return `<h2>Machine ${esc(id)}</h2><p class="error">No machine ${esc(id)} in this cell.</p>`;
  }
  const rows = tasks.tasks.map((t) => `<tr data-task="${esc(t.id)}"><td>${esc(t.id)}</td>
      <td><a href="#/job/${encodeURIComponent(t.job)}">${esc(t.job)}</a></td>
      <td class="state ${esc(t.state)}">${esc(t.state)}</td><td class="num">${t.incarnation}</td>
      <td>${t.usage ? `cpu ${human(t.usage, "cpu")}, memory ${human(t.usage, "memory")}` : "-"}</td></tr>`).join("");
  const buttons = !mayOperate() ? "" : ["up", "draining", "down"].filter((s) => s !== m.state)
    .map((s) => `<button data-machine-state="${s}">Set ${s}</button>`).join(" ") +
    // Only a machine that is down may be removed (`RemoveMachines`): offered then alone.
    (m.state === "down" ? ` <button data-remove-machine="${esc(m.id)}">Remove</button>` : "");
  return `
    <h2>Machine ${esc(m.id)} <span class="state ${esc(m.state)}" id="machine-state">${esc(m.state)}</span></h2>
    <p>${buttons} <span class="note">draining: takes no new tasks; down: its tasks are lost and placed elsewhere; removed: forgotten (its agent, if it runs, registers it again).</span></p>
    ${mayOperate() ? `<form id="label-form" class="inline">Labels <input id="label-words" placeholder="pool=fast disk-" spellcheck="false">
      <button type="submit">Apply</button> <span class="note">as omega node label: key=value sets, key- takes away; kept when its agent registers again</span>
      <span id="label-error" class="error"></span></form>` : ""}
    <div class="tiles">${tile(m, dimensions(m.capacity))}</div>
    <dl class="facts"><dt>failure domain</dt><dd>${esc(m.domain)}</dd><dt>labels</dt><dd id="machine-labels">${labels(m.labels)}</dd>
      <dt>reserved</dt><dd>${dimensions(m.reserved).map((d) => `${esc(d)} ${human(m.reserved, d)}`).join(", ")}</dd>
      <dt>last heartbeat</dt><dd>${when(m.last_heartbeat)}</dd></dl>
    <h3>Tasks <small>${m.tasks}</small></h3>
    <table class="grid" id="tasks"><thead><tr><th>task</th><th>job</th><th>state</th><th>incarnation</th>
      <th>usage</th></tr></thead><tbody>${rows || `<tr><td colspan="5">No tasks.</td></tr>`}</tbody></table>`;
}

async function eventsPage() {
  return `<h2>Events <small>the change feed: the last commands before this page opened, then each as it comes</small></h2>
    ${feedTable(state.feed.slice().reverse(), "omega events")}
    <p class="note"><code>omega events</code> prints the whole history, rendered task by task.</p>`;
}

function versionsTable(history) {
  const rollouts = {};
  for (const r of history.rollouts) rollouts[r.version] = r;
  const rows = history.versions.slice().reverse().map((v) => `<tr data-version="${v.version}">
    <td class="num">${v.version}</td><td>${when(v.made_at)}</td>
    <td>${v.changes.length ? v.changes.map(esc).join("<br>") : "submitted"}</td>
    <td>${rollout(rollouts[v.version])}</td>
    <td>${v.version !== history.version && mayOperate() ? `<button data-revert="${v.version}">Revert to v${v.version}</button>` : ""}</td></tr>`).join("");
  return `<table class="grid" id="history"><thead><tr><th>version</th><th>made</th><th>changes</th><th>update</th><th></th></tr></thead>
    <tbody>${rows}</tbody></table>`;
}

function readOnlyNote() {
  return `<p class="note" id="read-only">Signed in as ${esc(state.me ? `${state.me.name} (${state.me.role})` : "a token of unknown role")}: this page only reads. Jobs and machines are changed with an admin or operator token.</p>`;
}

// `whole`: the command that prints what this table cannot (commands before the feed began).
function feedTable(entries, whole) {
  const rows = entries.map((e) => `<tr><td class="num">${e.version}</td><td>${when(e.at)}</td>
    <td>${esc(e.type)}</td><td>${esc(e.text)}</td><td class="by">${esc(e.by)}</td></tr>`).join("");
  return `<table class="grid feed"><thead><tr><th>version</th><th>time</th><th>command</th><th></th><th>by</th></tr></thead>
    <tbody>${rows || `<tr><td colspan="5">Nothing since version ${state.feedFrom}, where this page's feed
      begins: <code>${esc(whole)}</code> prints the whole history.</td></tr>`}</tbody></table>`;
}

// Priority bands by number, as the wire carries them (`cellstate.model.Band`).
const BANDS = ["best-effort", "batch", "production", "monitoring"];

// A quota's limit as the wire carries it (cpu as "64000m", bytes, counts), in the
// CLI's words: a dimension it names may be 0 (none), one it does not name is unlimited.
function limitText(limit) {
  if (limit == null) return "cleared: unlimited";
  const told = Object.entries(limit).map(([dim, n]) => {
    if (dim === "cpu") return `cpu=${human({ cpu_milli: parseInt(n, 10) }, "cpu")}`;
    if (dim === "memory" || dim === "disk") return `${dim}=${humanBytes(n)}`;
    return `${dim}=${n}`;
  });
  return `set: ${told.join(" ") || "unlimited"}`;
}

// The first few of `items` and how many more: one command may claim or register
// thousands (a hollow agent's machines, a large job's placements).
function some(items, shown = 8) {
  const more = items.length - shown;
  return more > 0 ? `${items.slice(0, shown).join(", ")} and ${more} more` : items.join(", ");
}

// What a command says, in a line (the CLI's `omega events` renders the events it causes).
function describe(doc) {
  switch (doc.type) {
    case "submit_job": return `job ${doc.job} submitted (${count(doc.spec.tasks ?? 1, "task")}, ${doc.spec.scheduler})`;
    case "kill_job": return `job ${doc.job} killed`;
    case "update_job": return `job ${doc.job} updated`;
    case "scale_job": return `job ${doc.job} scaled to ${count(doc.tasks, "task")}`;
    case "revert_job": return `job ${doc.job} reverted to version ${doc.version}`;
    case "promote_job": return `job ${doc.job} canary promoted`;
    case "commit": {
      // Claims travel compact, as [task, machine, seqnum, victims] plus `true` for a claim
      // of a replacement (an update or a drain: the task named is the one it replaces);
      // whether the store accepted each shows in the tasks' states, not here.
      const claims = (doc.txn.claims || []).map((c) =>
        (Array.isArray(c) ? [c[0], c[1], c[4] === true] : [c.task, c.machine, c.replace === true]));
      return `${doc.txn.scheduler} claims ${some(claims.map(([task, machine, replace]) =>
        `${replace ? `${task}'s replacement` : task} on ${machine}`))}`;
    }
    // A running report may say nothing new but the health check's verdict: say it, or
    // the feed shows "running" twice where `omega events` says "healthy".
    // A run the agent stopped on the cell's word (`stopped:scaled (signal:SIGTERM)`) ended
    // as asked: "failed" would read as a fault.
    case "report_tasks": return some((doc.reports || []).map((r) => (r.reason || "").startsWith("stopped:")
      ? `task ${r.task} stopped (${r.reason.slice("stopped:".length)})`
      : `task ${r.task} ${r.state}${r.healthy == null ? "" : r.healthy ? ", healthy" : ", unhealthy"}` +
        `${r.exit_code != null ? ` code ${r.exit_code}` : ""}${r.reason ? ` (${r.reason})` : ""}`));
    case "set_machine_state": return `machine ${doc.machine} ${doc.state}`;
    case "register_machines": return `machines registered: ${some((doc.machines || []).map((m) => m.id))}`;
    case "expire_heartbeats": return "machines silent too long marked down";
    case "set_quota": return `quota of ${doc.owner} in ${BANDS[doc.band] ?? doc.band} ${limitText(doc.limit)}`;
    case "set_weights": return `weights set: ${Object.entries(doc.weights || {}).map(([o, w]) => `${o}=${w}`).join(" ")}`;
    case "create_token": return `token ${doc.name} (${doc.role}) created`;
    case "revoke_token": return `token ${doc.name} revoked`;
    case "raise_rules": return `cell rules raised to ${doc.rules}`;
    case "purge_jobs": return `jobs that ended before ${when(doc.before)} purged`;
    case "remove_machines": return `machines removed: ${some(doc.machines || [])}`;
    case "label_machines": return `machines labelled ${[
      ...Object.entries(doc.labels || {}).map(([k, v]) => `${k}=${v}`),
      ...(doc.remove || []).map((k) => `${k}-`)].join(" ")}: ${some(doc.machines || [])}`;
    default: return "";
  }
}

const QUIET = new Set(["heartbeat", "report_usage", "report_scheduler"]);

// -- the watch feed ------------------------------------------------------------------

async function follow() {
  if (state.following) state.following.abort();
  const control = (state.following = new AbortController());
  const live = $("#live");
  while (!control.signal.aborted) {
    try {
      const response = await fetch(`/v1/watch?from=${state.version + 1}`, {
        headers: { authorization: `Bearer ${state.token}` }, signal: control.signal,
      });
      if (!response.ok) throw new Error(`watch: HTTP ${response.status}`);
      live.textContent = "live"; live.className = "live on";
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let newline;
        while ((newline = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, newline);
          buffer = buffer.slice(newline + 1);
          if (line.trim()) take(JSON.parse(line));
        }
      }
    } catch (error) {
      if (control.signal.aborted) return;
      live.textContent = "reconnecting"; live.className = "live off";
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

function take(line) {
  if (line.snapshot !== undefined) {
    state.version = line.version;
    refreshSoon();
    return;
  }
  if (!line.commands) return;
  let changed = false;
  for (const [version, doc] of line.commands) {
    state.version = version;
    if (QUIET.has(doc.type)) {
      // Schedulers' figures and explanations arrive in their reports: the pages that show them.
      if (doc.type === "report_scheduler" && ["cell", "job"].includes(currentPage())) changed = true;
      continue;
    }
    changed = true;
    // Who sent it (rules 6): the token's name and role, as `omega events` shows it.
    const by = doc.by ? `${doc.by.name} (${doc.by.role})` : "";
    state.feed.push({ version, at: doc.at, type: doc.type, text: describe(doc), by, doc });
  }
  if (state.feed.length > FEED_KEPT) state.feed.splice(0, state.feed.length - FEED_KEPT);
  $("#live").dataset.version = state.version;
  if (changed) refreshSoon();
}

function refreshSoon() {
  if (state.refreshTimer) return;
  state.refreshTimer = setTimeout(() => { state.refreshTimer = null; render(); }, 250);
}

// -- routing and actions -------------------------------------------------------------

function currentPage() {
  return (location.hash.replace(/^#\//, "").split(/[/?]/)[0]) || "cell";
}

async function render() {
  if (!state.token) { signIn(); return; }
  if (state.rendering) { state.again = true; return; }
  state.rendering = true;
  const [path, search] = location.hash.replace(/^#\//, "").split("?");
  const [page, ...rest] = path.split("/");
  const arg = decodeURIComponent(rest.join("/"));
  const query = new URLSearchParams(search || "");
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("here", a.dataset.page === (page || "cell"));
  const main = $("#main");
  try {
    const html = page === "jobs" ? await jobsPage(query)
      : page === "job" ? await jobPage(arg)
      : page === "machine" ? await machinePage(arg)
      : page === "events" ? await eventsPage()
      : await cellPage();
    keepForm(main, () => { main.innerHTML = html; });
  } catch (error) {
    if (error.code === "unauthorized") { signOut("The token was refused; sign in again."); return; }
    main.innerHTML = `<p class="error" id="page-error">${esc(error.message)}</p>`;
  } finally {
    state.rendering = false;
    if (state.again) { state.again = false; refreshSoon(); }
  }
}

// A live refresh of the same page must not wipe what someone is typing or has opened.
function keepForm(main, replace) {
  const samePage = main.dataset.page === location.hash;
  const values = {}, open = {};
  for (const el of main.querySelectorAll("input[id], textarea[id]")) values[el.id] = el.value;
  for (const el of main.querySelectorAll("details[id]")) open[el.id] = el.open;
  const focus = document.activeElement?.id;
  replace();
  main.dataset.page = location.hash;
  if (samePage) {
    for (const [id, value] of Object.entries(values)) { const el = document.getElementById(id); if (el) el.value = value; }
    for (const [id, isOpen] of Object.entries(open)) {
      const el = document.getElementById(id);
      // Reopened by the refresh, not the user: its toggle handler must leave the text be.
      if (el && isOpen) { el.dataset.restored = "1"; el.open = true; }
    }
    if (focus) document.getElementById(focus)?.focus();
  }
  const spec = $("#spec", main);
  if (spec && !spec.value) spec.value = JSON.stringify(EXAMPLE_SPEC, null, 2);
}

async function submitJob(event) {
  event.preventDefault();
  const error = $("#submit-error");
  error.textContent = "";
  let spec;
  try {
    spec = JSON.parse($("#spec").value);
  } catch (e) {
    error.textContent = `The spec is not JSON: ${e.message}`;
    return;
  }
  if (spec && typeof spec === "object" && !spec.owner) spec.owner = "console";
  const body = { spec };
  const id = $("#job-id").value.trim();
  if (id) body.job = id;
  try {
    await api("POST", "/v1/jobs", body);
    const job = id || (await newest(spec.name));
    location.hash = `#/job/${encodeURIComponent(job)}`;
  } catch (e) {
    error.textContent = e.message;
  }
}

async function newest(name) {
  const jobs = (await api("GET", "/v1/jobs")).jobs.filter((j) => j.name === name);
  jobs.sort((a, b) => b.submitted_at - a.submitted_at);
  return jobs.length ? jobs[0].id : "";
}

async function act(target) {
  try {
    if (target.dataset.kill) {
      const job = target.dataset.kill;
      if (!confirm(`Kill job ${job}? Its tasks are stopped.`)) return;
      await api("POST", "/v1/jobs/kill", { job });
    } else if (target.dataset.revert) {
      const job = decodeURIComponent(location.hash.split("/")[2] || "");
      await api("POST", "/v1/jobs/revert", { job, version: Number(target.dataset.revert) });
    } else if (target.dataset.restart) {
      // `omega restart`: a version whose only change is the time in OMEGA_RESTARTED_AT.
      const job = target.dataset.restart;
      if (!confirm(`Restart job ${job}? Its tasks are replaced, a few at a time.`)) return;
      const spec = state.currentSpec;
      const env = { ...(spec.env || {}), OMEGA_RESTARTED_AT: new Date().toISOString() };
      await api("POST", "/v1/jobs/update", { job, spec: { ...spec, env } });
    } else if (target.dataset.promote) {
      await api("POST", "/v1/jobs/promote", { job: target.dataset.promote });
    } else if (target.dataset.removeMachine) {
      const machine = target.dataset.removeMachine;
      if (!confirm(`Remove machine ${machine} from the cell?`)) return;
      await api("POST", "/v1/machines/remove", { machines: [machine] });
      location.hash = "#/cell";
    } else if (target.dataset.machineState) {
      const machine = decodeURIComponent(location.hash.split("/")[2] || "");
      await api("POST", "/v1/machines/state", { machine, state: target.dataset.machineState });
    }
    refreshSoon();
  } catch (e) {
    alert(e.message);
  }
}

function signIn(message = "") {
  $("#nav").hidden = $("#signout").hidden = $("#live").hidden = true;
  $("#main").innerHTML = `
    <form id="signin" class="signin stack">
      <h2>Sign in to the cell</h2>
      <label>Token <input id="token" type="password" autocomplete="current-password"
        placeholder="OMEGA_TOKEN (in DATA_DIR/env)"></label>
      <button type="submit">Sign in</button>
      <p class="error" id="signin-error">${esc(message)}</p>
    </form>`;
  $("#token").focus();
}

async function trySignIn(event) {
  event.preventDefault();
  state.token = $("#token").value.trim();
  try {
    const summary = await api("GET", "/v1/cell");
    sessionStorage.setItem(TOKEN_KEY, state.token);
    await start(summary.version);
  } catch (e) {
    state.token = "";
    $("#signin-error").textContent = e.code === "unauthorized" ? "That token is not this cell's." : e.message;
  }
}

function signOut(message = "") {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = "";
  state.me = null;
  $("#me").textContent = "";
  if (state.following) state.following.abort();
  signIn(message);
}

async function start(version) {
  // The events page and a job's recent changes open on the last commands the replica
  // still keeps (at most FEED_BACKLOG), not empty: one before that needs a snapshot.
  let from = version + 1;
  try {
    const status = await api("GET", "/v1/status");
    from = Math.max(status.watch.oldest_resumable, version - FEED_BACKLOG + 1, 1);
  } catch (e) {
    // Only the backlog is lost: the feed still follows from now on.
  }
  state.version = Math.min(from, version + 1) - 1;
  state.feedFrom = state.version + 1;
  try {
    state.me = await api("GET", "/v1/whoami");
  } catch (e) {
    state.me = null; // a replica before /v1/whoami: read-only pages, which is safe
  }
  $("#me").textContent = state.me ? `${state.me.name} (${state.me.role})` : "";
  $("#nav").hidden = $("#signout").hidden = $("#live").hidden = false;
  follow();
  render();
}

async function updateJob(event) {
  event.preventDefault();
  const job = decodeURIComponent(location.hash.split("/")[2] || "");
  const error = $("#update-error");
  error.textContent = "";
  let spec;
  try {
    spec = JSON.parse($("#update-spec").value);
  } catch (e) {
    error.textContent = `The spec is not JSON: ${e.message}`;
    return;
  }
  try {
    await api("POST", "/v1/jobs/update", { job, spec });
    $("#update-spec").value = "";
    $("#update-box").open = false;
    refreshSoon();
  } catch (e) {
    error.textContent = e.message;
  }
}

async function scaleJob(event) {
  event.preventDefault();
  const job = decodeURIComponent(location.hash.split("/")[2] || "");
  const tasks = Number($("#scale-tasks").value);
  try {
    await api("POST", "/v1/jobs/scale", { job, tasks });
    refreshSoon();
  } catch (e) {
    $("#scale-error").textContent = e.message;
  }
}

// `omega node label`'s words: key=value sets a label, key- takes one away.
async function labelMachine(event) {
  event.preventDefault();
  const machine = decodeURIComponent(location.hash.split("/")[2] || "");
  const error = $("#label-error");
  error.textContent = "";
  const labels = {};
  const remove = [];
  for (const word of $("#label-words").value.split(/\s+/).filter(Boolean)) {
    const eq = word.indexOf("=");
    if (eq > 0) labels[word.slice(0, eq)] = word.slice(eq + 1);
    else if (word.endsWith("-") && word.length > 1) remove.push(word.slice(0, -1));
    else { error.textContent = `${word}: use key=value to set a label or key- to take one away`; return; }
  }
  try {
    await api("POST", "/v1/machines/labels", { machines: [machine], labels, remove });
    $("#label-words").value = "";
    refreshSoon();
  } catch (e) {
    error.textContent = e.message;
  }
}

document.addEventListener("submit", (event) => {
  if (event.target.id === "signin") trySignIn(event);
  else if (event.target.id === "label-form") labelMachine(event);
  else if (event.target.id === "submit-form") submitJob(event);
  else if (event.target.id === "scale-form") scaleJob(event);
  else if (event.target.id === "update-form") updateJob(event);
});
document.addEventListener("click", (event) => {
  const target = event.target.closest(
    "button[data-kill], button[data-machine-state], button[data-remove-machine], " +
    "button[data-revert], button[data-promote], button[data-restart]");
  if (target) act(target);
});
// Opening the update form starts from the job's current spec (read when it opens, so not a
// version that a live refresh has since replaced).
document.addEventListener("toggle", (event) => {
  if (event.target.id !== "update-box" || !event.target.isConnected) return;
  if (event.target.dataset.restored) { delete event.target.dataset.restored; return; }
  const area = $("#update-spec", event.target);
  area.value = event.target.open && state.currentSpec ? JSON.stringify(state.currentSpec, null, 2) : "";
}, true);
$("#signout").addEventListener("click", () => signOut());
window.addEventListener("hashchange", render);

(async () => {
  if (!state.token) { signIn(); return; }
  try {
    await start((await api("GET", "/v1/cell")).version);
  } catch (e) {
    signOut(e.code === "unauthorized" ? "" : e.message);
  }
})();
