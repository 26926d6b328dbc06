// One strategy: curves (inline SVG; the VaR chart by any method, its exceptions marked), VaR / ES by method,
// exposure, orders, fills against the slippage model, verification, rollout trail, audit trail.
"use strict";
const name = decodeURIComponent(location.pathname.split("/").pop());
const pct = (x) => (x === null || x === undefined) ? "—" : (100 * x).toFixed(2) + "%";
const num = (x, d = 2) => (x === null || x === undefined) ? "—" : Number(x).toLocaleString("en-US", {maximumFractionDigits: d});
const when = (ms) => new Date(ms).toISOString().replace("T", " ").slice(0, 16);
const nsWhen = (ns) => when(Number(ns) / 1e6);

function fill(id, rows) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren();
  for (const cells of rows) {
    const tr = document.createElement("tr");
    for (const text of cells) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
}

function line(svg, points, series, marks = []) {
  // series: [{key, colour}]; points: [{t, ...}]; marks: [{t, value, title}] drawn as dots (e.g. VaR exceptions)
  svg.replaceChildren();
  const values = points.flatMap((p) => series.map((s) => p[s.key])).concat(marks.map((m) => m.value))
    .filter((v) => v !== null && v !== undefined);
  if (points.length < 2 || values.length === 0) return;
  const [t0, t1] = [points[0].t, points[points.length - 1].t];
  let [lo, hi] = [Math.min(...values), Math.max(...values)];
  if (hi === lo) { hi += 1; lo -= 1; }
  const x = (t) => 5 + 590 * (t - t0) / (t1 - t0 || 1);
  const y = (v) => 155 - 150 * (v - lo) / (hi - lo);
  for (const s of series) {
    const path = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    path.setAttribute("points", points.filter((p) => p[s.key] !== null && p[s.key] !== undefined)
      .map((p) => `${x(p.t).toFixed(1)},${y(p[s.key]).toFixed(1)}`).join(" "));
    path.setAttribute("fill", "none");
    path.setAttribute("stroke", s.colour);
    path.setAttribute("stroke-width", "1.5");
    path.dataset.series = s.key;
    svg.appendChild(path);
  }
  for (const m of marks) {
    const dot = document.createElementNS("http://www.w3.org/2000/svg", "circle");
    dot.setAttribute("cx", x(m.t).toFixed(1));
    dot.setAttribute("cy", y(m.value).toFixed(1));
    dot.setAttribute("r", "3");
    dot.setAttribute("fill", "#b3261e");
    dot.dataset.exception = "1";
    const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
    title.textContent = m.title;
    dot.appendChild(title);
    svg.appendChild(dot);
  }
}

let measure = new URLSearchParams(location.search).get("measure") || "historical_99";

