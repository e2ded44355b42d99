// buildbay: progressive enhancement only; every page works without this file.
"use strict";

// Live events: rows arrive over Server-Sent Events (/api/events) into every events table,
// filtered like the page's filter form.
function liveEvents() {
  const tables = document.querySelectorAll("table[data-live-events] tbody");
  if (!tables.length || !window.EventSource) return;
  const form = document.querySelector("form[data-event-filter]");
  const want = (e) => {
    if (!form) return true;
    const f = new FormData(form);
    return (!f.get("type") || f.get("type") === e.type) &&
      (!f.get("distribution") || f.get("distribution") === e.distribution) &&
      (!f.get("source") || f.get("source") === e.source);
  };
  const status = document.querySelector("[data-live-status]");
  const es = new EventSource("/api/events?after=" + encodeURIComponent(new Date().toISOString()));
  es.onopen = () => { if (status) status.dataset.connected = "yes"; };
  const types = ["REJECTED", "PACKAGING", "BUILDING", "BUILT", "INSTALLED", "FAILED", "MIGRATED", "REMOVED"];
  for (const t of types) {
    es.addEventListener(t, (msg) => {
      let e;
      try { e = JSON.parse(msg.data); } catch (_) { return; }
      if (!want(e)) return;
      for (const tbody of tables) tbody.prepend(eventRow(e));
      if (status) status.textContent = "Live: " + e.type + " " + e.source + " " + e.version + " arrived.";
    });
  }
}

// Built with textContent only: event text is never parsed as HTML.
function eventRow(e) {
  const tr = document.createElement("tr");
  tr.className = "fresh";
  tr.dataset.type = e.type;
  tr.dataset.source = e.source;
  const cell = (text) => { const td = document.createElement("td"); td.textContent = text; tr.append(td); return td; };
  const time = document.createElement("time");
  time.dateTime = e.timestamp; time.textContent = e.timestamp;
  cell("").append(time);
  const badge = document.createElement("span");
  badge.className = "badge ev-" + e.type.replace(/[^A-Z_]/g, ""); badge.textContent = e.type;
  cell("").append(badge);
  const a = document.createElement("a");
  a.href = "/mini_buildd/sources/" + encodeURIComponent(e.source) + "/"; a.textContent = e.source;
  cell("").append(a);
  cell(e.version);
  cell(e.distribution);
  const extra = cell("");
  extra.className = "extra";
  for (const [k, v] of Object.entries(e.extra || {})) {
    const s = document.createElement("span"); s.textContent = k + ": " + (typeof v === "string" ? v : JSON.stringify(v)); extra.append(s, " ");
  }
  return tr;
}

// API forms: keep the equivalent command line up to date.
function apiForms() {
  for (const form of document.querySelectorAll("form[data-cli]")) {
    const out = form.querySelector("code.cli");
    const update = () => {
      const parts = [form.dataset.cli];
      for (const el of form.querySelectorAll("[data-flag]")) {
        const flag = el.dataset.flag;
        if (el.type === "checkbox") { if (el.checked) parts.push(flag); continue; }
        if (!el.value) continue;
        if (el.type === "password") { parts.push(flag + " …"); continue; }
        const v = /^[\w.,:+\/@=-]+$/.test(el.value) ? el.value : "'" + el.value.replace(/'/g, "'\\''") + "'";
        parts.push(flag.startsWith("--") ? flag + " " + v : v);
      }
      out.textContent = parts.join(" ");
    };
    form.addEventListener("input", update);
    form.addEventListener("change", update);
  }
}

// Live build logs: <pre data-log-follow="URL"> gets the build's output as it is written, over
// Server-Sent Events, as text. The tail is kept to the last LOG_KEEP characters.
const LOG_KEEP = 200000;
function liveLogs() {
  if (!window.EventSource) return;
  for (const pre of document.querySelectorAll("pre[data-log-follow]")) {
    const state = pre.parentElement.querySelector("[data-log-state]");
    const es = new EventSource(pre.dataset.logFollow);
    es.onopen = () => { pre.dataset.connected = "yes"; if (state) state.textContent = "following"; };
    es.addEventListener("log", (msg) => {
      let text;
      try { text = JSON.parse(msg.data); } catch (_) { return; }
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.textContent = (pre.textContent + text).slice(-LOG_KEEP);
      if (atEnd) pre.scrollTop = pre.scrollHeight;
    });
    es.addEventListener("end", () => {
      es.close();
      pre.dataset.ended = "yes";
      if (state) state.textContent = "finished; reload the page for its result";
    });
  }
}

document.addEventListener("DOMContentLoaded", () => { liveEvents(); apiForms(); liveLogs(); });
