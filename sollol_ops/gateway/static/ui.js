// sollol-ops gateway page. Vanilla JS, no build step, nothing fetched from elsewhere.
// Every string from the gateway goes into the page as text (textContent / text nodes), never as HTML.
"use strict";

const KEY_ITEM = "sollol-ops-key";
const COLORS = ["#0969da", "#1a7f37", "#8250df", "#bf5a00", "#cf222e", "#0a7ea4", "#9a6700", "#6639ba"];
const HOST_COLOR = "#6e7781";
let key = sessionStorage.getItem(KEY_ITEM) || "";
let backoff = 500;
let aborter = null;
let last = null;
let pending = "";  // the model a Load button press waits for

// ------------------------------------------------------------------ helpers

function el(tag, props, ...kids) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") node.className = v;
    else if (k === "data") for (const [dk, dv] of Object.entries(v)) node.dataset[dk] = String(dv);
    else if (k === "title") node.title = String(v);
    else if (k === "onclick") node.addEventListener("click", v);
    else node.setAttribute(k, String(v));
  }
  for (const kid of kids) {
    if (kid === null || kid === undefined || kid === false) continue;
    node.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return node;
}

function $(id) { return document.getElementById(id); }
function mib(bytes) { return bytes === null || bytes === undefined ? "-" : (bytes / 1048576).toLocaleString(undefined, { maximumFractionDigits: 0 }) + " MiB"; }
function num(v, digits) { return v === null || v === undefined ? "-" : Number(v).toFixed(digits); }
function bps(v) { return v >= 1e9 ? (v / 1e9).toFixed(2) + " Gbit/s" : (v / 1e6).toFixed(0) + " Mbit/s"; }
function headers(extra) { return Object.assign(key ? { Authorization: "Bearer " + key } : {}, extra || {}); }
function badge(state) { return el("span", { class: "state state-" + String(state).replace(/[^a-z-]/g, "") }, state); }

function setConn(state, text) {
  const c = $("conn");
  c.dataset.state = state;
  c.textContent = text;
}

// ------------------------------------------------------------------ the key

function takeKeyFromUrl() {
  const url = new URL(location.href);
  if (url.searchParams.has("key")) {
    key = url.searchParams.get("key") || "";
    sessionStorage.setItem(KEY_ITEM, key);
    url.searchParams.delete("key");
    history.replaceState(null, "", url.pathname + url.search + url.hash);  // not kept in the address bar
  }
}

function askKey(message) {
  setConn("key", "API key needed");
  $("keyform").hidden = false;
  $("keyerr").textContent = message || "";
  $("key").focus();
}

// ------------------------------------------------------------------ the event stream (fetch: it can send the key)

async function connect() {
  if (aborter) aborter.abort();
  const mine = new AbortController();
  aborter = mine;
  let watchdog = null;
  const kick = () => { clearTimeout(watchdog); watchdog = setTimeout(() => mine.abort(), 40000); };
  try {
    const resp = await fetch("/gateway/events", { headers: headers({ Accept: "text/event-stream" }), signal: mine.signal, cache: "no-store" });
    if (resp.status === 401) {
      let why = "";
      try { why = (await resp.json()).error || ""; } catch (e) { /* not JSON */ }
      askKey(key ? why : "");
      return;
    }
    if (!resp.ok || !resp.body) throw new Error("HTTP " + resp.status);
    $("keyform").hidden = true;
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    kick();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      kick();
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        onEvent(block);
      }
    }
  } catch (e) {
    if (aborter !== mine) return;  // replaced by a newer connection
  } finally {
    clearTimeout(watchdog);
  }
  if (aborter !== mine) return;
  const wait = backoff;
  backoff = Math.min(backoff * 2, 10000);
  setConn("reconnecting", "reconnecting in " + Math.round(wait / 1000) + "s");
  setTimeout(connect, wait);
}

function onEvent(block) {
  let name = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) name = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  if (name !== "status" || !data.length) return;
  let snap;
  try { snap = JSON.parse(data.join("\n")); } catch (e) { return; }
  backoff = 500;
  setConn("live", "live");
  last = snap;
  render(snap);
}

