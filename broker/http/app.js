// app.js - the tq dashboard: polls the broker's JSON endpoints and draws
// queues, hosts, throughput, failed tasks and one task by id. No framework,
// no CDN: everything here is served by tq-broker itself.
"use strict";

const POLL_MS = 2000;
const STATES = ["PENDING", "RUNNING", "SUCCESS", "FAILURE", "CANCELLED", "RETRY",
  "SCHEDULED"];
const CODES = ["TQ_OK", "TQ_EINVAL", "TQ_ENOMEM", "TQ_EPROTO", "TQ_EVERSION",
  "TQ_ETIMEDOUT", "TQ_ETASK", "TQ_EUNKNOWN", "TQ_EUNREACHABLE", "TQ_ECANCELLED",
  "TQ_EFULL", "TQ_EEMPTY", "TQ_ELOST", "TQ_ETIMELIMIT", "TQ_ENOTASK",
  "TQ_ECLOSED", "TQ_ESTATE", "TQ_ESYS", "TQ_EBUSY", "TQ_ECORRUPT",
  "TQ_EDENIED", "TQ_ESTANDBY"];

let writes = false;
let history = [];
let tasksUnsupported = false;

const $ = (id) => document.getElementById(id);

// el("td", {class: "n"}, "text", child...): text children become text nodes,
// so nothing from the broker is ever parsed as HTML.
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function fmtAge(ms) {
  if (ms === undefined || ms === null) return "–";
  if (ms < 1000) return ms + " ms";
  if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
  if (ms < 3600000) return Math.floor(ms / 60000) + " m " + Math.floor(ms / 1000) % 60 + " s";
  return Math.floor(ms / 3600000) + " h " + Math.floor(ms / 60000) % 60 + " m";
}

function fmtBytes(n) {
  if (n < 1024) return n + " B";
  if (n < 1048576) return (n / 1024).toFixed(1) + " KiB";
  if (n < 1073741824) return (n / 1048576).toFixed(1) + " MiB";
  return (n / 1073741824).toFixed(2) + " GiB";
}

function fmtTime(ms) {
  if (!ms) return "–";
  return new Date(ms).toISOString().replace("T", " ").replace("Z", " UTC");
}

const stateName = (s) => STATES[s] || String(s);
const codeName = (c) => CODES[c] || String(c);

function message(text, bad) {
  const m = $("message");
  m.textContent = text;
  m.className = bad ? "bad" : "";
}

async function api(path, options) {
  const r = await fetch(path, Object.assign({cache: "no-store"}, options || {}));
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (!r.ok) {
    const err = new Error((body && body.error) || r.status + " " + r.statusText);
    err.status = r.status;
    throw err;
  }
  return body;
}

async function write(action, arg) {
  const token = sessionStorage.getItem("tq-token") || "";
  try {
    const d = await api("/api/" + action + "/" + encodeURIComponent(arg), {
      method: "POST", headers: {"Authorization": "Bearer " + token}});
    message(action + " " + arg + ": ok" + (d.purged !== undefined ? " (" + d.purged + " purged)" : ""));
    refresh();
  } catch (e) {
    message(action + " " + arg + ": " + e.message + (e.status === 401 ? " (token?)" : ""), true);
  }
}

// ---- status --------------------------------------------------------------

function renderTotals(st, rate) {
  const sum = (k) => (st.queues || []).reduce((a, q) => a + (q[k] || 0), 0);
  for (const k of ["waiting", "running", "delayed", "done", "failed"])
    $("t-" + k).textContent = sum(k);
  $("t-rate").textContent = rate === null || rate === undefined ? "–" : rate.toFixed(1);
  $("t-children").textContent = (st.workers || []).length;
  $("broker").textContent = (st.version || "") + " · pid " + st.pid + " · up " +
    fmtAge(st.uptime_ms) + " · holds " + fmtBytes(st.memory || 0);
}

