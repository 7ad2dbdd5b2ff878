// The tern dashboard: polls the JSON API of the ternd that served it every
// two seconds. Text that came from the network (addresses, replies,
// destination names) only ever goes in with textContent or setAttribute,
// never as markup.
"use strict";

const POLL_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";
let actionsOn = false;

function $(sel) { return document.querySelector(sel); }

async function get(path) {
  const r = await fetch(path, { cache: "no-store", credentials: "omit" });
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

function cell(tr, text) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  tr.appendChild(td);
  return td;
}

function age(seconds) {
  if (!(seconds >= 0)) return "";
  if (seconds < 120) return seconds + " s";
  if (seconds < 7200) return Math.floor(seconds / 60) + " min";
  return Math.floor(seconds / 3600) + " h";
}

function when(ms) {
  return new Date(ms).toISOString().replace("T", " ").slice(0, 19);
}

function fillRows(tbody, rows, make) {
  const frag = document.createDocumentFragment();
  for (const row of rows) frag.appendChild(make(row));
  tbody.replaceChildren(frag);
}

function showSummary(s) {
  for (const el of document.querySelectorAll("[data-metric]")) {
    const v = s[el.getAttribute("data-metric")];
    if (typeof v === "number") el.textContent = String(v);
  }
  $("#rate-in").textContent = s.rates.received_per_s.toFixed(2) + " /s";
  $("#rate-out").textContent = s.rates.delivered_per_s.toFixed(2) + " /s";
  $("#version").textContent = "version " + s.version;
  actionsOn = s.actions === true;
  $("#steer").hidden = !actionsOn;
  $("#mode").textContent = actionsOn ? "" : "read-only";
  $("#updated").textContent = "updated " + new Date().toLocaleTimeString();
}

function showChart(t) {
  const svg = $("#chart");
  const w = 600, h = 120, pts = t.minutes;
  let max = 1;
  for (const p of pts) max = Math.max(max, p.in, p.out);
  const line = (key) => pts.map((p, i) =>
    (i * w / Math.max(1, pts.length - 1)).toFixed(1) + "," +
    (h - 4 - (p[key] / max) * (h - 16)).toFixed(1)).join(" ");
  const kids = [];
  for (const key of ["in", "out"]) {
    const pl = document.createElementNS(SVG, "polyline");
    pl.setAttribute("class", key);
    pl.setAttribute("points", line(key));
    kids.push(pl);
  }
  const label = document.createElementNS(SVG, "text");
  label.setAttribute("x", "4");
  label.setAttribute("y", "12");
  label.setAttribute("font-size", "10");
  label.textContent = "max " + max + "/min";
  kids.push(label);
  svg.replaceChildren(...kids);
}

function showDestinations(d) {
  fillRows($("#dests tbody"), d.destinations, (x) => {
    const tr = document.createElement("tr");
    const name = x.held ? "(held)" : x.destination;
    tr.setAttribute("data-destination", name);
    cell(tr, name);
    cell(tr, x.messages);
    cell(tr, x.recipients);
    cell(tr, x.oldest > 0 ? age(d.now - x.oldest) : "");
    cell(tr, x.last_error);
    return tr;
  });
}

function showReasons(r) {
  fillRows($("#reasons tbody"), r.reasons, (x) => {
    const tr = document.createElement("tr");
    cell(tr, x.reason);
    cell(tr, x.count);
    cell(tr, x.sample);
    return tr;
  });
}

function eventRow(e) {
  const tr = document.createElement("tr");
  cell(tr, typeof e.time === "number" ? when(e.time * 1000) : "");
  cell(tr, e.id);
  cell(tr, e.event);
  cell(tr, e.recipient || e.from || "");
  cell(tr, e.reply || "");
  return tr;
}

// The live state of the messages still queued: one row per recipient
// not yet final, as `ternctl queue show` lists them.
function showQueued(msgs) {
  const rows = [];
  for (const m of msgs) {
    for (const r of m.recipients) rows.push({ id: m.id, held: m.held, r });
  }
  fillRows($("#queued tbody"), rows, (x) => {
    const tr = document.createElement("tr");
    tr.setAttribute("data-id", x.id);
    cell(tr, x.id);
    cell(tr, x.r.address);
    cell(tr, x.held ? x.r.status + " (held)" : x.r.status);
    cell(tr, x.r.attempts);
    cell(tr, typeof x.r.next_attempt === "number" ? when(x.r.next_attempt * 1000) : "");
    cell(tr, x.r.last_error || "");
    return tr;
  });
  $("#queued").hidden = rows.length === 0;
}

async function poll() {
  try {
    const [s, t, d, r, e] = await Promise.all([get("/api/summary"), get("/api/throughput"),
      get("/api/destinations"), get("/api/deferrals"), get("/api/events")]);
    showSummary(s);
    showChart(t);
    showDestinations(d);
    showReasons(r);
    fillRows($("#events tbody"), e.events, eventRow);
  } catch (err) {
    $("#updated").textContent = "not reachable: " + err.message;
  }
  setTimeout(poll, POLL_MS);
}

// A queue action: POST with the token typed in (kept in this page only,
// never in a cookie or storage).
async function act(what, id) {
  const path = "/api/queue/" + what + (id ? "?id=" + encodeURIComponent(id) : "");
  let text;
  try {
    const r = await fetch(path, { method: "POST", cache: "no-store", credentials: "omit",
      headers: { "Authorization": "Bearer " + $("#token").value } });
    const body = await r.json();
    text = r.ok ? what + " " + (id || "all") + ": done" : what + ": " + body.error;
  } catch (err) {
    text = what + ": " + err.message;
  }
  $("#actresult").textContent = text;
}

function messageActions(ids) {
  const box = $("#msgactions");
  const kids = [];
  if (actionsOn) {
    for (const id of ids) {
      const div = document.createElement("div");
      const label = document.createElement("span");
      label.textContent = id + " ";
      div.appendChild(label);
      for (const what of ["hold", "release", "flush", "delete"]) {
        const b = document.createElement("button");
        b.type = "button";
        b.textContent = what;
        b.setAttribute("data-action", what);
        b.addEventListener("click", () => act(what, id));
        div.appendChild(b);
      }
      kids.push(div);
    }
  }
  box.replaceChildren(...kids);
}

$("#flushall").addEventListener("click", () => act("flush", null));

$("#search").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const q = $("#q").value.trim();
  if (q === "") return;
  try {
    const m = await get("/api/message?q=" + encodeURIComponent(q));
    showQueued(m.queued || []);
    fillRows($("#message tbody"), m.events, eventRow);
    messageActions([...new Set(m.events.map((e) => e.id)
      .concat((m.queued || []).map((x) => x.id)))]);
  } catch (err) {
    showQueued([]);
    fillRows($("#message tbody"), [{ event: err.message }], eventRow);
    messageActions([]);
  }
});

poll();