// ------------------------------------------------------------------ rendering

function render(s) {
  const g = s.gateway || {};
  $("gateway").textContent = "gateway " + (g.version || "") + " · mode " + s.mode + " · up " + Math.round(g.uptime_s || 0) + "s";
  renderNodes(s);
  renderModel(s);
  renderLoad(s);
  renderCharts(s.series || {});
  renderRequests(s.requests || []);
  renderLoaded(s);
}

function nodeCard(kind, name, state, title, lines) {
  return el("div", { class: "node", data: { kind: kind, name: name, state: state } },
    el("div", { class: "kind" }, kind), el("div", { class: "title" }, title, " ", badge(state)),
    ...lines.filter(Boolean).map((l) => el("div", { class: "line" }, l)));
}

function renderNodes(s) {
  const cards = [];
  const cl = s.cluster || {};
  const c = cl.coordinator;
  const od = s.on_demand;
  if (c || od) {
    let state = c ? c.state : "not running";
    if (od && (od.phase === "loading" || od.phase === "stopping")) state = od.phase;
    if (c && c.degraded && state === "serving") state = "degraded";
    const lines = [];
    if (c && c.model) lines.push("model " + c.model);
    if (c && c.endpoint) lines.push(c.endpoint + (c.pid ? " · pid " + c.pid : ""));
    if (od) lines.push("on demand: " + od.phase + (od.in_flight ? " · " + od.in_flight + " in flight" : "") + (od.expires_in_s !== null && od.expires_in_s !== undefined ? " · unloads in " + Math.round(od.expires_in_s) + "s" : ""));
    if (c && c.detail) lines.push(c.detail);
    if (od && od.last_error) lines.push("last error: " + od.last_error);
    cards.push(nodeCard("coordinator", "coordinator", state, "coordinator", lines));
  }
  for (const b of cl.backends || []) {
    const mem = (b.devices || []).map((d) => "dev " + d.index + ": " + mib(d.free) + " free of " + mib(d.total)).join("; ");
    const link = b.link ? "link " + bps(b.link.throughput_bps) + ", rtt " + num(b.link.rtt_ms, 2) + " ms (doctor)" : "";
    cards.push(nodeCard("rpc-server", b.endpoint, b.state, b.host + " " + b.endpoint,
      [b.version ? "protocol " + b.version : "", mem ? mem + (b.devices_as_of ? " (as last probed)" : "") : "", link, b.detail]));
  }
  for (const n of s.pool || []) {
    cards.push(nodeCard("pool node", n.node, n.state, n.node + " (" + n.api + ")",
      [n.url, n.outstanding ? n.outstanding + " outstanding" : "", (n.loaded || []).length ? "loaded: " + n.loaded.join(", ") : "",
        n.last_error ? "last error: " + n.last_error : ""]));
  }
  if (cl.error) cards.push(el("div", { class: "error" }, cl.error));
  $("nodes").replaceChildren(...cards);
}

