// rstscope dashboard: one page over the API of the same server (no CDN, no build step).
// Offline captures can be old, so the period is taken from the data's own span (/rstscope/meta), never
// from the browser's clock. What was drawn is exposed on window.rstscope for the browser test.
// Names (countries, ASes) come from the API: /rstscope/meta and the top lists carry them.
// Change alerts (/rstscope/alerts) are shaded on the chart with a tooltip and listed under it; outliers among
// peers (/rstscope/outliers) fill their own table.
// The transport selector (TCP / QUIC) passes `transport` to every request; QUIC reuses the stage keys with
// the meanings of docs/quic.md, so only the hints and the title change with it.
"use strict";

// The stages and their order come from the API (/rstscope/meta `stages`); LABELS and HINTS only name them.
let STAGES = [];
const LABELS = {
  post_syn: "Post-SYN", post_ack: "Post-ACK", post_psh: "Post-PSH", later_in_flow: "Later in flow", no_match: "No match",
};
const HINTS = {
  tcp: {
    post_syn: "reset or timeout mid-handshake (source may be spoofed)",
    post_ack: "after the handshake, before any data",
    post_psh: "after the first data packet (e.g. ClientHello)",
    later_in_flow: "reset after several data packets",
    no_match: "closed normally or still alive",
  },
  quic: {
    post_syn: "client Initials only: the handshake never completed",
    post_ack: "handshake done, no 1-RTT packet followed",
    post_psh: "one 1-RTT flight, then silence",
    later_in_flow: "not used for QUIC (no visible reset)",
    no_match: "several flights, a restart or the 10-packet cap",
  },
};
const TITLES = { tcp: "TCP resets and timeouts", quic: "QUIC handshake stalls and timeouts" };
const SUBTITLES = {
  quic: "QUIC connection attempts by how far the handshake got before the client's packets stopped: a censor "
    + "cannot inject a reset into QUIC, it drops. Passive, one direction only.",
};
const css = getComputedStyle(document.documentElement);
const COLORS = Object.fromEntries(Object.keys(LABELS).map((s) => [s, css.getPropertyValue("--" + s).trim()]));
const SIG_STAGE_COLOR = (stage) => COLORS[stage] || "#5b6b86";
const regionNames = typeof Intl.DisplayNames === "function" ? new Intl.DisplayNames(["en"], { type: "region" }) : null;

const state = { transport: "tcp", scope: "world", location: null, asn: null, period: "all", agg: "", showNone: true,
  outlierDim: "country_asn" };
const exposed = (window.rstscope = { state, ready: false, generation: 0, meta: null, summary: null, series: null,
  drawn: null, tags: null, signatures: null, alerts: null, alertBands: [], outliers: null, errors: [] });
let meta = null;
let chart = null;

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "style") e.style.cssText = v; else if (k.startsWith("data-")) e.setAttribute(k, v); else e[k] = v;
  }
  for (const kid of kids) e.append(kid);
  return e;
};

// key -> name, from /rstscope/meta (countries: English short names; ASes: the ASN database's organisation).
const NAMES = { location: new Map(), asn: new Map() };
function countryName(cc) {
  if (cc === "XX") return "Unknown";
  const known = NAMES.location.get(cc);
  if (known) return known;
  try { return (regionNames && regionNames.of(cc)) || cc; } catch { return cc; }
}
// "AS4134 CHINANET-BACKBONE"; "AS64500" when the database has no name; AS 0 is "Unknown AS".
function asnName(asn, name) {
  if (String(asn) === "0") return "Unknown AS";
  const n = name === undefined ? NAMES.asn.get(String(asn)) : name;
  return n ? `AS${asn} ${n}` : `AS${asn}`;
}
function fmtPct(s) {
  const v = Number(s);
  return v >= 10 ? v.toFixed(1) : v.toFixed(2);
}
function fmtInt(n) { return Number(n).toLocaleString("en-US"); }
function fmtTime(ms, withYear) {
  const d = new Date(ms);
  const iso = d.toISOString();
  const day = d.toLocaleDateString("en-GB", { day: "2-digit", month: "short", timeZone: "UTC", ...(withYear ? { year: "numeric" } : {}) });
  return day + " " + iso.slice(11, 16);
}

