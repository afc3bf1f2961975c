// supervise's dashboard: reads api/status, follows api/events, shows api/logs for a clicked instance.
//
// Read-only: every request it makes is a GET to the daemon that served it; nothing on the page acts.
// Daemon data reaches the DOM only as text (textContent, attributes): never as HTML.
// URLs are relative, so the page works behind a reverse proxy under any path prefix.
"use strict";

(() => {
  const STATUS_URL = "api/status";
  const EVENTS_URL = "api/events";
  const LOGS_URL = "api/logs";
  const DEBOUNCE_MS = 30;        // a burst of events costs one status request
  const REFRESH_MS = 2000;       // uptime, CPU and memory change without events
  const LOG_REFRESH_MS = 2000;   // an open log follows the file
  const LOG_LINES = 200;
  const FEED_SIZE = 60;
  const RECONNECT_MS = 2000;
  const STATES = new Set(["starting", "running", "stopping", "stopped", "backoff", "failed"]);
  const COLUMNS = [
    ["name", "Name"], ["state", "State"], ["pid", "PID"], ["cpu", "CPU %"], ["mem", "Mem"],
    ["uptime", "Uptime"], ["restarts", "Restarts"], ["beat", "Beat"], ["exit", "Last exit"],
  ];
  const NUMERIC = new Set(["pid", "cpu", "mem", "uptime", "restarts", "beat"]);

  const $ = (id) => document.getElementById(id);
  let status = null;
  let selected = null;           // instance name whose log is shown
  let timer = null;
  let inFlight = false;
  let again = false;
  let logTimer = null;
  let logRequest = 0;
  let events = null;
  const seen = new Set();        // sequence numbers already in the feed

  // -- building the DOM from text only ---------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else node.setAttribute(key, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  // -- formats (the CLI's, so one figure reads the same everywhere) ----------------------------

  function duration(seconds) {
    if (typeof seconds !== "number") return "-";
    const s = Math.floor(seconds);
    const pad = (n) => String(n).padStart(2, "0");
    if (s < 60) return seconds < 10 ? `${seconds.toFixed(1)}s` : `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m${pad(s % 60)}s`;
    if (s < 86400) return `${Math.floor(s / 3600)}h${pad(Math.floor((s % 3600) / 60))}m`;
    return `${Math.floor(s / 86400)}d${pad(Math.floor((s % 86400) / 3600))}h`;
  }

  function size(bytes) {
    if (typeof bytes !== "number") return "-";
    let amount = bytes;
    for (const unit of ["B", "K", "M"]) {
      if (amount < 1024) return unit === "B" ? `${Math.round(amount)}B` : `${amount.toFixed(1)}${unit}`;
      amount /= 1024;
    }
    return `${amount.toFixed(1)}G`;
  }

  function describeExit(exit) {
    if (!exit || typeof exit !== "object" || !exit.reason) return "-";
    let text = String(exit.reason);
    if (exit.signal) text += ` (signal ${exit.signal})`;
    else if (exit.code !== null && exit.code !== undefined) text += ` (exit code ${exit.code})`;
    return exit.error ? `${text}: ${exit.error}` : text;
  }

  function clock(unixSeconds) {
    const d = typeof unixSeconds === "number" ? new Date(unixSeconds * 1000) : new Date();
    return d.toLocaleTimeString([], { hour12: false });
  }

  function cpu(value) {
    return typeof value === "number" ? value.toFixed(1) : "-";
  }

  // -- the status ------------------------------------------------------------------------------

  function scheduleRefresh(delay) {
    if (timer !== null) return;
    timer = setTimeout(() => { timer = null; refresh(); }, delay === undefined ? DEBOUNCE_MS : delay);
  }

  async function refresh() {
    if (inFlight) { again = true; return; }
    inFlight = true;
    try {
      const response = await fetch(STATUS_URL, { cache: "no-store" });
      if (!response.ok) throw new Error(`status: HTTP ${response.status}`);
      status = await response.json();
      render();
    } catch (error) {
      $("summary").textContent = `the daemon is not answering (${error.message}); retrying`;
      $("summary").dataset.problem = "yes";
    } finally {
      inFlight = false;
      if (again) { again = false; scheduleRefresh(0); }
    }
  }

  function rolloutText(rollout) {
    if (!rollout) return null;
    const gen = `generation ${rollout.generation}`;
    switch (rollout.state) {
      case "running": {
        const waiting = rollout.waiting ? ` (waiting: ${rollout.waiting})` : "";
        return `rolling ${rollout.replaced}/${rollout.total} to ${gen}${waiting}`;
      }
      case "done": return `rolled to ${gen} in ${duration(rollout.duration)} (${rollout.cause})`;
      case "failed": return `rollout to ${gen} failed${rollout.error ? ": " + rollout.error : ""}`;
      case "cancelled": return `rollout to ${gen} cancelled${rollout.error ? ": " + rollout.error : ""}`;
      default: return `rollout to ${gen}: ${rollout.state}`;
    }
  }

  function instanceRow(inst, app, role) {
    const state = STATES.has(inst.state) ? inst.state : "other";
    const cells = {
      name: inst.name, state: inst.state, pid: inst.pid ? String(inst.pid) : "-", cpu: cpu(inst.cpu),
      mem: size(inst.rss), uptime: duration(inst.uptime), restarts: String(inst.restarts ?? "-"),
      beat: duration(inst.heartbeat_age), exit: describeExit(inst.last_exit),
    };
    const row = el("tr", {
      "data-name": inst.name, "data-role": role, "data-state": state, tabindex: 0,
      class: inst.name === selected ? "selected" : null,
      title: inst.fields && Object.keys(inst.fields).length ? `status fields: ${JSON.stringify(inst.fields)}` : null,
    });
    for (const [key] of COLUMNS) {
      const td = el("td", { "data-col": key, class: NUMERIC.has(key) ? "num" : null });
      if (key === "state") {
        td.append(el("span", { class: `state state-${state}` }, cells.state));
        if (inst.waiting) td.append(el("span", { class: "tag" }, `waits: ${inst.waiting}`));
      } else if (key === "name") {
        td.append(cells.name);
        if (role === "spare") td.append(el("span", { class: "tag" }, "spare"));
        if (role === "replacing") {
          const newer = inst.generation === app.generation;
          td.append(el("span", { class: "tag" }, newer ? `new, gen ${inst.generation}` : `old, gen ${inst.generation}`));
        }
      } else {
        td.append(cells[key]);
      }
      row.append(td);
    }
    return row;
  }

  function appSection(app) {
    const rows = (app.instances || []).filter((i) => i.role !== "spare");
    const spares = (app.instances || []).filter((i) => i.role === "spare");
    const replacing = app.replacing || [];
    const running = rows.filter((i) => i.state === "running").length;
    const restarts = rows.reduce((sum, i) => sum + (i.restarts || 0), 0);
    const facts = [`${running}/${app.target ?? rows.length} running`, `generation ${app.generation}`];
    if (spares.length) facts.push(`${spares.filter((i) => i.state === "running").length}/${spares.length} spares ready`);
    if (restarts) facts.push(`${restarts} restart${restarts === 1 ? "" : "s"}`);
    if (app.budget && app.budget.waiting) facts.push(`${app.budget.waiting} waiting for the disruption budget`);
    const head = el("div", { class: "app-head" },
      el("h2", {}, app.name), el("span", { class: "facts" }, facts.join(" · ")));
    const notes = el("div", { class: "app-notes" });
    if (app.waiting_for && app.waiting_for.length) {
      notes.append(el("p", { class: "note warn" }, `waiting for ${app.waiting_for.join(", ")}`));
    }
    const rollout = rolloutText(app.rollout);
    if (rollout) {
      const r = app.rollout;
      const line = el("p", { class: `rollout rollout-${r.state === "running" ? "running" : r.state === "done" ? "done" : "bad"}`,
                            "data-rollout": r.state });
      line.append(rollout);
      if (r.state === "running" && r.total) line.append(el("progress", { max: r.total, value: r.replaced }));
      notes.append(line);
    }
    const table = el("table", {});
    const headRow = el("tr", {});
    for (const [key, label] of COLUMNS) headRow.append(el("th", { class: NUMERIC.has(key) ? "num" : null }, label));
    table.append(el("thead", {}, headRow));
    const body = el("tbody", {});
    for (const inst of rows) body.append(instanceRow(inst, app, "slot"));
    for (const inst of spares) body.append(instanceRow(inst, app, "spare"));
    for (const inst of replacing) body.append(instanceRow(inst, app, "replacing"));
    if (!rows.length && !replacing.length && !spares.length) {
      body.append(el("tr", {}, el("td", { colspan: COLUMNS.length, class: "empty" }, "no instances")));
    }
    table.append(body);
    return el("section", { class: "app", "data-app": app.name }, head, notes, el("div", { class: "table-wrap" }, table));
  }

  function render() {
    const apps = Array.isArray(status.apps) ? status.apps : [];
    const focused = rowOf(document.activeElement);
    const focus = focused ? [focused.dataset.name, focused.dataset.role] : null;
    $("apps").replaceChildren(...apps.map(appSection));
    if (focus) {
      const row = [...document.querySelectorAll("tr[data-name]")]
        .find((row) => row.dataset.name === focus[0] && row.dataset.role === focus[1]);
      if (row) row.focus({ preventScroll: true });
    }
    if (!apps.length) $("apps").append(el("p", { class: "empty" }, "no apps"));
    const counts = {};
    let total = 0;
    for (const app of apps) {
      for (const inst of app.instances || []) { counts[inst.state] = (counts[inst.state] || 0) + 1; total += 1; }
    }
    const parts = [`${total} instance${total === 1 ? "" : "s"} in ${apps.length} app${apps.length === 1 ? "" : "s"}`];
    for (const state of ["running", "starting", "stopping", "backoff", "failed", "stopped"]) {
      if (counts[state]) parts.push(`${counts[state]} ${state}`);
    }
    const daemon = status.daemon || {};
    if (daemon.pid) parts.push(`daemon pid ${daemon.pid}`);
    if (daemon.checkpoint && daemon.checkpoint.ok === false) parts.push(`checkpoint failing: ${daemon.checkpoint.error}`);
    parts.push(`updated ${clock()}`);
    $("summary").textContent = parts.join(" · ");
    delete $("summary").dataset.problem;
  }

  // -- the events ------------------------------------------------------------------------------

  function eventText(e) {
    const exit = e.exit ? `: ${describeExit(e.exit)}` : "";
    switch (e.type) {
      case "state": return `${e.name} ${e.from} → ${e.to}${e.pid ? ` pid ${e.pid}` : ""}${exit}`;
      case "removed": return `${e.name} removed`;
      case "scaled": return `${e.app} scaled to ${e.instances}`;
      case "daemon": return `daemon ${e.event}${e.seconds ? ` (${e.seconds}s late)` : ""}`;
      case "rollout": {
        const progress = typeof e.total === "number" ? ` ${e.replaced || 0}/${e.total}` : "";
        return `${e.app} rollout ${e.event}: generation ${e.generation}${progress}${e.error ? " — " + e.error : ""}`;
      }
      case "promoted": return `${e.spare} promoted to ${e.name} (${e.reason}): pid ${e.pid}`;
      case "replaced": return `${e.name} replaced (${e.reason}): ${e.old_pid ? `pid ${e.old_pid} → ` : "now pid "}${e.pid}`;
      case "config": return `config ${e.event}`;
      case "app": return `${e.app} ${e.event}`;
      case "chaos": return `chaos ${e.event}${e.name ? ` ${e.name} ${e.signal || ""}` : ""}`;
      case "watch": return `files changed${e.apps ? `: rolling ${e.apps.join(", ")}` : ""}`;
      case "output": return `${e.name} log ${e.event}${e.error ? ": " + e.error : ""}`;
      case "checkpoint": return `checkpoint ${e.event}${e.error ? ": " + e.error : ""}`;
      default: {
        const rest = Object.assign({}, e);
        delete rest.seq; delete rest.time; delete rest.type;
        return JSON.stringify(rest).slice(0, 200);
      }
    }
  }

  function addToFeed(e) {
    if (typeof e.seq === "number") {
      if (seen.has(e.seq)) return;
      seen.add(e.seq);
    }
    const bad = (e.type === "state" && (e.to === "backoff" || e.to === "failed")) ||
      (e.type === "rollout" && (e.event === "failed" || e.event === "cancelled"));
    const item = el("li", { class: bad ? "bad" : null, "data-type": e.type },
      el("time", {}, clock(e.time)), el("span", { class: "type" }, String(e.type)), el("span", {}, eventText(e)));
    const feed = $("feed");
    feed.prepend(item);
    while (feed.children.length > FEED_SIZE) feed.lastElementChild.remove();
    if (seen.size > 4 * FEED_SIZE) {
      const keep = [...seen].sort((a, b) => b - a).slice(0, 2 * FEED_SIZE);
      seen.clear();
      keep.forEach((seq) => seen.add(seq));
    }
  }

  function setConnection(state, text) {
    const node = $("connection");
    node.dataset.state = state;
    node.textContent = text;
  }

  function follow() {
    events = new EventSource(EVENTS_URL);
    events.onopen = () => { setConnection("live", "live"); scheduleRefresh(0); };
    events.onmessage = (message) => {
      let e;
      try { e = JSON.parse(message.data); } catch (_) { return; }
      addToFeed(e);
      scheduleRefresh();
      if (selected && e.name === selected) scheduleLog(300);
    };
    events.onerror = () => {
      setConnection("down", "reconnecting…");
      if (events.readyState === EventSource.CLOSED) {
        events.close();
        setTimeout(follow, RECONNECT_MS);
      }
    };
  }

  // -- one instance's log ----------------------------------------------------------------------

  const ANSI = /\x1b\[[0-9;?]*[ -/]*[@-~]/g;

  async function showLog() {
    const name = selected;
    if (!name) return;
    const ticket = ++logRequest;
    const url = `${LOGS_URL}?name=${encodeURIComponent(name)}&lines=${LOG_LINES}`;
    let note;
    let lines = null;
    try {
      const response = await fetch(url, { cache: "no-store" });
      const body = await response.json();
      if (!response.ok) note = body.error || `HTTP ${response.status}`;
      else {
        lines = body.lines || [];
        note = body.error ? `cannot read ${body.path}: ${body.error}` :
          `last ${lines.length} line${lines.length === 1 ? "" : "s"} of ${body.path}`;
      }
    } catch (error) {
      note = `cannot fetch the log (${error.message})`;
    }
    if (ticket !== logRequest || name !== selected) return;  // another instance was chosen meanwhile
    $("log-note").textContent = note;
    if (lines !== null) {
      const pre = $("log-lines");
      const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.textContent = lines.map((line) => line.replace(ANSI, "")).join("\n");
      pre.dataset.count = String(lines.length);
      if (atBottom || pre.dataset.fresh === "yes") pre.scrollTop = pre.scrollHeight;
      pre.dataset.fresh = "no";
    }
    scheduleLog(LOG_REFRESH_MS);
  }

  function scheduleLog(delay) {
    clearTimeout(logTimer);
    logTimer = setTimeout(() => { if (!document.hidden) showLog(); else scheduleLog(LOG_REFRESH_MS); }, delay);
  }

  function select(name) {
    selected = selected === name ? null : name;
    clearTimeout(logTimer);
    for (const row of document.querySelectorAll("tr[data-name]")) {
      row.classList.toggle("selected", row.dataset.name === selected);
    }
    const panel = $("log");
    if (!selected) { panel.hidden = true; return; }
    panel.hidden = false;
    $("log-title").textContent = selected;
    $("log-note").textContent = "loading…";
    $("log-lines").textContent = "";
    $("log-lines").dataset.fresh = "yes";
    delete $("log-lines").dataset.count;
    showLog();
  }

  function rowOf(target) {
    return target instanceof Element ? target.closest("tr[data-name]") : null;
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("apps").addEventListener("click", (event) => {
      const row = rowOf(event.target);
      if (row) select(row.dataset.name);
    });
    $("apps").addEventListener("keydown", (event) => {
      const row = rowOf(event.target);
      if (row && (event.key === "Enter" || event.key === " ")) { event.preventDefault(); select(row.dataset.name); }
    });
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && selected) select(selected);
    });
    setInterval(() => { if (!document.hidden) scheduleRefresh(0); }, REFRESH_MS);
    refresh();
    follow();
  });
})();