function renderModel(s) {
  const c = (s.cluster || {}).coordinator;
  const dist = c && c.distribution;
  const bar = $("layerbar"), legend = $("legend");
  if (!c || !c.model || !dist || !(dist.devices || []).length) {
    $("model").textContent = c && c.model ? c.model + ": no layer figures yet" : "no sharded model loaded";
    bar.replaceChildren();
    legend.replaceChildren();
    $("draft").replaceChildren();
    return;
  }
  const hosts = {};
  for (const b of (s.cluster || {}).backends || []) hosts[b.endpoint] = b.host;
  const devs = dist.devices.filter((d) => d.layers);
  const total = devs.reduce((a, d) => a + d.layers, 0) || 1;
  const off = dist.offloaded ? " · offloaded " + dist.offloaded[0] + "/" + dist.offloaded[1] + " layers" : "";
  $("model").textContent = c.model + " · " + total + " layers" + off;
  const segs = [], items = [];
  devs.forEach((d, i) => {
    const rpc = d.name.includes(":");
    const color = rpc ? COLORS[i % COLORS.length] : HOST_COLOR;
    const label = (hosts[d.name] ? hosts[d.name] + " " : "") + d.name;
    const seg = el("div", { class: "seg", data: { where: d.name, layers: d.layers }, title: label + ": " + d.layers + " layers" }, String(d.layers));
    seg.style.flexGrow = String(d.layers);
    seg.style.flexBasis = "0";
    seg.style.background = color;
    segs.push(seg);
    const sw = el("span", { class: "swatch" });
    sw.style.background = color;
    items.push(el("li", { data: { where: d.name } }, sw, label + ": " + d.layers + " layers · " + num(d.model_mib, 1) + " MiB weights, " + num(d.kv_mib, 1) + " MiB KV"));
  });
  bar.replaceChildren(...segs);
  legend.replaceChildren(...items);
  // The draft model (speculative decoding), where the coordinator has one: it runs on the coordinator.
  const cd = c.draft, dd = dist.draft;
  if (!cd && !dd) { $("draft").replaceChildren(); return; }
  const name = cd ? (cd.model || (cd.mode === "ngram" ? "n-gram" : cd.mode)) : "draft";
  const where = cd && cd.device ? " on the coordinator's " + cd.device : " on the coordinator";
  const size = dd && dd.model_mib ? " · " + num(dd.model_mib, 1) + " MiB weights" : (cd && cd.need_mib ? " · " + num(cd.need_mib, 0) + " MiB" : "");
  const rate = cd && cd.acceptance_rate !== null && cd.acceptance_rate !== undefined
    ? " · acceptance " + (cd.acceptance_rate * 100).toFixed(1) + "% (" + cd.accepted + " of " + cd.drafted + " drafted)" : "";
  const sw = el("span", { class: "swatch draft-swatch" });
  $("draft").replaceChildren(el("div", { class: "draft", data: { draft: name } }, sw, "draft " + name + where + size + rate));
}

function renderLoad(s) {
  const l = s.load;
  const box = $("load");
  if (!l) { box.className = "muted"; box.replaceChildren("nothing loading"); return; }
  box.className = "";
  const bytes = l.staged_bytes !== null && l.staged_bytes !== undefined ? mib(l.staged_bytes) + " staged" : "nothing staged";
  const sent = l.sent_bytes !== null && l.sent_bytes !== undefined ? mib(l.sent_bytes) + " sent · " : "";
  box.replaceChildren(
    el("div", { data: { phase: l.phase } }, badge(l.phase), " ", l.model || "", " · " + num(l.elapsed_s, 0) + "s · " + (l.step || "")),
    el("div", { class: "muted" }, sent + bytes),
    l.log ? el("pre", { class: "log" }, l.log) : null);
}

function renderRequests(reqs) {
  const rows = reqs.map((r) => el("tr", { data: { id: r.id, route: r.route, state: r.state } },
    el("td", {}, r.id), el("td", {}, new Date(r.started_at * 1000).toLocaleTimeString()), el("td", {}, r.model),
    el("td", {}, r.endpoint), el("td", { class: "route" }, r.route), el("td", {}, r.node),
    el("td", {}, badge(r.state), r.status ? " " + r.status : "", r.error ? el("div", { class: "error" }, r.error) : null),
    el("td", { class: "num" }, num(r.ttft_s, 2)), el("td", { class: "num" }, num(r.tok_s, 1)),
    el("td", { class: "num" }, r.tokens === null || r.tokens === undefined ? "-" : r.tokens), el("td", { class: "num" }, num(r.duration_s, 2))));
  $("requests").tBodies[0].replaceChildren(...rows);
}

