// Costs over a range of local dates: the total, each device's share, the days, and the rate in
// force with every version of it.

import { call } from "./api.js";
import { field, fmt, h, replace, table, when } from "./dom.js";

function isoDate(date) {
  return `${date.getFullYear()}-${String(date.getMonth() + 1).padStart(2, "0")}-${String(date.getDate()).padStart(2, "0")}`;
}

function rateText(rate) {
  if (!rate.configured && rate.rate_type === "none") return "No rate set yet.";
  const parts = [`${rate.rate_type}`, `${rate.currency}`];
  for (const [name, value] of Object.entries(rate.rate_structure || {})) parts.push(`${name.replaceAll("_", " ")} ${value}`);
  for (const period of rate.time_of_use_rates || []) parts.push(`${period.label || "period"} ${period.start_hour}–${period.end_hour} h: ${period.rate}`);
  if (rate.daily_charge) parts.push(`daily charge ${rate.daily_charge}`);
  return parts.join(" · ");
}

export async function showCosts(main) {
  const today = new Date();
  const start = h("input", { type: "date", name: "start_date", value: isoDate(new Date(today.getFullYear(), today.getMonth(), 1)), required: true });
  const end = h("input", { type: "date", name: "end_date", value: isoDate(today), required: true });
  const form = h("form", { class: "inline" }, field("From", start), field("To (inclusive)", end), h("button", { type: "submit", text: "Show costs" }));
  const result = h("div");
  const rates = h("div");
  const load = async () => {
    const query = new URLSearchParams({ start_date: start.value, end_date: end.value });
    try {
      const costs = await call("GET", `/api/costs?${query}`);
      replace(result,
        h("dl", { class: "figures" },
          h("div", {}, h("dt", { text: "Total" }), h("dd", { "data-role": "total-cost", text: `${fmt(costs.total_cost, 4)} ${costs.currency}` })),
          h("div", {}, h("dt", { text: "Energy" }), h("dd", { "data-role": "total-kwh", text: `${fmt(costs.total_kwh, 3)} kWh` })),
          h("div", {}, h("dt", { text: "Average a day" }), h("dd", { text: `${fmt(costs.average_daily_cost, 4)} ${costs.currency}` })),
          h("div", {}, h("dt", { text: "Fixed charges" }), h("dd", { text: `${fmt(costs.fixed_charges, 4)} ${costs.currency}` }))),
        table("Each device's share", ["Device", "kWh", "Cost", "Share of energy"], costs.devices.map((d) => [
          d.device_name, fmt(d.total_kwh, 3), fmt(d.total_cost, 4), h("span", {}, h("meter", { min: "0", max: "100", value: String(d.percentage), "aria-label": `${d.device_name} share` }), ` ${fmt(d.percentage, 1)} %`)])),
        table("Daily breakdown", ["Date", "kWh", "Cost"], costs.daily_breakdown.map((d) => [d.date, fmt(d.kwh, 3), fmt(d.cost, 4)])));
    } catch (error) {
      replace(result, h("p", { class: "error", text: error.message }));
    }
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    load();
  });
  replace(main, h("h1", { text: "Costs" }),
    h("section", { class: "card", "aria-labelledby": "range-title" }, h("h2", { id: "range-title", text: "Range" }), form, result),
    h("section", { class: "card", "aria-labelledby": "rate-title" }, h("h2", { id: "rate-title", text: "Rate" }), rates));
  await load();
  const [current, history] = await Promise.all([call("GET", "/api/rates"), call("GET", "/api/rates/history")]);
  replace(rates, h("p", {}, h("strong", { text: "In force: " }), rateText(current)),
    history.versions.length
      ? table("Rate versions", ["Version", "From", "Rate", "Recorded by"], history.versions.map((v) => [
        String(v.version), when(v.effective_from), rateText(v), v.actor || "–"]))
      : h("p", { text: "No versions recorded." }));
  return null;
}