async function api(path, params) {
  const qs = new URLSearchParams(Object.entries(params || {}).filter(([, v]) => v !== null && v !== undefined && v !== ""));
  const r = await fetch(path + (qs.toString() ? "?" + qs : ""));
  const body = await r.json();
  if (!r.ok || !body.success) throw new Error((body.errors && body.errors[0] && body.errors[0].message) || r.statusText);
  return body.result;
}

function rangeParams() {
  const end = Date.parse(meta.dataEnd);
  const start = Date.parse(meta.dataStart);
  const back = { "1d": 86400e3, "7d": 7 * 86400e3, "28d": 28 * 86400e3 }[state.period];
  let from = back ? Math.max(start, end - back) : start;
  // The API caps a range at maxRangeDays: keep the most recent part of very long captures.
  from = Math.max(from, end - (meta.maxRangeDays - 1) * 86400e3);
  // dateEnd is inclusive (as in Radar): the start of the last bucket with data.
  const last = end - meta.bucketSeconds * 1e3;
  const iso = (ms) => new Date(ms).toISOString().replace(".000Z", "Z");
  return { dateStart: iso(from), dateEnd: iso(Math.max(from, last)) };
}

// Intervals that would give more points than the API allows (a year at 15 minutes) are disabled; a
// selection that became one of them falls back to auto.
const AGG_MS = { "15m": 900e3, "1h": 3600e3, "1d": 86400e3, "1w": 7 * 86400e3 };
function fitIntervals(range) {
  const span = Date.parse(range.dateEnd) - Date.parse(range.dateStart) + meta.bucketSeconds * 1e3;
  for (const opt of $("agg").options) {
    if (!opt.value) continue;
    opt.disabled = Math.ceil(span / AGG_MS[opt.value]) + 1 > meta.maxPoints;
    if (opt.disabled && state.agg === opt.value) { state.agg = ""; $("agg").value = ""; }
  }
}

function filterParams() {
  if (state.scope === "location" && state.location) return { location: state.location };
  if (state.scope === "asn" && state.asn) return { asn: state.asn };
  return {};
}

function scopeLabel() {
  if (state.scope === "location" && state.location) return `${countryName(state.location)} (${state.location})`;
  if (state.scope === "asn" && state.asn) return asnName(state.asn);
  return "Worldwide";
}

function renderSummary(summary, connections) {
  const box = $("summary");
  box.replaceChildren();
  const anomalous = 100 - Number(summary.no_match);
  for (const s of STAGES) {
    box.append(el("div", { className: "stat", style: `--c:${COLORS[s]}`, "data-stage": s, "data-value": summary[s] },
      el("div", { className: "label" }, el("span", { className: "dot", style: `--c:${COLORS[s]}` }), LABELS[s]),
      el("div", { className: "value" }, fmtPct(summary[s]), el("small", {}, "%")),
      el("div", { className: "hint" }, HINTS[state.transport][s])));
  }
  box.append(el("div", { className: "stat total", "data-stage": "anomalous", "data-value": String(anomalous) },
    el("div", { className: "label" }, "Anomalous"),
    el("div", { className: "value" }, connections ? fmtPct(anomalous) : "–", el("small", {}, connections ? "%" : "")),
    el("div", { className: "hint" }, `${fmtInt(connections)} connections · ${scopeLabel()}`)));
}

// Up to BAR_MAX slots the chart is stacked bars (one bucket is one visible bar); beyond, a stacked area,
// with a marker on every point that has no neighbour (an area of one point has no width, so draws nothing).
const BAR_MAX = 60;
const SLOT_MS = { FIFTEEN_MINUTES: 900e3, ONE_HOUR: 3600e3, ONE_DAY: 86400e3, ONE_WEEK: 7 * 86400e3 };

