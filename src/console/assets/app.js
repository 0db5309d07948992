// fleetsim console: reads the token from the URL fragment (never sent to the
// server in a URL), follows the live feed over fetch (so the token travels in
// a header), and drives hands-on devices through the JSON API.
"use strict";

const HISTORY = 60;
let token = new URLSearchParams(location.hash.slice(1)).get("token") || "";
let handsOnSerial = null;
const history = { provision: [], rotate: [], publish: [] };
const p99History = {};

const $ = (id) => document.getElementById(id);

function headers(json) {
  const h = {};
  if (token) h["Authorization"] = "Bearer " + token;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

async function api(path, body) {
  const init = body === undefined
    ? { headers: headers(false) }
    : { method: "POST", headers: headers(true), body: JSON.stringify(body) };
  const response = await fetch("/api" + path, init);
  const data = await response.json().catch(() => ({}));
  if (response.status === 401) askForToken(data.error);
  return { status: response.status, data };
}

function askForToken(reason) {
  $("console").hidden = true;
  $("token-form").hidden = false;
  $("token-error").textContent = reason || "";
}

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function fillTable(table, head, rows) {
  table.replaceChildren();
  if (head) {
    const tr = el("tr");
    head.forEach((h) => tr.appendChild(el("th", h)));
    table.appendChild(tr);
  }
  rows.forEach((row) => {
    const tr = el("tr");
    row.forEach((cell) => tr.appendChild(cell instanceof Node ? cell : el("td", cell)));
    table.appendChild(tr);
  });
}

function td(node) {
  const cell = el("td");
  cell.appendChild(node);
  return cell;
}

function spark(values, width, height, cls) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", cls || "spark");
  const max = Math.max(1e-9, ...values);
  const points = values.map((v, i) =>
    `${(i / Math.max(1, HISTORY - 1)) * width},${height - (v / max) * (height - 2) - 1}`);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points.join(" "));
  line.setAttribute("fill", "none");
  line.setAttribute("stroke", "#2f5fd0");
  line.setAttribute("stroke-width", "1.5");
  svg.appendChild(line);
  return svg;
}

function push(list, value) {
  list.push(value);
  if (list.length > HISTORY) list.shift();
}

// ---- fleet view ----

function showFleet(doc) {
  const fleet = doc.fleet;
  $("fleet-panel").hidden = !fleet && !doc.emulator;
  if (doc.emulator) showEmulator(doc.emulator);
  else fillTable($("emulator"), null, [["metrics", "not served (--no-metrics)"]]);
  if (!fleet) return;
  $("run-name").textContent = fleet.run + " · " + Math.round(fleet.elapsed_seconds) + " s";
  fillTable($("states"), null, Object.entries(fleet.states).concat([
    ["provisioned", fleet.provisioned + " / " + fleet.size],
    ["rotations", fleet.rotations],
  ]));
  fillTable($("rates"), null, Object.entries(fleet.rates));
  Object.keys(history).forEach((op) => push(history[op], fleet.rates[op] || 0));
  const chart = $("rate-chart");
  chart.replaceChildren(...spark(history.provision, 240, 60).childNodes);
  fillTable($("latency"), ["op", "count", "p50", "p90", "p99", "max", "p99 trend"],
    fleet.latency.map((l) => {
      p99History[l.op] = p99History[l.op] || [];
      push(p99History[l.op], l.p99_ms);
      return [l.op, l.count, l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms, td(spark(p99History[l.op], 120, 22))];
    }));
  const failures = fleet.failures.map((f) => [f.op, f.reason, f.count]);
  failures.push(["(all)", "throttled", fleet.throttled]);
  fillTable($("failures"), ["op", "reason", "count"], failures);
  fillTable($("slo"), ["objective", "measured", "limit", ""], fleet.slo.map((s) => [
    s.name, s.measured === null ? "–" : s.measured + " " + s.unit,
    (s.bound === "AtMost" ? "≤ " : "≥ ") + s.threshold,
    el("td", s.passed ? "holds" : "missed", s.passed ? "ok" : "bad"),
  ]));
}

function showEmulator(emulator) {
  const rows = [["connections", emulator.connections]];
  Object.entries(emulator.connects).forEach(([k, v]) => rows.push(["connect " + k, v]));
  Object.entries(emulator.refusals).forEach(([k, v]) => rows.push(["refused: " + k, v]));
  fillTable($("emulator"), null, rows);
}

// Counting the registry walks every record, so it is read on request only.
async function showRegistry() {
  const { status, data } = await api("/registry");
  if (status !== 200) return;
  fillTable($("registry"), null, [["things", data.things], ["certificates", data.certificates]]
    .concat(Object.entries(data.certificates_by_status)));
}

// ---- live feed ----

async function follow() {
  try {
    const response = await fetch("/api/events", { headers: headers(false) });
    if (response.status === 401) {
      askForToken((await response.json().catch(() => ({}))).error);
      return;
    }
    $("feed-status").textContent = "live";
    $("feed-status").className = "pill ok";
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        dispatch(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
    }
  } catch (e) {
    // The run ended or the network dropped; say why and try again below.
    $("feed-status").title = String(e);
  }
  $("feed-status").textContent = "disconnected";
  $("feed-status").className = "pill bad";
  setTimeout(follow, 2000);
}

function dispatch(chunk) {
  let event = "message";
  const data = [];
  chunk.split("\n").forEach((line) => {
    if (line.startsWith("event:")) event = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  });
  if (!data.length) return;
  const doc = JSON.parse(data.join("\n"));
  if (event === "fleet") showFleet(doc);
  if (event === "step" && doc.serial === handsOnSerial) {
    logSteps([doc.step]);
    refreshHandsOn();
  }
}

// ---- device view ----

