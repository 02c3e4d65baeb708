// The console's page: two views (every server's tubes, and one tube's jobs), both refreshed
// by polling the console's JSON API, never by reloading the page. Every action is a POST
// with the X-Rbctl-Console header, which the console requires of every action (a page of
// another origin cannot send it). Text from the servers is only ever set as textContent.
"use strict";

// How often the views refresh: counts and rates stay live without loading the servers (a
// refresh is one stats-tube per tube, and a tube's view peeks at its first jobs).
const OVERVIEW_POLL_MS = 1000;
const TUBE_POLL_MS = 2000;

const $ = (id) => document.getElementById(id);

// The last overview sample, for rates: server index -> {at, stats, tubes: name -> stats}.
let previous = new Map();
// The body format each job is shown in, by "server/id": "text", "json" or "hex".
const formats = new Map();
// The view being shown: null for the overview, or {server, tube}.
let current = null;
let timer = null;
let generation = 0;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else if (key === "text") node.textContent = value;
    else node[key] = value;
  }
  for (const child of children) node.append(child);
  return node;
}

function notice(message, isError) {
  const box = $("notice");
  box.textContent = message;
  box.className = isError ? "notice error" : "notice";
  box.hidden = false;
}

async function api(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" }, credentials: "same-origin" });
  return answer(response);
}

async function action(path, body) {
  const response = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-Rbctl-Console": "1" },
    body: JSON.stringify(body || {}),
  });
  return answer(response);
}

async function answer(response) {
  if (response.status === 401) {
    window.location.href = "/login";
    throw new Error("log in first");
  }
  const data = await response.json().catch(() => ({ error: "HTTP " + response.status }));
  if (!response.ok) throw new Error(data.error || "HTTP " + response.status);
  return data;
}

function tubePath(server, tube) {
  return "/api/servers/" + server + "/tubes/" + encodeURIComponent(tube);
}

function rate(before, after, seconds, key) {
  if (!before || seconds <= 0) return "-";
  const delta = Math.max(0, (after[key] || 0) - (before[key] || 0));
  return (delta / seconds).toFixed(1);
}

// ---- The overview -------------------------------------------------------------------------

async function showOverview(mine) {
  let data;
  try {
    data = await api("/api/overview?filter=" + encodeURIComponent($("filter").value.trim()));
  } catch (e) {
    if (mine !== generation) return;
    $("status").textContent = "cannot reach the console: " + e.message;
    return;
  }
  if (mine !== generation) return;
  $("logout").hidden = !data.login;
  const now = performance.now();
  const filter = $("filter").value.trim().toLowerCase();
  const root = $("servers");
  root.replaceChildren();
  for (const server of data.servers) {
    const section = el("section", { class: "server", "data-server": String(server.index) });
    section.append(el("h2", { text: server.addr + (server.stats ? "  (" + serverKind(server.stats) + ")" : "") }));
    if (server.error) {
      section.append(el("div", { class: "error", text: server.error }));
      root.append(section);
      previous.delete(server.index);
      continue;
    }
    const before = previous.get(server.index);
    const seconds = before ? (now - before.at) / 1000 : 0;
    const s = server.stats;
    const totals = el("div", { class: "totals" });
    const total = (label, value, cls) => totals.append(el("div", { class: cls || "" }, el("span", { text: label }), String(value)));
    total("ready", s["current-jobs-ready"], "total-ready");
    total("reserved", s["current-jobs-reserved"]);
    total("delayed", s["current-jobs-delayed"]);
    total("buried", s["current-jobs-buried"], "total-buried");
    total("urgent", s["current-jobs-urgent"]);
    total("tubes", s["current-tubes"]);
    total("connections", s["current-connections"]);
    total("producers", s["current-producers"]);
    total("workers", s["current-workers"]);
    total("waiting", s["current-waiting"]);
    total("put/s", before ? rate(before.stats, s, seconds, "cmd-put") : "-", "rate-put");
    const reserves = (x) => ({ r: (x["cmd-reserve"] || 0) + (x["cmd-reserve-with-timeout"] || 0) });
    total("reserve/s", before ? rate(reserves(before.stats), reserves(s), seconds, "r") : "-");
    total("delete/s", before ? rate(before.stats, s, seconds, "cmd-delete") : "-");
    total("uptime", s["uptime"] + " s");
    section.append(totals);

    const table = el("table", { class: "tubes" });
    const head = el("tr");
    for (const title of ["tube", "ready", "reserved", "delayed", "buried", "urgent", "watching", "waiting", "put/s", "delete/s", "pause left"]) {
      head.append(el("th", { text: title }));
    }
    table.append(el("thead", {}, head));
    const body = el("tbody");
    const tubes = new Map();
    for (const tube of server.tubes) {
      tubes.set(tube.name, tube);
      if (filter && !tube.name.toLowerCase().includes(filter)) continue;
      const old = before && before.tubes.get(tube.name);
      const row = el("tr", { class: "tube" + (tube["pause-time-left"] > 0 ? " paused" : ""), "data-tube": tube.name });
      const link = el("a", { href: "#/s/" + server.index + "/t/" + encodeURIComponent(tube.name), text: tube.name });
      row.append(el("td", { class: "name" }, link));
      const cell = (cls, value) => row.append(el("td", { class: cls, text: String(value) }));
      cell("ready", tube["current-jobs-ready"]);
      cell("reserved", tube["current-jobs-reserved"]);
      cell("delayed", tube["current-jobs-delayed"]);
      cell("buried", tube["current-jobs-buried"]);
      cell("urgent", tube["current-jobs-urgent"]);
      cell("watching", tube["current-watching"]);
      cell("waiting", tube["current-waiting"]);
      cell("puts", rate(old, tube, seconds, "total-jobs"));
      cell("deletes", rate(old, tube, seconds, "cmd-delete"));
      cell("pause", tube["pause-time-left"]);
      body.append(row);
    }
    table.append(body);
    section.append(table);
    if (server["tubes-not-shown"] > 0) {
      section.append(el("div", { class: "hint", text: server["tubes-not-shown"] + " more tubes match; narrow the filter to see them" }));
    }
    root.append(section);
    previous.set(server.index, { at: now, stats: s, tubes });
  }
  $("status").textContent = "updated " + new Date().toLocaleTimeString();
}

