// One device: its history chart (the seed's periods, in a chosen time zone), energy and cost per
// bucket, today/week/month figures and usage sessions.

import uPlot from "../vendor/uplot/uPlot.esm.js";
import { call } from "./api.js";
import { field, fmt, h, replace, table, when } from "./dom.js";

const PERIODS = [["24h", "24 hours"], ["7d", "7 days"], ["30d", "30 days"], ["3m", "3 months"], ["6m", "6 months"], ["1y", "1 year"]];

function browserZone() {
  return Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
}

function chart(target, points, zone) {
  const xs = points.map((p) => Date.parse(p.timestamp) / 1000);
  const power = points.map((p) => p.avg_power_w ?? p.power_w);
  const energy = points.map((p) => p.energy_kwh);
  const width = Math.max(Math.min(target.clientWidth || 600, 1100), 280);
  const options = {
    width, height: 260, tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), zone),
    series: [
      {},
      { label: "Average power (W)", stroke: "#0b5cad", width: 2, scale: "W" },
      { label: "Energy (kWh)", stroke: "#a34700", width: 1, scale: "kWh", paths: uPlot.paths.bars({ size: [0.6, 40] }), fill: "rgba(163,71,0,0.25)" },
    ],
    axes: [{}, { scale: "W", label: "W" }, { scale: "kWh", label: "kWh", side: 1, grid: { show: false } }],
  };
  return new uPlot(options, [xs, power, energy], target);
}

export async function showDevice(main, deviceId) {
  const device = await call("GET", `/api/device/${encodeURIComponent(deviceId)}`);
  const period = h("select", { name: "period" }, PERIODS.map(([value, label]) => h("option", { value, text: label })));
  const zone = h("input", { name: "timezone", value: browserZone(), list: "zones", autocomplete: "off" });
  const zones = h("datalist", { id: "zones" }, ["UTC", browserZone(), "Europe/Berlin", "Europe/London", "America/New_York", "Asia/Kolkata"]
    .map((z) => h("option", { value: z })));
  const plot = h("div", { class: "chart", role: "img", "aria-label": "History chart" });
  const buckets = h("div");
  const stats = h("div", { class: "stats" });
  const sessions = h("div");
  const controls = h("form", { class: "inline" }, field("Period", period), field("Time zone", zone), zones,
    h("button", { type: "submit", text: "Show" }));
  let drawn = null;

  const loadHistory = async () => {
    const query = new URLSearchParams({ period: period.value, timezone: zone.value.trim() || "UTC" });
    const history = await call("GET", `/api/device/${encodeURIComponent(device.device_id)}/history?${query}`);
    const tz = history.metadata.timezone;
    if (drawn) drawn.destroy();
    replace(plot);
    drawn = chart(plot, history.data, tz);
    plot.setAttribute("aria-label", `History chart: ${history.metadata.count} ${history.metadata.aggregation} points in ${tz}`);
    plot.dataset.points = String(history.metadata.count);
    const rows = history.data.filter((p) => p.readings > 0 || p.energy_kwh).map((p) => [when(p.timestamp, tz), fmt(p.energy_kwh, 4), fmt(p.cost, 4), fmt(p.avg_power_w, 1), fmt(p.max_power_w, 1)]);
    replace(buckets, table(`Energy and cost per ${history.metadata.aggregation} bucket (${tz})`, ["Start", "kWh", "Cost", "Average W", "Peak W"], rows.reverse()));
  };
  controls.addEventListener("submit", (event) => {
    event.preventDefault();
    loadHistory().catch((error) => replace(buckets, h("p", { class: "error", text: error.message })));
  });

  replace(main,
    h("p", {}, h("a", { href: "#/devices", text: "← Devices" })),
    h("h1", { text: device.alias }),
    h("p", { class: "meta", text: `${device.model} · ${device.device_ip} · ${device.online ? "online" : "offline"}` }),
    h("section", { class: "card", "aria-labelledby": "stats-title" }, h("h2", { id: "stats-title", text: "Usage" }), stats),
    h("section", { class: "card", "aria-labelledby": "history-title" }, h("h2", { id: "history-title", text: "History" }), controls, plot, buckets),
    h("section", { class: "card", "aria-labelledby": "sessions-title" }, h("h2", { id: "sessions-title", text: "Usage sessions (last 24 hours)" }), sessions));

  const figures = await call("GET", `/api/device/${encodeURIComponent(device.device_id)}/stats`);
  replace(stats, h("dl", { class: "figures" },
    [["Today", figures.daily_usage_kwh, figures.daily_cost], ["This week", figures.weekly_usage_kwh, figures.weekly_cost],
      ["This month", figures.monthly_usage_kwh, figures.monthly_cost]]
      .map(([label, kwh, cost]) => h("div", {}, h("dt", { text: label }), h("dd", { text: `${fmt(kwh, 3)} kWh · ${fmt(cost, 2)}` }))),
    h("div", {}, h("dt", { text: "Peak this month" }), h("dd", { text: `${fmt(figures.peak_power_w, 1)} W` }))));
  const found = await call("GET", `/api/device/${encodeURIComponent(device.device_id)}/sessions`);
  replace(sessions, found.sessions.length
    ? table("Usage sessions", ["Start", "End", "Minutes", "kWh", "Cost", "Peak W"], found.sessions.map((s) => [
      when(s.start), when(s.end), fmt(s.duration_s / 60, 1), fmt(s.energy_kwh, 4), fmt(s.cost, 4), fmt(s.peak_power_w, 1)]))
    : h("p", { text: `No run above ${fmt(found.threshold_w, 0)} W in this time.` }));
  await loadHistory();
  return () => { if (drawn) drawn.destroy(); };
}