function renderQueues(st) {
  const body = $("queues").tBodies[0];
  body.replaceChildren();
  for (const q of st.queues || []) {
    const cell = (k, v) => el("td", {class: "n", id: "q-" + q.name + "-" + k}, v);
    body.append(el("tr", {"data-queue": q.name},
      el("td", {}, q.name),
      cell("waiting", q.waiting), cell("running", q.running), cell("delayed", q.delayed),
      cell("done", q.done), cell("failed", q.failed),
      el("td", {class: "n"}, q.waiting ? fmtAge(q.oldest_ms) : "–"),
      el("td", {}, writes ? el("button", {title: "drop its waiting tasks",
        onclick: () => { if (confirm("Purge the waiting tasks of " + q.name + "?")) write("purge", q.name); }},
        "purge") : null)));
  }
  if (!(st.queues || []).length)
    body.append(el("tr", {}, el("td", {colspan: 8, class: "muted"}, "no queues yet")));
  const un = (st.unserved || []).map((u) => u.task + " on " + u.queue + " (" + u.waiting + ")");
  $("unserved").textContent = un.length ? "waiting for a worker that provides: " + un.join(", ") : "";
}

function renderHosts(st) {
  const hosts = new Map();
  for (const w of st.workers || []) {
    if (!hosts.has(w.host)) hosts.set(w.host, []);
    hosts.get(w.host).push(w);
  }
  const box = $("hosts");
  // hosts start open; one the user closed stays closed across refreshes
  const closed = new Set([...box.querySelectorAll("details:not([open])")].map((d) => d.dataset.host));
  box.replaceChildren();
  for (const [host, children] of hosts) {
    const busy = children.filter((c) => c.busy).length;
    const done = children.reduce((a, c) => a + c.done, 0);
    const rss = children.reduce((a, c) => a + c.rss_kb * 1024, 0);
    const rows = children.map((c) => el("tr", {},
      el("td", {class: "mono"}, c.pid), el("td", {class: "mono"}, c.ppid),
      el("td", {}, el("span", {class: c.busy ? "dot busy" : "dot"}), c.busy ? "busy" : "idle"),
      el("td", {class: "n"}, c.running + "/" + c.credit), el("td", {class: "n"}, c.done),
      el("td", {class: "n"}, fmtBytes(c.rss_kb * 1024)),
      el("td", {}, (c.queues || []).join(", "))));
    box.append(el("details", {class: "host", "data-host": host, open: !closed.has(host)},
      el("summary", {}, el("b", {}, host),
        el("span", {class: "stats", id: "h-" + host},
          children.length + (children.length === 1 ? " child · " : " children · ") + busy + " busy · " + done + " done · " + fmtBytes(rss))),
      el("table", {}, el("thead", {}, el("tr", {}, ...["pid", "supervisor", "", "tasks", "done", "rss", "queues"]
        .map((h, i) => el("th", {class: i >= 3 && i <= 5 ? "n" : ""}, h)))),
        el("tbody", {}, ...rows))));
  }
  if (!hosts.size) box.append(el("p", {class: "muted"}, "no worker host connected"));
}

// ---- chart ---------------------------------------------------------------

function drawChart() {
  const canvas = $("chart");
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight || 180;
  canvas.width = w * dpr;
  canvas.height = h * dpr;
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  g.clearRect(0, 0, w, h);
  const left = 48, right = 10, top = 10, bottom = 22;
  const pw = w - left - right, ph = h - top - bottom;
  const now = history.length ? history[history.length - 1][0] : Date.now();
  const span = Math.max(60000, history.length ? now - history[0][0] : 60000);
  let max = 1;
  for (const [, r] of history) max = Math.max(max, r);
  const step = Math.pow(10, Math.floor(Math.log10(max)));
  max = Math.ceil(max / step) * step;
  g.font = "11px system-ui, sans-serif";
  g.fillStyle = "#6b7385";
  g.strokeStyle = "#dde1e8";
  g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = top + ph - (ph * i) / 4;
    g.beginPath(); g.moveTo(left, y); g.lineTo(left + pw, y); g.stroke();
    g.textAlign = "right";
    g.fillText(String(+(max * i / 4).toFixed(1)), left - 6, y + 4);
  }
  g.textAlign = "center";
  // a label every 30 s over short spans, every minute over longer ones
  const tick = span <= 150000 ? 30000 : 60000;
  for (let t = 0; t <= span; t += tick) {
    const x = left + pw - (pw * t) / span;
    if (x < left + 15) break;
    g.fillText(t ? "-" + (t >= 60000 ? +(t / 60000).toFixed(1) + " min" : t / 1000 + " s") : "now", x, h - 6);
  }
  const seconds = Math.round(span / 1000);
  $("chart-span").textContent = "tasks/s, last " + (seconds < 120 ? seconds + " s" : Math.round(seconds / 60) + " min");
  if (history.length < 2) return;
  const xy = ([t, r]) => [left + pw - (pw * (now - t)) / span, top + ph - (ph * r) / max];
  g.beginPath();
  history.forEach((p, i) => { const [x, y] = xy(p); if (i) g.lineTo(x, y); else g.moveTo(x, y); });
  g.strokeStyle = "#2f62d8";
  g.lineWidth = 2;
  g.stroke();
  g.lineTo(xy(history[history.length - 1])[0], top + ph);
  g.lineTo(xy(history[0])[0], top + ph);
  g.closePath();
  g.fillStyle = "rgba(47, 98, 216, 0.12)";
  g.fill();
}