function renderChart(series) {
  const serie = series.serie_0;
  const xs = serie.timestamps.map((t) => Date.parse(t));
  const slot = SLOT_MS[series.meta.aggInterval] || 900e3;
  const bars = xs.length <= BAR_MAX;
  // Slots without connections come as all "0": a gap (no bar, or a break in the area), not a drop to zero.
  const empty = xs.map((_, i) => STAGES.every((s) => Number(serie[s][i]) === 0));
  const isolated = empty.map((e, i) => !e && (i === 0 || empty[i - 1]) && (i === xs.length - 1 || empty[i + 1]));
  const points = Object.fromEntries(STAGES.map((s) => [s, xs.map((x, i) => ({
    x: bars ? serie.timestamps[i] : x, y: empty[i] ? null : Number(serie[s][i]) }))]));
  const shown = STAGES.filter((s) => state.showNone || s !== "no_match");
  const datasets = shown.map((s) => ({
    type: bars ? "bar" : "line", label: LABELS[s], data: points[s], stage: s, borderColor: COLORS[s],
    backgroundColor: bars ? COLORS[s] : COLORS[s] + "cc", borderWidth: bars ? 0 : 1.2,
    ...(bars ? { barPercentage: 0.92, categoryPercentage: 0.92, maxBarThickness: 96, minBarLength: 0 }
      : { fill: true, tension: 0, spanGaps: false, pointHoverRadius: 4, pointBackgroundColor: COLORS[s],
        pointRadius: (ctx) => (isolated[ctx.dataIndex] ? 3.5 : 0) }),
  }));
  exposed.drawn = Object.fromEntries(shown.map((s) => [s, serie[s].map(Number)]));
  exposed.drawn.timestamps = serie.timestamps.slice();
  exposed.drawn.mode = bars ? "bars" : "area";
  exposed.drawn.isolated = isolated.filter(Boolean).length;
  const withYear = xs.length && (new Date(xs[0]).getUTCFullYear() !== new Date(xs[xs.length - 1]).getUTCFullYear()
    || new Date(xs[0]).getUTCFullYear() !== new Date().getUTCFullYear());
  tickStep = slot;
  const x = bars
    ? { type: "category", stacked: true, grid: { color: "#eef0f4", offset: true },
      ticks: { color: "#6b7385", maxRotation: 0, autoSkip: true, autoSkipPadding: 14,
        callback(v, i) { return tickLabel(Date.parse(this.getLabelForValue(v)), withYear, slot, i === 0); } } }
    : { type: "linear", min: xs[0], max: xs[xs.length - 1], grid: { color: "#eef0f4" },
      afterBuildTicks: (axis) => { axis.ticks = niceTicks(axis.min, axis.max).map((value) => ({ value })); },
      ticks: { color: "#6b7385", maxRotation: 0, autoSkip: true, autoSkipPadding: 14,
        callback: (v) => tickLabel(v, withYear, tickStep) } };
  const options = {
    animation: false, maintainAspectRatio: false, responsive: true,
    interaction: { mode: "index", intersect: false },
    scales: {
      x,
      y: { stacked: true, min: 0, max: state.showNone ? 100 : undefined, grid: { color: "#eef0f4" },
        ticks: { color: "#6b7385", callback: (v) => v + "%" } },
    },
    plugins: {
      legend: { position: "bottom", labels: { boxWidth: 12, boxHeight: 12, color: "#1d2330" } },
      tooltip: { callbacks: {
        title: (items) => items.length ? fmtTime(bars ? Date.parse(items[0].raw.x) : items[0].parsed.x, true) + " UTC" : "",
        label: (item) => ` ${item.dataset.label}: ${item.parsed.y === null ? "–" : item.parsed.y.toFixed(2) + "%"}`,
      } },
    },
  };
  // A new chart when the kind changes (bar <-> line scales do not morph); otherwise update in place.
  if (chart && chart.config.type !== (bars ? "bar" : "line")) { chart.destroy(); chart = null; }
  const data = { labels: bars ? serie.timestamps.slice() : [], datasets };
  chartTime = { bars, x0: xs[0], slot, n: xs.length };
  if (chart) { chart.data = data; chart.options = options; chart.update(); }
  else chart = new Chart($("chart"), { type: bars ? "bar" : "line", data, options, plugins: [alertPlugin] });
  $("chart-title").textContent = `Share of connections by stage · ${scopeLabel()}`;
  const r = series.meta.dateRange[0];
  $("chart-meta").textContent = `${serie.timestamps.length} ${serie.timestamps.length === 1 ? "point" : "points"} · ` +
    `${series.meta.aggInterval.replace("_", " ").toLowerCase()} · ` +
    `${r.startTime.slice(0, 16).replace("T", " ")} → ${r.endTime.slice(0, 16).replace("T", " ")} UTC`;
}

