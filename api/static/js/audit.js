// The audit log with filters, and the compliance and data exports started and downloaded here.

import { call, can, download } from "./api.js";
import { field, h, replace, say, table, when } from "./dom.js";

const EXPORT_POLL_MS = 1000;

function toIso(local) {
  return local ? new Date(local).toISOString() : "";
}

async function until(check) {
  for (;;) {
    const state = await check();
    if (state) return state;
    await new Promise((resolve) => setTimeout(resolve, EXPORT_POLL_MS));
  }
}

function complianceExports() {
  const format = h("select", { name: "format" }, ["jsonl", "csv", "xlsx"].map((f) => h("option", { value: f, text: f })));
  const files = h("ul", { class: "files" });
  const form = h("form", { class: "inline" }, field("Format", format), h("button", { type: "submit", text: "Start compliance export" }));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const job = await call("POST", "/api/compliance/exports", { format: format.value });
      say("Compliance export started.");
      const done = await until(async () => {
        const state = await call("GET", `/api/compliance/exports/${job.id}`);
        return state.status === "completed" || state.status === "failed" ? state : null;
      });
      if (done.status === "failed") return say(`Compliance export failed: ${done.error}`);
      say(`Compliance export ready: ${done.events_written} events.`);
      replace(files, done.files.map((file) => h("li", {}, h("button", {
        type: "button", class: "link", text: `Download ${file.name}`,
        on: { click: () => download(file.url, file.name).catch((e) => say(e.message)) },
      }))));
    } catch (error) {
      say(`Compliance export refused: ${error.message}`);
    }
  });
  return h("section", { class: "card", "aria-labelledby": "compliance-title" },
    h("h2", { id: "compliance-title", text: "Compliance export" }), form, files);
}

function dataExports(devices) {
  const start = h("input", { type: "date", name: "start", required: true });
  const end = h("input", { type: "date", name: "end", required: true });
  const now = new Date();
  end.valueAsDate = now;
  start.valueAsDate = new Date(now.getTime() - 7 * 86400000);
  const format = h("select", { name: "format" }, ["csv", "json", "excel"].map((f) => h("option", { value: f, text: f })));
  const aggregation = h("select", { name: "aggregation" }, ["hourly", "daily", "raw"].map((f) => h("option", { value: f, text: f })));
  const files = h("ul", { class: "files" });
  const form = h("form", { class: "inline" }, field("From", start), field("To (inclusive)", end), field("Format", format),
    field("Rows", aggregation), h("button", { type: "submit", text: "Export device data" }));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const job = await call("POST", "/api/exports/create", {
        export_type: "device_data", devices: devices.map((d) => d.device_id), format: format.value,
        aggregation: aggregation.value,
        // Local midnights: from the first day's start to the end of the last day.
        date_range: { start: new Date(`${start.value}T00:00`).toISOString(), end: new Date(new Date(`${end.value}T00:00`).getTime() + 86400000).toISOString() },
        options: { timezone: Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC" },
      });
      say("Data export queued.");
      const done = await until(async () => {
        const state = await call("GET", `/api/exports/${job.export_id}`);
        return ["completed", "failed", "expired", "deleted"].includes(state.status) ? state : null;
      });
      if (done.status !== "completed") return say(`Data export ${done.status}: ${done.error || ""}`);
      const name = `export_${job.export_id}.${format.value === "excel" ? "xlsx" : format.value}`;
      append(files, name, `/api/exports/download/${job.export_id}`);
      say(`Data export ready: ${done.record_count} rows.`);
    } catch (error) {
      say(`Data export refused: ${error.message}`);
    }
  });
  function append(list, name, url) {
    list.append(h("li", {}, h("button", { type: "button", class: "link", text: `Download ${name}`, on: { click: () => download(url, name).catch((e) => say(e.message)) } })));
  }
  return h("section", { class: "card", "aria-labelledby": "data-export-title" },
    h("h2", { id: "data-export-title", text: "Data export" }), form, files);
}

export async function showAudit(main) {
  const devices = await call("GET", "/api/devices");
  const device = h("select", { name: "device" }, h("option", { value: "", text: "Any device" }),
    devices.map((d) => h("option", { value: d.device_id, text: d.alias })));
  const actor = h("input", { name: "actor", placeholder: "user:<id>, system:poller…", autocomplete: "off" });
  const type = h("input", { name: "event_type", placeholder: "Added, ControlSucceeded…", autocomplete: "off" });
  const since = h("input", { type: "datetime-local", name: "since" });
  const until_ = h("input", { type: "datetime-local", name: "until" });
  const rows = h("div");
  const more = h("button", { type: "button", text: "Older entries", hidden: true });
  let cursor = null;
  let entries = [];
  const form = h("form", { class: "filters" }, field("Device", device), field("Actor", actor), field("Event type", type),
    field("Since", since), field("Until", until_), h("button", { type: "submit", text: "Filter" }));
  const render = () => replace(rows, table("Audit log, newest first", ["When", "Who", "What", "Event"],
    entries.map((e) => [when(e.at), e.actor_name || e.actor, e.summary, `${e.aggregate}.${e.event}`])));
  const load = async (next) => {
    const query = new URLSearchParams({ limit: "50" });
    if (device.value) query.set("originator_id", device.value);
    if (actor.value.trim()) query.set("actor", actor.value.trim());
    if (type.value.trim()) query.set("event_type", type.value.trim());
    if (since.value) query.set("since", toIso(since.value));
    if (until_.value) query.set("until", toIso(until_.value));
    if (next) query.set("cursor", next);
    try {
      const page = await call("GET", `/api/audit?${query}`);
      entries = next ? entries.concat(page.entries) : page.entries;
      cursor = page.next_cursor;
      more.hidden = !cursor;
      render();
    } catch (error) {
      replace(rows, h("p", { class: "error", text: error.message }));
    }
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    load(null);
  });
  more.addEventListener("click", () => load(cursor));
  const auditor = can("AUDIT_VIEW");
  replace(main, h("h1", { text: "Audit" }),
    auditor ? h("section", { class: "card", "aria-labelledby": "log-title" }, h("h2", { id: "log-title", text: "Event log" }), form, rows, more) : null,
    auditor && can("SYSTEM_CONFIG") ? complianceExports() : null,
    can("DATA_EXPORT") ? dataExports(devices) : null);
  if (auditor) await load(null);
  return null;
}