// ---- failed tasks and the task list --------------------------------------

function idLink(id) {
  return el("a", {class: "link", href: "#task=" + id, onclick: (e) => { e.preventDefault(); lookup(id); }}, id);
}

function renderFailed(d) {
  const list = (d && d.failed) || [];
  const body = $("failed").tBodies[0];
  body.replaceChildren();
  $("failed-count").textContent = list.length ? "(" + list.length + ")" : "";
  for (const f of list)
    body.append(el("tr", {"data-id": f.id},
      el("td", {class: "id"}, idLink(f.id)), el("td", {}, f.task), el("td", {}, f.queue),
      el("td", {class: "n"}, f.attempts),
      el("td", {class: "err"}, codeName(f.code) + ": " + (f.error || "")),
      el("td", {}, el("button", {class: "retry", disabled: !writes,
        title: writes ? "run it again" : "start tq-broker with --http-token to allow retries",
        onclick: () => write("retry", f.id)}, "retry"))));
  if (!list.length) body.append(el("tr", {}, el("td", {colspan: 6, class: "muted"}, "no failed tasks")));
}

function argsText(t) {
  if (t.args === undefined || t.args === null)
    return t.args_bytes !== undefined ? "(" + t.args_bytes + " bytes)" : "–";
  const s = JSON.stringify(t.args);
  return s.length > 60 ? s.slice(0, 57) + "…" : s;
}

function renderTasks(d, error) {
  const body = $("tasks").tBodies[0];
  body.replaceChildren();
  if (error) {
    $("tasks-note").textContent = error;
    return;
  }
  for (const t of d.tasks || [])
    body.append(el("tr", {},
      el("td", {class: "id"}, idLink(t.id)), el("td", {}, t.task), el("td", {}, t.queue),
      el("td", {}, stateName(t.state)), el("td", {class: "n"}, fmtAge(t.age_ms)),
      el("td", {class: "n"}, t.attempt), el("td", {class: "mono"}, t.host ? t.host + ":" + t.pid : "–"),
      el("td", {class: "mono"}, argsText(t))));
  const n = (d.tasks || []).length;
  $("tasks-note").textContent = n < (d.total || 0) ? n + " of " + d.total + " shown" : n ? "" : "no waiting or running tasks";
}

// ---- one task ------------------------------------------------------------