// ---- change alerts: shaded ranges over the chart, a tooltip on hover, a list under it

let alerts = [];  // the wire alerts of the current range and scope (newest first)
let chartTime = null;  // how times map to the x axis: {bars, x0, slot, n}

function networkLabel(a) {
  if (a.dimension === "world") return "Worldwide";
  if (a.dimension === "country") return `${countryName(a.key)} (${a.key})`;
  if (a.dimension === "asn") return asnName(a.key, a.name || undefined);
  const [cc, asn] = a.key.split(":");
  return `${asnName(asn, a.name || undefined)} in ${countryName(cc)}`;
}
function alertSize(a) { return `${a.size_pp >= 0 ? "+" : "−"}${Math.abs(a.size_pp).toFixed(1)} pp`; }
function alertWhen(a) {
  return `${fmtTime(a.start * 1e3, true)} → ${a.end === null ? "open" : fmtTime(a.end * 1e3, true)} UTC`;
}
function alertRecurring(a) { return a.recurring ? (a.period_s === 86400 ? "recurring daily" : `recurring every ${a.period_s} s`) : ""; }

// Time (ms) -> x pixel: on the area chart the axis is time; bars are slots of equal width from x0.
function timeToPixel(c, ms) {
  const x = c.scales.x;
  if (!chartTime.bars) return x.getPixelForValue(ms);
  const w = chartTime.n > 1 ? x.getPixelForValue(1) - x.getPixelForValue(0) : c.chartArea.right - c.chartArea.left;
  return x.getPixelForValue(0) - w / 2 + ((ms - chartTime.x0) / chartTime.slot) * w;
}

function alertBands(c) {
  if (!chartTime || !alerts.length) return [];
  const a = c.chartArea;
  // An open alert runs to the end of the chart; every range is at least 3 pixels wide, so a short one shows.
  const endMs = chartTime.x0 + chartTime.n * chartTime.slot;
  const out = [];
  for (const al of alerts.slice().reverse()) {
    let x1 = Math.max(a.left, timeToPixel(c, al.start * 1e3));
    let x2 = Math.min(a.right, timeToPixel(c, (al.end === null ? endMs / 1e3 : al.end) * 1e3));
    if (x1 > a.right || x2 < a.left) continue;
    if (x2 - x1 < 3) { const mid = (x1 + x2) / 2; x1 = Math.max(a.left, mid - 1.5); x2 = Math.min(a.right, mid + 1.5); }
    out.push({ id: al.id, x1, x2, top: a.top, bottom: a.bottom, stage: al.stage });
  }
  return out;
}

const alertPlugin = {
  id: "alertBands",
  afterDatasetsDraw(c) {
    const bands = alertBands(c);
    const ctx = c.ctx;
    ctx.save();
    for (const b of bands) {
      ctx.fillStyle = "rgba(29, 35, 48, 0.13)";
      ctx.fillRect(b.x1, b.top, b.x2 - b.x1, b.bottom - b.top);
      ctx.fillStyle = COLORS[b.stage] || "#1d2330";
      ctx.fillRect(b.x1, b.top, b.x2 - b.x1, 7);
      ctx.strokeStyle = "#1d2330";
      ctx.lineWidth = 1;
      ctx.setLineDash([3, 3]);
      ctx.beginPath();
      ctx.moveTo(b.x1 + 0.5, b.top); ctx.lineTo(b.x1 + 0.5, b.bottom);
      ctx.stroke();
    }
    ctx.restore();
    exposed.alertBands = bands;
  },
};

function alertText(a) {
  return [el("b", {}, networkLabel(a)), el("br"),
    `${LABELS[a.stage] || a.stage} ${a.direction === "rise" ? "rose" : "fell"} ${alertSize(a)}: `
      + `${a.observed_share.toFixed(1)}% vs ${a.baseline_share.toFixed(1)}% baseline`, el("br"),
    `${alertWhen(a)} · ${fmtInt(a.evidence.connections)} connections` + (a.recurring ? ` · ${alertRecurring(a)}` : "")];
}