async function load() {
  const response = await fetch(`/api/strategy/${encodeURIComponent(name)}?measure=${encodeURIComponent(measure)}`,
                               {credentials: "same-origin"});
  if (response.status === 401) { location.href = "/login"; return; }
  const d = await response.json();
  document.getElementById("name").textContent = name;
  document.title = `QMP — ${name}`;
  const state = d.state || {};
  const badge = document.getElementById("status");
  badge.className = `badge ${state.status}`;
  badge.textContent = `${state.status}${state.reason ? " — " + state.reason : ""}`;
  line(document.getElementById("equity"), d.curve, [{key: "equity", colour: "#1f5fbf"}]);
  line(document.getElementById("drawdown"), d.curve, [{key: "drawdown_max", colour: "#b3261e"},
                                                     {key: "drawdown_24h", colour: "#e08a00"}]);
  line(document.getElementById("var"), d.curve, [{key: "var", colour: "#1f5fbf"}, {key: "es", colour: "#b3261e"}],
       d.exceptions.map((e) => ({t: e.t, value: e.loss, title: `${when(e.t)}: loss ${pct(e.loss)} > VaR ${pct(e.var)}`})));
  const risk = d.risk || {var: {}, es: {}, backtests: {}};
  const select = document.getElementById("measure");
  const keys = Object.keys(risk.var).sort();
  if (select.options.length !== keys.length) {
    select.replaceChildren(...keys.map((key) => new Option(key, key)));
  }
  select.value = d.measure;
  const test = (risk.backtests || {})[d.measure];
  document.getElementById("exceptions").dataset.count = d.exceptions.length;
  document.getElementById("exceptions").textContent = `${d.exceptions.length} exception${d.exceptions.length === 1 ? "" : "s"} ` +
    `of ${d.measure} marked (a loss beyond the VaR forecast the day before)` +
    (test ? `; the backtest window holds ${test.exceptions} in ${test.observations}, ${test.zone} zone` : "");
  const gate = document.getElementById("gate");
  gate.textContent = `Deploy gate ${d.gate.open ? "open" : "closed"}: ${d.gate.why}`;
  gate.dataset.gate = d.gate.open ? "open" : "closed";
  fill("verification", Object.entries(d.gate.tests).map(([test, t]) => [test, t.status + (t.quick ? " (quick)" : ""),
                                                                         t.summary || "", t.verified_at || ""]));
  const report = document.getElementById("report");
  report.hidden = !Object.values(d.gate.tests).some((t) => t.report);
  report.href = `/verification/${encodeURIComponent(name)}/`;
  fill("methods", Object.keys(risk.var).sort().map((key) => {
    const test = (risk.backtests || {})[key];
    return [key, pct(risk.var[key]), pct(risk.es[key]),
            test ? `${test.exceptions} / ${test.observations}` : "—",
            test ? `${test.zone} (Kupiec p ${num(test.kupiec_p, 3)})` : "—"];
  }));
  fill("exposure", d.exposure.map((e) => [e.symbol, num(e.quantity, 4), num(e.value, 0)]));
  fill("orders", d.orders.map((o) => [nsWhen(o.ts_event), o.symbol, o.side, num(o.quantity, 4), o.event,
                                      [o.reason_code, o.reason].filter(Boolean).join(": ")]));
  fill("fills", d.fills.map((f) => [when(f.t), f.symbol, f.side, num(f.quantity, 4), num(f.price, 4),
                                    num(f.arrival_price, 4), num(f.slippage_bps, 2), num(f.model_slippage_bps, 2),
                                    f.model_slippage_bps === null ? "—" : num(f.slippage_bps - f.model_slippage_bps, 2),
                                    num(f.fee, 2)]));
  const level = (value, [warning, critical]) => value === null || value === undefined ? "no reading" :
    value > critical ? "critical" : value > warning ? "warning" : "ok";
  fill("rollout", d.rollout.slice().reverse().map((e) => [nsWhen(e.ts_event), e.kind,
    `${e.phase_from || ""} → ${e.phase_to || ""}`, `${pct(e.allocation_before)} → ${pct(e.allocation_after)}`,
    Object.entries(e.thresholds || {}).map(([metric, limits]) =>
      `${metric} ${num((e.metrics || {})[metric], 4)} (${limits.map((x) => num(x, 4)).join(" / ")}: ` +
      `${level((e.metrics || {})[metric], limits)})`).join("; "),
    e.actor, e.reason]));
  fill("gates", d.gates.map((g) => [g.metric, g.level, num(g.value, 4), num(g.warning, 4), num(g.critical, 4),
                                    g.action, g.reading + (g.detail ? ` — ${g.detail}` : "")]));
  fill("audit", d.audit.map((a) => [when(a.t), JSON.stringify(a.command), a.sender || a.command.issued_by || "",
                                    `${a.state.status}${a.state.reason ? " — " + a.state.reason : ""}`]));
}

document.getElementById("measure").addEventListener("change", (e) => {
  measure = e.target.value;
  history.replaceState(null, "", `?measure=${encodeURIComponent(measure)}`);
  load();
});
load();
new EventSource("/api/events").addEventListener("state", (e) => {
  if (JSON.parse(e.data).strategy === name) load();
});
setInterval(load, 5000);  // curves and tables: every 5 s (the state above: as it changes)
