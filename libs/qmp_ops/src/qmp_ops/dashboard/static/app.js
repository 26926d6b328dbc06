// The overview: rows from /api/overview, then kept current from /api/events (server-sent events).
"use strict";
const rows = new Map();  // strategy -> {state, rollout, risk, portfolio}
const percent = (x) => (x === null || x === undefined) ? "—" : (100 * x).toFixed(2) + "%";
const money = (x) => (x === null || x === undefined) ? "—" : Math.round(x).toLocaleString("en-US");

function cell(text, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  td.textContent = text;
  return td;
}

function render(name) {
  const row = rows.get(name);
  const body = document.querySelector("#strategies tbody");
  let tr = body.querySelector(`tr[data-strategy="${CSS.escape(name)}"]`);
  if (!tr) {
    tr = document.createElement("tr");
    tr.dataset.strategy = name;
    body.appendChild(tr);
  }
  const state = row.state || {status: "ACTIVE", allocation: 1, size_multiplier: 1};
  const risk = row.risk || {};
  const book = row.portfolio || {};
  tr.replaceChildren();
  const title = cell("");
  const link = document.createElement("a");
  link.href = `/strategy/${encodeURIComponent(name)}`;
  link.textContent = name;
  title.appendChild(link);
  tr.appendChild(title);
  const status = cell("", "state");
  const badge = document.createElement("span");
  badge.className = `badge ${state.status}`;
  badge.dataset.role = "status";
  badge.textContent = state.status + (state.safe_mode ? " (safe)" : "");
  status.appendChild(badge);
  if (state.reason || state.issued_by) {
    // Who set it: the person (the NATS user the audit recorded) where a person did, else the source.
    const who = state.set_by && state.set_by !== state.issued_by ? `${state.set_by} (${state.issued_by})` :
      (state.set_by || state.issued_by || "");
    const why = document.createElement("span");
    why.className = "reason";
    why.dataset.role = "set-by";
    why.textContent = `${state.reason || ""}${who ? " — " + who : ""}`;
    status.appendChild(why);
  }
  tr.appendChild(status);
  tr.appendChild(cell(row.rollout ? `${row.rollout.phase} (${row.rollout.status})` : "—"));
  tr.appendChild(cell(percent(state.allocation)));
  tr.appendChild(cell((state.size_multiplier ?? 1).toFixed(2)));
  tr.appendChild(cell(money(book.equity ?? risk.equity)));
  const pnl = book.day_pnl ?? row.day_pnl;
  const today = cell(pnl === null || pnl === undefined ? "—" : (pnl > 0 ? "+" : "") + money(pnl),
                     pnl < 0 ? "loss" : "");
  today.dataset.role = "day-pnl";
  tr.appendChild(today);
  tr.appendChild(cell(percent(risk.drawdown_24h)));
  tr.appendChild(cell(percent(risk.drawdown_max)));
  tr.appendChild(cell(percent(risk.var_99)));
  tr.appendChild(cell(percent(risk.es_99)));
  tr.appendChild(cell((risk.breakers || []).join(", ") || "—"));
  tr.appendChild(cell(book.orders_total === undefined ? "—" :
                      `${book.orders_total} / ${book.denied_total} / ${book.fills_total}`));
  const gate = cell(row.gate ? (row.gate.open ? "open" : "closed") : "—");
  if (row.gate) { gate.title = row.gate.why; gate.dataset.gate = row.gate.open ? "open" : "closed"; }
  tr.appendChild(gate);
  const actions = cell("", "actions");
  for (const [label, command] of [["Halt", "halt"], ["Resume", "resume"], ["Resume safe", "resume_safe"],
                                  ["Allocation…", "set_allocation"], ["Order size…", "reduce_order_size"],
                                  ["Kill", "kill"]]) {
    const button = document.createElement("button");
    button.textContent = label;
    button.dataset.command = command;
    button.addEventListener("click", () => act(name, command));
    actions.appendChild(button);
  }
  if (row.rollout) {
    for (const [label, verb] of [["Promote", "promote"], ["Pause", "pause"], ["Resume rollout", "resume"],
                                 ["Roll back", "rollback"]]) {
      const button = document.createElement("button");
      button.textContent = label;
      button.dataset.verb = verb;
      button.addEventListener("click", () => rollout(name, verb, row.rollout.phase));
      actions.appendChild(button);
    }
  }
  tr.appendChild(actions);
}