function showAlertTip(ev) {
  const tip = $("alert-tip");
  if (!chart) return;
  const r = chart.canvas.getBoundingClientRect();
  const x = ev.clientX - r.left, y = ev.clientY - r.top;
  const hit = exposed.alertBands.filter((b) => x >= b.x1 && x <= b.x2 && y >= b.top && y <= b.bottom);
  if (!hit.length) { tip.hidden = true; return; }
  const shown = hit.map((b) => alerts.find((a) => a.id === b.id)).filter(Boolean);
  tip.replaceChildren(...shown.flatMap((a, i) => [...(i ? [el("hr")] : []), ...alertText(a)]));
  tip.dataset.ids = shown.map((a) => a.id).join(",");
  tip.hidden = false;
  tip.style.left = `${Math.min(x + 14, r.width - tip.offsetWidth - 4)}px`;
  tip.style.top = `${Math.max(4, y - tip.offsetHeight - 12)}px`;
}

function renderAlerts(list) {
  alerts = list;
  const box = $("alerts");
  box.replaceChildren();
  if (!list.length) { box.append(el("div", { className: "empty" }, "No change alerts in this range.")); return; }
  for (const a of list) {
    const row = el("div", { className: "alert", "data-id": a.id, title: "show this network" },
      el("span", { className: "dot", style: `--c:${COLORS[a.stage]}` }),
      el("span", {}, `${LABELS[a.stage] || a.stage} `, el("span", { className: "size" }, alertSize(a))),
      el("span", {}, networkLabel(a)),
      el("span", { className: "when" }, alertWhen(a)),
      ...(a.recurring ? [el("span", { className: "flag recurring" }, alertRecurring(a))] : []),
      ...(a.end === null ? [el("span", { className: "flag" }, "open")] : []));
    const [cc, asn] = a.dimension === "country_asn" ? a.key.split(":") : [a.key, a.key];
    if (a.dimension === "country" || a.dimension === "country_asn") row.addEventListener("click", () => select("location", cc));
    if (a.dimension === "asn") row.addEventListener("click", () => select("asn", asn));
    box.append(row);
  }
}

// ---- outliers among peers

function outlierParams(range) {
  const f = filterParams();
  if (state.outlierDim === "asn") delete f.location;  // an AS is ranked against the world, whatever the location
  if (state.outlierDim === "country") delete f.asn;
  return { ...range, ...f, dimension: state.outlierDim, limit: 10 };
}

function renderOutliers(res) {
  const table = $("outliers");
  table.replaceChildren(el("tr", {}, el("th", {}, "#"), el("th", {}, "Network"), el("th", {}, "Name"),
    el("th", {}, "Peer"), el("th", {}, "Stage"), el("th", { className: "num" }, "Share vs peer"),
    el("th", { className: "num" }, "Distance"), el("th", { className: "num" }, "Confidence")));
  if (!res.outliers.length) {
    table.append(el("tr", {}, el("td", { colSpan: 8, className: "empty" },
      `No network departs from its peers with ${fmtInt(res.meta.minConnections)}+ connections and `
      + `${(100 * res.meta.minConfidence).toFixed(0)}% confidence.`)));
    return;
  }
  res.outliers.forEach((o, i) => {
    const [cc, asn] = o.dimension === "country_asn" ? o.key.split(":") : [o.key, o.key];
    const net = o.dimension === "country" ? o.key : o.dimension === "asn" ? `AS${asn}` : `AS${asn} in ${cc}`;
    const peer = o.peer === "world" ? "World" : countryName(o.peer.replace("country:", ""));
    const tr = el("tr", { className: "row", "data-key": o.key, title: "show this network" },
      el("td", { className: "rank" }, String(i + 1)),
      el("td", { className: "who" }, el("span", { className: "code asn" }, net)),
      el("td", { className: "who", title: o.name }, o.name || ""),
      el("td", { className: "who" }, peer),
      el("td", {}, el("span", { className: "dot", style: `--c:${COLORS[o.stage]}` }), " ", LABELS[o.stage] || o.stage),
      el("td", { className: "num" }, `${fmtPct(o.share)}% `, el("span", { className: "vs" }, `vs ${fmtPct(o.peer_share)}%`)),
      el("td", { className: "num" }, `${o.distance.toFixed(1)} pp`),
      el("td", { className: "num" }, `${(100 * o.confidence).toFixed(o.confidence >= 0.9999 ? 2 : 1)}%`));
    tr.addEventListener("click", () => (o.dimension === "country" ? select("location", cc) : select("asn", asn)));
    table.append(tr);
  });
}

