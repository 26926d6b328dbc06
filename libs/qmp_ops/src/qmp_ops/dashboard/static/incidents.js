// The incidents: every halt and kill from the control audit, each linked to its review.
"use strict";
async function load() {
  const response = await fetch("/api/incidents", {credentials: "same-origin"});
  if (response.status === 401) { location.href = "/login"; return; }
  const body = document.querySelector("#incidents tbody");
  body.replaceChildren();
  for (const i of (await response.json()).incidents) {
    const tr = document.createElement("tr");
    const when = i.ts_event ? new Date(i.ts_event / 1e6).toISOString().replace("T", " ").slice(0, 19) : "—";
    for (const text of [when, i.strategy, i.command, i.reason, i.sender, i.trace_id || "—"]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    }
    const open = document.createElement("td");
    const link = document.createElement("a");
    link.href = `/incident/${encodeURIComponent(i.command_id)}`;
    link.textContent = "review";
    open.appendChild(link);
    tr.appendChild(open);
    body.appendChild(tr);
  }
}
load();