async function act(strategy, command) {
  let body;
  if (command === "halt" || command === "kill") {
    const reason = prompt(`${command === "kill" ? "Kill" : "Halt"} ${strategy}: why?`, "");
    if (reason === null) return;
    if (!confirm(`${command === "kill" ? "Kill" : "Halt"} ${strategy} now?`)) return;
    body = {command, reason: reason || `${command} from the dashboard`};
    if (command === "kill") body.flatten = confirm("Also close every position (flatten)?");
  } else if (command === "resume" || command === "resume_safe") {
    const safe = command === "resume_safe";
    if (!confirm(`Resume ${strategy}${safe ? " at half size until the next clean gate" : ""}?`)) return;
    body = {command: "resume", mode: safe ? "safe" : "normal"};
  } else if (command === "set_allocation") {
    const value = prompt(`Allocation of ${strategy} (0 to 1):`, "");
    if (value === null) return;
    if (!confirm(`Set the allocation of ${strategy} to ${value}?`)) return;
    body = {command, allocation: Number(value)};
  } else {
    const value = prompt(`Order size factor for ${strategy} (0 to 1):`, "0.5");
    if (value === null) return;
    if (!confirm(`Reduce the order size of ${strategy} to ${value}?`)) return;
    body = {command, factor: Number(value)};
  }
  const response = await fetch(`/api/control/${encodeURIComponent(strategy)}`, {
    method: "POST", headers: {"Content-Type": "application/json", "X-QMP-Request": "1"},
    body: JSON.stringify(body), credentials: "same-origin"});
  const reply = await response.json();
  document.getElementById("reply").textContent = JSON.stringify(reply, null, 2);
  if (reply.state && reply.state.strategy) merge(reply.state.strategy, {state: reply.state});
}

async function rollout(strategy, verb, phase) {
  const reason = prompt(`${verb} the rollout of ${strategy} (now in phase ${phase}): why?`, "");
  if (reason === null) return;
  if (!confirm(`${verb} the rollout of ${strategy}?`)) return;
  const response = await fetch(`/api/rollout/${encodeURIComponent(strategy)}`, {
    method: "POST", headers: {"Content-Type": "application/json", "X-QMP-Request": "1"},
    body: JSON.stringify({verb, reason, expected_phase: phase}), credentials: "same-origin"});
  const reply = await response.json();
  document.getElementById("reply").textContent = JSON.stringify(reply, null, 2);
  if (reply.rollout) {
    const r = reply.rollout;
    const phase = r.phase_index >= 0 && r.phase_index < r.phases.length ? r.phases[r.phase_index].name : "none";
    merge(strategy, {rollout: {strategy, phase, status: r.status, allocation: r.allocation}});
  }
}

function merge(name, part) {
  rows.set(name, Object.assign(rows.get(name) || {}, part));
  render(name);
}

function showHealth(health) {
  const box = document.getElementById("services");
  box.replaceChildren();
  for (const [service, reply] of Object.entries(health)) {
    const badge = document.createElement("span");
    badge.className = `badge ${reply.status}`;
    badge.dataset.service = service;
    badge.textContent = `${service}: ${reply.status}`;
    box.appendChild(badge);
  }
}

async function start() {
  const response = await fetch("/api/overview", {credentials: "same-origin"});
  if (response.status === 401) { location.href = "/login"; return; }
  const overview = await response.json();
  document.getElementById("user").textContent = `signed in as ${overview.user}`;
  for (const row of overview.strategies) merge(row.strategy, row);
  fetch("/api/health", {credentials: "same-origin"}).then((r) => r.json()).then(showHealth);
  const events = new EventSource("/api/events");
  const live = document.getElementById("live");
  events.onopen = () => { live.textContent = "live"; live.className = "live on"; };
  events.onerror = () => { live.textContent = "reconnecting…"; live.className = "live off"; };
  events.addEventListener("state", (e) => { const s = JSON.parse(e.data); if (s.strategy !== "ALL") merge(s.strategy, {state: s}); });
  events.addEventListener("risk", (e) => { const r = JSON.parse(e.data); merge(r.strategy, {risk: r}); });
  events.addEventListener("portfolio", (e) => { const p = JSON.parse(e.data); merge(p.strategy, {portfolio: p}); });
  events.addEventListener("deploy", () => fetch("/api/overview", {credentials: "same-origin"})
    .then((r) => r.json()).then((o) => o.strategies.forEach((row) => merge(row.strategy, {rollout: row.rollout}))));
  events.addEventListener("health", (e) => showHealth(JSON.parse(e.data)));
}

start();