// Ticks on round UTC times (hours, days, weeks, months), about six of them, whatever the data's span: from
// one bucket to a year the labels stay apart (Chart.js autoSkip drops any that would still touch).
const TICK_STEPS = [900e3, 1800e3, 3600e3, 3 * 3600e3, 6 * 3600e3, 12 * 3600e3, 86400e3, 2 * 86400e3, 7 * 86400e3,
  14 * 86400e3];
const MONTH_STEPS = [1, 2, 3, 6, 12];
let tickStep = 3600e3;
function niceTicks(min, max) {
  if (!(max > min)) return [min];
  const step = TICK_STEPS.find((s) => (max - min) / s <= 7);
  if (step) {
    tickStep = step;
    const out = [];
    for (let v = Math.ceil(min / step) * step; v <= max; v += step) out.push(v);
    return out;
  }
  // Beyond 14-day steps: the first of a month, every 1, 2, 3, 6 or 12 months.
  const months = MONTH_STEPS.find((m) => (max - min) / (m * 30.44 * 86400e3) <= 7) || 12;
  tickStep = months * 30 * 86400e3;
  const d = new Date(min);
  let idx = d.getUTCFullYear() * 12 + d.getUTCMonth();  // months since year 0
  if (Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 1) < min) idx += 1;
  const out = [];
  for (idx = Math.ceil(idx / months) * months; ; idx += months) {
    const v = Date.UTC(Math.floor(idx / 12), idx % 12, 1);
    if (v > max) break;
    out.push(v);
  }
  return out;
}
// A tick's label for ticks `step` apart: months, days, or times (with the day at midnight, or when `withDay`).
function tickLabel(ms, withYear, step, withDay) {
  const d = new Date(ms);
  if (step >= 28 * 86400e3) return d.toLocaleDateString("en-GB", { month: "short", year: "numeric", timeZone: "UTC" });
  const day = d.toLocaleDateString("en-GB", { day: "2-digit", month: "short", timeZone: "UTC", ...(withYear ? { year: "numeric" } : {}) });
  if (step >= 86400e3) return day;
  const hm = d.toISOString().slice(11, 16);
  return hm === "00:00" || withDay ? [hm, day] : hm;
}

function stackBar(shares) {
  const bar = el("div", { className: "stack" });
  for (const s of STAGES.filter((s) => s !== "no_match")) bar.append(el("span", { style: `width:${Number(shares[s])}%;background:${COLORS[s]}` }));
  return bar;
}

function renderTop(table, items, kind) {
  table.replaceChildren(el("tr", {}, el("th", {}, "#"), el("th", {}, kind === "locations" ? "Location" : "AS"),
    el("th", {}, "Stages"), el("th", { className: "num" }, "Anomalous"), el("th", { className: "num" }, "Conns")));
  if (!items.length) {
    table.append(el("tr", {}, el("td", { colSpan: 5, className: "empty" }, "No network reaches the minimum of connections.")));
    return;
  }
  items.forEach((it, i) => {
    const key = kind === "locations" ? it.clientCountryAlpha2 : String(it.clientASN);
    // Radar's name fields: clientCountryName, clientASName.
    const cell = kind === "locations"
      ? el("td", { className: "who", title: `${it.clientCountryName} (${key})` }, it.clientCountryName, " ",
        el("span", { className: "code" }, key))
      : el("td", { className: "who", title: asnName(key, it.clientASName) },
        key === "0" ? "Unknown AS" : el("span", { className: "code asn" }, "AS" + key),
        key === "0" ? "" : " " + (it.clientASName || ""));
    const tr = el("tr", { className: "row", title: "show this network", "data-key": key },
      el("td", { className: "rank" }, String(i + 1)),
      cell, el("td", {}, stackBar(it.shares)), el("td", { className: "num" }, fmtPct(it.value) + "%"),
      el("td", { className: "num" }, fmtInt(it.connections)));
    const scope = kind === "locations" ? "location" : "asn";
    if (state.scope === scope && state[scope] === key) tr.classList.add("sel");
    tr.addEventListener("click", () => select(scope, key));
    table.append(tr);
  });
}