function serverKind(stats) {
  return stats["runnerbean-version"] ? "runnerbean " + stats["runnerbean-version"] : "beanstalkd " + stats["version"];
}

// ---- One tube -----------------------------------------------------------------------------

async function showTube(mine) {
  const { server, tube } = current;
  let data;
  try {
    data = await api(tubePath(server, tube));
  } catch (e) {
    if (mine !== generation) return;
    $("status").textContent = e.message;
    const why = e.message === "not found"
      ? "There is no tube " + tube + " now: a server keeps a tube only while it has jobs or a client uses or watches it."
      : tube + ": " + e.message;
    $("tube-summary").replaceChildren(el("div", { class: "error gone", text: why }));
    $("states").replaceChildren();
    return;
  }
  if (mine !== generation) return;
  $("tube-server").textContent = data.server;
  const s = data.stats;
  const summary = $("tube-summary");
  summary.replaceChildren();
  const item = (label, value, cls) => summary.append(el("div", { class: cls || "" }, el("span", { text: label }), String(value)));
  item("ready", s["current-jobs-ready"], "count-ready");
  item("reserved", s["current-jobs-reserved"], "count-reserved");
  item("delayed", s["current-jobs-delayed"], "count-delayed");
  item("buried", s["current-jobs-buried"], "count-buried");
  item("urgent", s["current-jobs-urgent"]);
  item("watching", s["current-watching"]);
  item("waiting", s["current-waiting"]);
  item("total jobs", s["total-jobs"]);
  item("paused", s["pause-time-left"] > 0 ? s["pause-time-left"] + " s left" : "no", "paused");

  const root = $("states");
  root.replaceChildren();
  for (const state of ["ready", "delayed", "buried"]) {
    root.append(stateSection(server, tube, state, data.states[state], s["current-jobs-" + state]));
  }
  $("status").textContent = "updated " + new Date().toLocaleTimeString();
}