async function lookup(id) {
  id = (id || "").trim();
  if (!id) return;
  $("task-id").value = id;
  if (location.hash !== "#task=" + id) history_replace("#task=" + id);
  const box = $("task");
  box.replaceChildren(el("p", {class: "muted"}, "looking up " + id + "…"));
  let d;
  try {
    d = await api("/api/task/" + encodeURIComponent(id));
  } catch (e) {
    box.replaceChildren(el("p", {class: "bad", id: "task-error"}, id + ": " + e.message));
    return;
  }
  const t = d.task || {};
  const rows = [];
  const add = (k, v) => { if (v !== undefined && v !== null && v !== "") rows.push(el("dt", {}, k), el("dd", {id: "task-" + k.replace(/ /g, "-")}, v)); };
  add("id", t.id);
  add("task", t.task);
  add("queue", t.queue);
  add("state", stateName(t.state));
  add("priority", t.priority);
  add("attempt", t.attempt !== undefined ? t.attempt + (t.failures !== undefined ? " (failures " + t.failures + ", lost " + (t.lost || 0) + ", retries allowed " + (t.retries || 0) + ")" : "") : undefined);
  add("worker", t.host ? t.host + ":" + t.pid : undefined);
  add("submitted", t.submitted_ms ? fmtTime(t.submitted_ms) : undefined);
  add("started", t.started_ms ? fmtTime(t.started_ms) : undefined);
  add("finished", t.finished_ms ? fmtTime(t.finished_ms) : undefined);
  if (t.started_ms && t.finished_ms) add("ran", fmtAge(t.finished_ms - t.started_ms));
  add("runs in", t.due_ms !== undefined ? fmtAge(t.due_ms) : undefined);
  add("error", t.error ? codeName(t.code) + ": " + t.error : undefined);
  add("args", t.args !== undefined ? el("code", {class: "mono"}, JSON.stringify(t.args)) : undefined);
  add("value", t.value !== undefined ? el("code", {class: "mono"}, JSON.stringify(t.value)) : undefined);
  const parts = [el("dl", {class: "task"}, ...rows)];
  if (t.history && t.history.length)
    parts.push(el("table", {}, el("thead", {}, el("tr", {}, ...["attempt", "worker", "started", "ended", "outcome"].map((h) => el("th", {}, h)))),
      el("tbody", {}, ...t.history.map((a) => el("tr", {}, el("td", {}, a.attempt), el("td", {class: "mono"}, a.host + ":" + a.pid),
        el("td", {}, fmtTime(a.started_ms)), el("td", {}, fmtTime(a.ended_ms)), el("td", {}, a.outcome))))));
  if (d.source === "GET")
    parts.push(el("p", {class: "muted", id: "task-source"}, "this broker answers GET only: state and result, no arguments or timings"));
  if (writes && t.state !== undefined && !(t.state >= 2 && t.state <= 4))
    parts.push(el("button", {onclick: () => write("cancel", id)}, "cancel"));
  if (writes && t.state === 3)
    parts.push(el("button", {onclick: () => write("retry", id)}, "retry"));
  box.replaceChildren(...parts);
}

function history_replace(hash) {
  window.history.replaceState(null, "", hash);
}

// ---- the loop ------------------------------------------------------------

async function refresh() {
  try {
    const d = await api("/api/status");
    writes = d.writes;
    $("auth").hidden = !writes;
    history = d.history || [];
    renderTotals(d.status, d.rate);
    renderQueues(d.status);
    renderHosts(d.status);
    drawChart();
    $("conn").textContent = "up";
    $("conn").className = "badge up";
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    document.body.dataset.ready = "1";
  } catch (e) {
    $("conn").textContent = "down";
    $("conn").className = "badge down";
    message("status: " + e.message, true);
    return;
  }
  try {
    renderFailed(await api("/api/failed"));
  } catch (e) {
    message("failed tasks: " + e.message, true);
  }
  if (tasksUnsupported) return;
  try {
    renderTasks(await api("/api/tasks?limit=50"));
  } catch (e) {
    // an older broker refuses TASKS every time (and logs it): ask once
    tasksUnsupported = e.status === 501;
    renderTasks(null, tasksUnsupported ? "this broker cannot list its tasks (it predates TASKS)" : e.message);
  }
}

async function loop() {
  await refresh();
  setTimeout(loop, POLL_MS);
}

$("auth").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem("tq-token", $("token").value);
  $("token").value = "";
  message("token set for this tab");
});
$("lookup").addEventListener("submit", (e) => { e.preventDefault(); lookup($("task-id").value); });
window.addEventListener("resize", drawChart);
if (location.hash.startsWith("#task=")) lookup(decodeURIComponent(location.hash.slice(6)));
loop();