function renderBars(box, items, colorOf) {
  box.replaceChildren();
  if (!items.length) box.append(el("div", { className: "empty" }, `none for ${state.transport.toUpperCase()}`));
  const max = Math.max(...items.map((i) => Number(i.share)), 1e-9);
  for (const it of items) {
    const c = colorOf(it);
    box.append(el("div", { className: "bar" + (it.count ? "" : " zero"), "data-name": it.name, "data-count": String(it.count) },
      el("span", { className: "name", title: it.name }, it.name),
      el("div", { className: "track" }, el("div", { className: "fill", style: `width:${(100 * Number(it.share)) / max}%;--c:${c}` })),
      el("span", { className: "n" }, `${fmtPct(it.share)}% · ${fmtInt(it.count)}`)));
  }
}

const TAG_COLOR = { timeout: COLORS.post_ack, reset: COLORS.post_syn, zmap: COLORS.later_in_flow };

async function refresh() {
  const gen = ++exposed.generation;
  exposed.ready = false;
  const range = rangeParams();
  fitIntervals(range);
  const filters = filterParams();
  const t = { transport: state.transport };
  const p = { ...range, ...filters, ...t };
  try {
    const [summary, series, tags, sigs, topLoc, topAs, alertRes, outliers] = await Promise.all([
      api("/radar/tcp_resets_timeouts/summary", p),
      api("/radar/tcp_resets_timeouts/timeseries_groups", { ...p, aggInterval: state.agg }),
      api("/rstscope/tags", p),
      api("/rstscope/signatures", p),
      api("/rstscope/top/locations", { ...range, ...t, limit: 8 }),
      api("/rstscope/top/ases", { ...range, ...t, limit: 8, ...(state.scope === "location" && state.location ? { location: state.location } : {}) }),
      api("/rstscope/alerts", { ...p, limit: 200 }),
      api("/rstscope/outliers", { ...outlierParams(range), ...t }),
    ]);
    if (gen !== exposed.generation) return;  // a newer selection is on its way
    Object.assign(exposed, { summary, series, tags, signatures: sigs, alerts: alertRes.alerts, outliers });
    renderSummary(summary.summary_0, tags.meta.connections);
    renderAlerts(alertRes.alerts);
    renderChart(series);
    renderOutliers(outliers);
    renderTop($("top-locations"), topLoc.top_0, "locations");
    $("top-ases-title").textContent = state.scope === "location" && state.location ? `Top ASes in ${countryName(state.location)}` : "Top ASes";
    renderTop($("top-ases"), topAs.top_0, "ases");
    renderBars($("tags"), tags.breakdown_0, (it) => TAG_COLOR[it.name] || "#5b6b86");
    renderBars($("signatures"), sigs.breakdown_0.filter((s) => s.count > 0).concat(sigs.breakdown_0.filter((s) => !s.count).slice(0, 3)),
      (it) => SIG_STAGE_COLOR(it.stage));
    $("err").textContent = "";
  } catch (e) {
    exposed.errors.push(String(e));
    $("err").textContent = String(e.message || e);
  }
  if (gen === exposed.generation) exposed.ready = true;
}

function select(scope, key) {
  state.scope = scope;
  if (scope === "location") { state.location = key || state.location || $("location").value; $("location").value = state.location; }
  if (scope === "asn") { state.asn = key || state.asn || $("asn").value; $("asn").value = state.asn; }
  for (const b of document.querySelectorAll("#scope button")) b.classList.toggle("on", b.dataset.scope === scope);
  $("loc-ctl").hidden = scope !== "location";
  $("asn-ctl").hidden = scope !== "asn";
  refresh();
}