function stateSection(server, tube, state, page, count) {
  const section = el("section", { class: "state", "data-state": state });
  const title = el("h3", {}, state + " ", el("span", { class: "count", text: "(" + count + ")" }));
  if (count > 0) {
    const clear = el("button", { class: "quiet danger clear", type: "button", text: "delete all " + state });
    confirmThen(clear, server + "/" + tube + "/" + state, "delete " + count + " " + state + " job(s)?", async () => {
      const done = await action(tubePath(server, tube) + "/clear", { states: [state] });
      notice("deleted " + done.deleted + " " + state + " job(s) from " + tube + (done["by-peeking"] ? " (one by one: this server has no clear-tube)" : ""));
    });
    title.append(clear);
  }
  section.append(title);
  if (page["by-peeking"] && count > 1) {
    section.append(el("div", { class: "peeking", text: "This server has no list-jobs: only the first " + state + " job can be seen (by peeking)." }));
  }
  if (page.jobs.length === 0) section.append(el("div", { class: "empty", text: "no " + state + " jobs" }));
  for (const job of page.jobs) section.append(jobCard(server, tube, state, job));
  if (page.more) {
    const more = el("button", { class: "quiet more", type: "button", text: "more" });
    more.addEventListener("click", async () => {
      const last = page.jobs[page.jobs.length - 1];
      try {
        const next = await api(tubePath(server, tube) + "/jobs?state=" + state + "&after=" + last.id);
        more.remove();
        for (const job of next.jobs) section.append(jobCard(server, tube, state, job));
        // Polling would replace the longer list; it stops until the view is opened again.
        stopPolling();
        $("status").textContent = "paused refreshing while more jobs are shown";
      } catch (e) {
        notice(e.message, true);
      }
    });
    section.append(more);
  }
  return section;
}

function jobCard(server, tube, state, job) {
  const card = el("div", { class: "job", "data-id": String(job.id) });
  const meta = el("div", { class: "meta" });
  const field = (label, value) => meta.append(el("span", {}, el("span", { class: "k", text: label }), String(value)));
  field("id", job.id);
  field("pri", job.pri);
  field("age", job.age + " s");
  if (state === "delayed") field("ready in", job["time-left"] + " s");
  field("ttr", job.ttr + " s");
  field("reserves", job.reserves);
  field("releases", job.releases);
  field("buries", job.buries);
  field("kicks", job.kicks);
  field("bytes", job["body-bytes"]);

  const bytes = Uint8Array.from(atob(job.body), (c) => c.charCodeAt(0));
  const key = server + "/" + job.id;
  const pre = el("pre", { class: "body" });
  const formatButtons = el("span", { class: "formats" });
  const show = (format) => {
    formats.set(key, format);
    pre.textContent = render(bytes, format) + (job.truncated ? "\n… (" + job["body-bytes"] + " bytes, the first " + bytes.length + " shown)" : "");
    for (const b of formatButtons.children) b.classList.toggle("on", b.dataset.format === format);
  };
  for (const format of ["text", "json", "hex"]) {
    const b = el("button", { class: "quiet format-" + format, type: "button", text: format, "data-format": format });
    b.addEventListener("click", () => show(format));
    formatButtons.append(b);
  }
  meta.append(formatButtons);

  const buttons = el("span", { class: "buttons" });
  if (state !== "ready") {
    const kick = el("button", { class: "quiet kick", type: "button", text: "kick" });
    kick.addEventListener("click", () => run(async () => {
      await action("/api/servers/" + server + "/jobs/" + job.id + "/kick");
      notice("kicked job " + job.id);
    }));
    buttons.append(kick);
  }
  const move = el("button", { class: "quiet move", type: "button", text: "move" });
  move.addEventListener("click", () => run(async () => {
    const to = $("move-to").value.trim();
    if (!to) throw new Error("type the target tube in the move form first");
    const done = await action(tubePath(server, tube) + "/move", { to, ids: [job.id] });
    notice(done.moved ? "moved job " + job.id + " to " + to : "job " + job.id + " was not there to move");
  }));
  buttons.append(move);
  const del = el("button", { class: "quiet danger delete", type: "button", text: "delete" });
  del.addEventListener("click", () => run(async () => {
    await action("/api/servers/" + server + "/jobs/" + job.id + "/delete");
    notice("deleted job " + job.id);
  }));
  buttons.append(del);
  meta.append(buttons);

  card.append(meta, pre);
  show(formats.get(key) || guessFormat(bytes));
  return card;
}

function utf8(bytes) {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    return null;
  }
}

function guessFormat(bytes) {
  const text = utf8(bytes);
  if (text === null) return "hex";
  try {
    const value = JSON.parse(text);
    if (value !== null && typeof value === "object") return "json";
  } catch {}
  return "text";
}