function chart(canvas, ts, values, color) {
  const ratio = window.devicePixelRatio || 1;
  const w = Math.max(50, canvas.clientWidth), h = Math.max(40, canvas.clientHeight);
  if (canvas.width !== w * ratio || canvas.height !== h * ratio) { canvas.width = w * ratio; canvas.height = h * ratio; }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const span = 300, now = ts.length ? ts[ts.length - 1] : 0;
  const max = Math.max(1, ...values);
  ctx.strokeStyle = "#d9dee7";
  ctx.fillStyle = "#667085";
  ctx.font = "10px system-ui, sans-serif";
  ctx.beginPath(); ctx.moveTo(0, h - 14.5); ctx.lineTo(w, h - 14.5); ctx.stroke();
  ctx.fillText(String(Math.round(max * 10) / 10), 2, 10);
  ctx.fillText("-5 min", 2, h - 3);
  ctx.fillText("now", w - 22, h - 3);
  if (!ts.length) return;
  ctx.strokeStyle = color;
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  ts.forEach((t, i) => {
    const x = w - ((now - t) / span) * w, y = (h - 16) - (values[i] / max) * (h - 30);
    if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
  });
  ctx.stroke();
}

function renderCharts(series) {
  const t = series.t || [], tok = series.tok_s || [], inflight = series.in_flight || [];
  chart($("tok-chart"), t, tok, "#0969da");
  chart($("inflight-chart"), t, inflight, "#1a7f37");
  $("tok-now").textContent = tok.length ? "(now " + num(tok[tok.length - 1], 1) + ")" : "";
  $("inflight-now").textContent = inflight.length ? "(now " + inflight[inflight.length - 1] + ")" : "";
}

// ------------------------------------------------------------------ actions (behind the key)

function say(text, bad) {
  const m = $("action-msg");
  m.className = bad ? "error" : "muted";
  m.textContent = text;
}

async function act(path, model) {
  say(path.endsWith("unload") ? "unloading " + model + "…" : "loading " + model + "…");
  try {
    const r = await fetch(path, { method: "POST", headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify({ model: model }) });
    let body = {};
    try { body = await r.json(); } catch (e) { /* not JSON */ }
    if (r.status === 401) { askKey(body.error || ""); return; }
    if (!r.ok) { say(model + ": " + (body.error || "HTTP " + r.status), true); return; }
    say(model + ": " + (body.status || "done"));
    pending = body.status === "loading" ? model : "";
  } catch (e) {
    say(model + ": " + e, true);
  }
}

function renderLoaded(s) {
  const od = s.on_demand;
  const box = $("loaded");
  if (pending && od && od.model === pending && od.phase === "serving") { say(pending + ": loaded"); pending = ""; }
  if (pending && od && od.last_error && od.phase === "idle") { say(pending + ": " + od.last_error, true); pending = ""; }
  if (!od || !od.model || od.phase === "idle") { box.replaceChildren(); return; }
  const can = od.owned && (od.phase === "serving" || od.phase === "draining");
  const btn = el("button", { type: "button", class: "unload", data: { model: od.model }, onclick: () => act("/gateway/unload", od.model) }, "Unload " + od.model);
  btn.disabled = !can;
  box.replaceChildren(btn, od.owned ? "" : el("span", { class: "muted" }, " started by sollol-ops up: stop it with sollol-ops down"));
}

async function loadModels() {
  try {
    const r = await fetch("/api/tags", { headers: headers() });
    if (!r.ok) return;
    const names = ((await r.json()).models || []).map((m) => m.name || m.model).filter(Boolean);
    const sel = $("models");
    const keep = sel.value;
    sel.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
    if (names.includes(keep)) sel.value = keep;
  } catch (e) { /* the stream shows the connection state */ }
}

// ------------------------------------------------------------------ start

function start() {
  takeKeyFromUrl();
  $("keyform").addEventListener("submit", (ev) => {
    ev.preventDefault();
    key = $("key").value.trim();
    sessionStorage.setItem(KEY_ITEM, key);
    $("key").value = "";
    setConn("connecting", "connecting");
    connect();
    loadModels();
  });
  $("load-btn").addEventListener("click", () => { const m = $("models").value; if (m) act("/gateway/load", m); });
  window.addEventListener("resize", () => { if (last) renderCharts(last.series || {}); });
  connect();
  loadModels();
  setInterval(loadModels, 30000);
}

document.addEventListener("DOMContentLoaded", start);