function certificateRows(cert) {
  if (!cert) return [["certificate", "none"]];
  return [
    ["id", el("td", cert.id, "mono")],
    ["serial", el("td", cert.serial, "mono")],
    ["notBefore", cert.not_before],
    ["notAfter", cert.not_after],
    ["key type", cert.key_type],
    ["registry status", cert.registry_status || "–"],
  ];
}

function retiredRows(retired) {
  return retired.map((r) => [el("td", r.id.slice(0, 16) + "…", "mono"),
    el("td", r.registry_status || "–", r.registry_status === "REVOKED" ? "ok" : "bad")]);
}

function showDevice(device) {
  const box = $("device-detail");
  box.replaceChildren();
  box.appendChild(el("p", `${device.serial} (${device.kind}) · thing ${device.thing || "–"} · ${device.state} · ${device.rotations} rotations`));
  const cert = el("table");
  fillTable(cert, null, certificateRows(device.current));
  box.append(el("h3", "Current certificate"), cert);
  const retired = el("table");
  fillTable(retired, null, retiredRows(device.retired));
  box.append(el("h3", "Retired certificates"), retired);
  const errors = el("ol");
  device.errors.forEach((s) => errors.appendChild(el("li", `${s.at} ${s.name}: ${s.detail}`, "bad")));
  box.append(el("h3", "Last errors"), errors);
  const steps = el("table", null, "wide");
  fillTable(steps, ["at", "step", "ms", "what happened"], device.steps.map((s) => [
    s.at.slice(11, 23), el("td", s.name, s.ok ? "ok" : "bad"), s.duration_ms, s.detail]));
  box.append(el("h3", "Timeline"), steps);
}

async function openDevice(key) {
  const { status, data } = await api("/devices/" + encodeURIComponent(key));
  if (status === 200) showDevice(data);
  else $("device-detail").replaceChildren(el("p", data.error, "bad"));
}

async function search(event) {
  event.preventDefault();
  const text = $("search-input").value.trim();
  const { data } = await api("/devices?q=" + encodeURIComponent(text));
  const list = $("search-results");
  list.replaceChildren();
  (data.devices || []).forEach((d) => {
    const item = el("li", `${d.serial} · ${d.state} · ${d.kind}`);
    item.addEventListener("click", () => openDevice(d.serial));
    list.appendChild(item);
  });
  if (text) openDevice(text);
}

// ---- hands-on ----

// Steps come both in action replies and on the live feed (messages and
// automatic rotations only there); each is shown once.
const logged = new Set();

function logSteps(steps) {
  const log = $("wire-log");
  steps.forEach((s) => {
    const key = `${s.at}|${s.name}|${s.detail}`;
    if (logged.has(key)) return;
    logged.add(key);
    log.appendChild(el("li", `${s.at.slice(11, 23)} ${s.name} (${s.duration_ms} ms): ${s.detail}`, s.ok ? "" : "bad"));
  });
  log.scrollTop = log.scrollHeight;
}

function logRefusal(data) {
  $("wire-log").appendChild(el("li", "refused by the console: " + data.error, "bad"));
}

async function refreshHandsOn() {
  if (!handsOnSerial) return;
  const { status, data } = await api("/devices/" + encodeURIComponent(handsOnSerial));
  if (status !== 200) return;
  $("hands-on-state").textContent = data.state;
  fillTable($("hands-on-cert"), null, certificateRows(data.current));
  fillTable($("hands-on-retired"), ["id", "registry status"], retiredRows(data.retired));
  if (data.thing && !$("topic-input").value) $("topic-input").value = `fleetsim/${data.thing}/console`;
}

async function perform(path, body) {
  const { status, data } = await api(path, body);
  if (status === 200) logSteps(data.steps);
  else logRefusal(data);
  await refreshHandsOn();
  return status;
}

async function create(event) {
  event.preventDefault();
  const serial = $("serial-input").value.trim();
  const status = await perform("/hands-on", { serial });
  if (status === 200) {
    handsOnSerial = serial;
    $("hands-on-serial").textContent = serial;
    $("topic-input").value = "";
    $("hands-on-controls").hidden = false;
    await refreshHandsOn();
  }
}

function action(name, body) {
  return () => perform(`/hands-on/${encodeURIComponent(handsOnSerial)}/${name}`, body ? body() : {});
}

async function start() {
  const { status, data } = await api("/overview");
  if (status !== 200) return;
  $("token-form").hidden = true;
  $("console").hidden = false;
  $("run-name").textContent = data.run || "";
  $("fleet-panel").hidden = !data.fleet && !data.emulator_metrics;
  $("hands-on-panel").hidden = !data.hands_on;
  $("registry-btn").hidden = !data.registry;
  if (data.registry) showRegistry();
  follow();
}

function wire() {
  $("token-btn").addEventListener("click", () => {
    token = $("token-input").value.trim();
    start();
  });
  $("search-form").addEventListener("submit", search);
  $("registry-btn").addEventListener("click", showRegistry);
  $("create-form").addEventListener("submit", create);
  $("connect-btn").addEventListener("click", action("connect"));
  $("disconnect-btn").addEventListener("click", action("disconnect"));
  $("rotate-btn").addEventListener("click", action("rotate"));
  $("subscribe-btn").addEventListener("click", action("subscribe", () => ({ topic: $("topic-input").value.trim() })));
  $("publish-btn").addEventListener("click", action("publish", () => ({
    topic: $("topic-input").value.trim(), payload: $("payload-input").value })));
  $("auto-btn").addEventListener("click", action("auto-rotation", () => ({
    enabled: $("auto-enabled").checked,
    check_every: $("auto-check").value.trim(),
    renew_before: $("auto-renew").value.trim(),
  })));
  start();
}

document.addEventListener("DOMContentLoaded", wire);