function render(bytes, format) {
  if (format === "hex") return hexDump(bytes);
  const text = utf8(bytes);
  if (text === null) return "(not UTF-8 text: shown as hex)\n" + hexDump(bytes);
  if (format === "json") {
    try {
      return JSON.stringify(JSON.parse(text), null, 2);
    } catch (e) {
      return "(not JSON: " + e.message + ")\n" + text;
    }
  }
  return text;
}

function hexDump(bytes) {
  const lines = [];
  for (let at = 0; at < bytes.length; at += 16) {
    const row = bytes.slice(at, at + 16);
    const hex = Array.from(row, (b) => b.toString(16).padStart(2, "0")).join(" ");
    const ascii = Array.from(row, (b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : ".")).join("");
    lines.push(at.toString(16).padStart(8, "0") + "  " + hex.padEnd(47) + "  " + ascii);
  }
  return lines.join("\n") || "(empty)";
}

// Runs an action, shows its failure, and refreshes the view at once.
async function run(work) {
  try {
    await work();
  } catch (e) {
    notice(e.message, true);
  }
  refresh();
}

// A dangerous button asks once more, in the page: the first click turns it into a question,
// the second does it. Which buttons are asking is kept by key, since a refresh redraws them.
const armed = new Set();

function confirmThen(button, key, question, work) {
  const ask = () => {
    button.classList.add("confirm");
    button.textContent = question + " click again to confirm";
  };
  if (armed.has(key)) ask();
  button.addEventListener("click", () => {
    if (armed.delete(key)) {
      run(work);
      return;
    }
    armed.add(key);
    ask();
  });
}

function wireTubeForms() {
  const here = () => tubePath(current.server, current.tube);
  const number = (id) => Number($(id).value);
  $("put-form").addEventListener("submit", (event) => {
    event.preventDefault();
    run(async () => {
      const body = { body: $("put-body").value, pri: number("put-pri"), delay: number("put-delay"), ttr: number("put-ttr") };
      const done = await action(here() + "/put", body);
      notice("put job " + done.id + " into " + current.tube);
      $("put-body").value = "";
    });
  });
  $("kick-form").addEventListener("submit", (event) => {
    event.preventDefault();
    run(async () => {
      const done = await action(here() + "/kick", { count: number("kick-count") });
      notice("kicked " + done.kicked + " job(s) in " + current.tube);
    });
  });
  $("pause-form").addEventListener("submit", (event) => {
    event.preventDefault();
    run(async () => {
      await action(here() + "/pause", { seconds: number("pause-seconds") });
      notice("paused " + current.tube + " for " + number("pause-seconds") + " s");
    });
  });
  $("unpause-button").addEventListener("click", () => run(async () => {
    await action(here() + "/pause", { seconds: 0 });
    notice(current.tube + " is no longer paused");
  }));
  $("move-form").addEventListener("submit", (event) => {
    event.preventDefault();
    run(async () => {
      const to = $("move-to").value.trim();
      const states = ["ready", "delayed", "buried"].filter((s) => $("move-" + s).checked);
      if (!to) throw new Error("type the target tube first");
      if (states.length === 0) throw new Error("tick at least one state");
      const done = await action(here() + "/move", { to, states });
      notice("moved " + done.moved + " job(s) from " + current.tube + " to " + to);
    });
  });
}

// ---- Routing and polling ------------------------------------------------------------------

function route() {
  const match = window.location.hash.match(/^#\/s\/(\d+)\/t\/(.+)$/);
  current = match ? { server: Number(match[1]), tube: decodeURIComponent(match[2]) } : null;
  $("overview-view").hidden = current !== null;
  $("tube-view").hidden = current === null;
  $("notice").hidden = true;
  armed.clear();
  if (current) {
    $("tube-name").textContent = current.tube;
    $("states").replaceChildren();
    $("tube-summary").replaceChildren();
  }
  startPolling();
}

function refresh() {
  const mine = ++generation;
  return current ? showTube(mine) : showOverview(mine);
}

function stopPolling() {
  if (timer !== null) clearInterval(timer);
  timer = null;
}

function startPolling() {
  stopPolling();
  refresh();
  timer = setInterval(refresh, current ? TUBE_POLL_MS : OVERVIEW_POLL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  wireTubeForms();
  $("filter").addEventListener("input", () => { if (!current) refresh(); });
  $("logout").addEventListener("click", async () => {
    await action("/logout").catch(() => {});
    window.location.href = "/login";
  });
  window.addEventListener("hashchange", route);
  route();
});