function fillSelect(sel, items, label) {
  sel.replaceChildren(...items.map((it) => el("option", { value: it.key }, `${label(it.key)} · ${fmtInt(it.connections)}`)));
}

// The data's span and keys of the selected transport (/rstscope/meta?transport=); false when there is none.
async function loadMeta() {
  meta = exposed.meta = await api("/rstscope/meta", { transport: state.transport });
  STAGES = meta.stages;
  $("title").textContent = TITLES[state.transport];
  if (!SUBTITLES.tcp) SUBTITLES.tcp = $("subtitle").textContent;  // the page's own text
  $("subtitle").textContent = SUBTITLES[state.transport];
  document.title = `rstscope · ${TITLES[state.transport]}`;
  for (const b of document.querySelectorAll("#transport button")) {
    b.classList.toggle("on", b.dataset.transport === state.transport);
    b.disabled = b.dataset.transport !== state.transport && !meta.transports.includes(b.dataset.transport);
  }
  if (!meta.dataStart) {
    $("span").textContent = "no data loaded";
    $("summary").replaceChildren(el("div", { className: "empty" }, "The store is empty: load rollups with rstscope serve --rollups FILE."));
    return false;
  }
  $("span").innerHTML = "";
  $("span").append(el("div", {}, `Data ${meta.dataStart.slice(0, 16).replace("T", " ")} → ${meta.dataEnd.slice(0, 16).replace("T", " ")} UTC`),
    el("div", {}, `${fmtInt(meta.rows)} ${state.transport.toUpperCase()} rollup rows · ${meta.locations.length} locations · ${meta.ases.length} ASes`));
  for (const it of meta.locations) NAMES.location.set(it.key, it.name);
  for (const it of meta.ases) NAMES.asn.set(it.key, it.name);
  fillSelect($("location"), meta.locations, (k) => `${countryName(k)} (${k})`);
  fillSelect($("asn"), meta.ases, (k) => asnName(k));
  // Keep the selected network when the transport has it, else its largest.
  const keep = (items, key) => (items.some((it) => it.key === key) ? key : items.length ? items[0].key : null);
  state.location = keep(meta.locations, state.location);
  state.asn = keep(meta.ases, state.asn);
  if (state.location) $("location").value = state.location;
  if (state.asn) $("asn").value = state.asn;
  return true;
}

async function selectTransport(transport) {
  if (transport === state.transport) return;
  state.transport = transport;
  exposed.ready = false;
  try {
    if (!(await loadMeta())) { exposed.generation++; exposed.ready = true; return; }
  } catch (e) {
    exposed.errors.push(String(e));
    $("err").textContent = String(e.message || e);
    exposed.generation++;
    exposed.ready = true;
    return;
  }
  await refresh();
}

async function init() {
  let loaded;
  try {
    loaded = await loadMeta();
    if (!loaded && meta.transports.length) {  // no TCP rows: start on a transport that has some
      state.transport = meta.transports[0];
      loaded = await loadMeta();
    }
  } catch (e) {
    $("err").textContent = String(e.message || e);
    exposed.ready = true;
    return;
  }
  for (const b of document.querySelectorAll("#transport button")) b.addEventListener("click", () => selectTransport(b.dataset.transport));
  for (const b of document.querySelectorAll("#scope button")) b.addEventListener("click", () => select(b.dataset.scope));
  $("location").addEventListener("change", (e) => select("location", e.target.value));
  $("asn").addEventListener("change", (e) => select("asn", e.target.value));
  $("period").addEventListener("change", (e) => { state.period = e.target.value; refresh(); });
  $("agg").addEventListener("change", (e) => { state.agg = e.target.value; refresh(); });
  $("show-none").addEventListener("change", (e) => { state.showNone = e.target.checked; refresh(); });
  $("outlier-dim").addEventListener("change", (e) => { state.outlierDim = e.target.value; refresh(); });
  $("chart").addEventListener("mousemove", showAlertTip);
  $("chart").addEventListener("mouseleave", () => { $("alert-tip").hidden = true; });
  if (!loaded) {
    exposed.ready = true;
    return;
  }
  await refresh();
}

init();
