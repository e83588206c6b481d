// The device grid: alias, model, online state and live power, with on/off per relay showing each
// command's lifecycle; adding a device by address and running discovery.

import { call, can } from "./api.js";
import { field, fmt, h, replace, say } from "./dom.js";
import { onLive } from "./live.js";

const OUTCOME_POLL_MS = 1000;
const OUTCOME_POLLS = 40;

function count(value) {
  return Array.isArray(value) ? value.length : value;
}

function watts(value) {
  return value === null || value === undefined ? "–" : `${fmt(value, 1)} W`;
}

function relayRow(device, outlet, pending) {
  const name = outlet ? outlet.alias || `Outlet ${outlet.index + 1}` : device.alias;
  const state = h("span", { class: "state", text: (outlet ? outlet.is_on : device.is_on) ? "on" : "off" });
  const power = h("span", { class: "power", text: watts(outlet ? outlet.current_power_w : device.current_power_w) });
  const lifecycle = h("span", { class: "lifecycle", role: "status" });
  const target = outlet ? outlet.index : null;
  const press = (action) => async () => {
    lifecycle.textContent = `${action}: sending…`;
    lifecycle.className = "lifecycle";
    try {
      const body = { action };
      if (target !== null) body.outlet = target;
      const command = await call("POST", `/api/device/${encodeURIComponent(device.device_id)}/control?wait=false`, body);
      pending.set(command.command_id, { lifecycle, state, action });
      lifecycle.textContent = `${action}: requested`;
      followUp(command.command_id, pending);
    } catch (error) {
      lifecycle.textContent = `${action}: refused (${error.message})`;
      lifecycle.className = "lifecycle failed";
    }
  };
  const label = (action) => `Switch ${name} ${action}`;
  return h("li", { class: "relay", "data-outlet": target === null ? "" : String(target) },
    h("span", { class: "relay-name", text: name }), state, power,
    can("DEVICES_CONTROL") ? h("span", { class: "buttons" },
      h("button", { type: "button", "aria-label": label("on"), text: "On", on: { click: press("on") } }),
      h("button", { type: "button", "aria-label": label("off"), text: "Off", on: { click: press("off") } })) : null,
    lifecycle);
}

function settle(pending, commandId, status, isOn, reason) {
  const entry = pending.get(commandId);
  if (!entry || entry.done) return;
  if (status === "succeeded") {
    entry.done = true;
    entry.lifecycle.textContent = `${entry.action}: confirmed`;
    entry.lifecycle.className = "lifecycle ok";
    if (isOn !== null && isOn !== undefined) entry.state.textContent = isOn ? "on" : "off";
  } else if (status === "failed") {
    entry.done = true;
    entry.lifecycle.textContent = `${entry.action}: failed (${reason || "unknown reason"})`;
    entry.lifecycle.className = "lifecycle failed";
  } else if (status === "executing") {
    entry.lifecycle.textContent = `${entry.action}: executing`;
  }
}

async function followUp(commandId, pending) {
  // The WebSocket tells the outcome first; this asks the commands read model too, so an outcome
  // sent while the socket was reconnecting is not missed.
  for (let i = 0; i < OUTCOME_POLLS; i += 1) {
    await new Promise((resolve) => setTimeout(resolve, OUTCOME_POLL_MS));
    const entry = pending.get(commandId);
    if (!entry || entry.done) return;
    try {
      const command = await call("GET", `/api/commands/${commandId}`);
      settle(pending, commandId, command.status, command.is_on, command.reason);
    } catch {
      // Not projected yet: ask again.
    }
  }
}

function card(device, pending) {
  const relays = device.outlets.length
    ? device.outlets.map((outlet) => relayRow(device, outlet, pending))
    : [relayRow(device, null, pending)];
  return h("article", { class: "card device", "data-device": device.device_id },
    h("h2", {}, h("a", { href: `#/device/${encodeURIComponent(device.device_id)}`, text: device.alias })),
    h("p", { class: "meta" },
      h("span", { class: "model", text: device.model }), " · ",
      h("span", { class: "address", text: device.device_ip }), " · ",
      h("span", { class: device.online ? "online" : "offline", "data-role": "online", text: device.online ? "online" : "offline" })),
    h("p", { class: "live" }, "Power ", h("strong", { "data-role": "power", text: watts(device.current_power_w) })),
    h("ul", { class: "relays", "aria-label": `Relays of ${device.alias}` }, relays));
}

function manageForms(reload) {
  const address = h("input", { name: "address", required: true, placeholder: "192.168.1.20 or host:port", autocomplete: "off" });
  const alias = h("input", { name: "alias", maxlength: "64", autocomplete: "off" });
  const add = h("form", { class: "inline" }, field("Device address", address), field("Alias (optional)", alias),
    h("button", { type: "submit", text: "Add device" }));
  add.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { ip: address.value.trim() };
    if (alias.value.trim()) body.alias = alias.value.trim();
    try {
      const device = await call("POST", "/api/devices/manual", body);
      say(`Added ${device.alias}.`);
      address.value = "";
      alias.value = "";
      reload();
    } catch (error) {
      say(`Not added: ${error.message}`);
    }
  });
  const discover = h("button", { type: "button", text: "Run discovery" });
  discover.addEventListener("click", async () => {
    discover.disabled = true;
    say("Discovering…");
    try {
      const found = await call("POST", "/api/discover", {});
      say(`Discovery: ${count(found.discovered)} found, ${count(found.added)} added, ${count(found.already_known)} already known.`);
      reload();
    } catch (error) {
      say(`Discovery failed: ${error.message}`);
    } finally {
      discover.disabled = false;
    }
  });
  return h("section", { class: "card", "aria-labelledby": "manage-title" },
    h("h2", { id: "manage-title", text: "Add devices" }), add, discover);
}

export async function showDevices(main) {
  const grid = h("div", { class: "grid" });
  const pending = new Map();
  const load = async () => {
    const devices = await call("GET", "/api/devices");
    const list = Array.isArray(devices) ? devices : devices.devices;
    replace(grid, list.length ? list.map((d) => card(d, pending)) : h("p", { text: "No devices yet: add one below." }));
  };
  replace(main, h("h1", { text: "Devices" }), grid,
    can("DEVICES_MANAGE") ? manageForms(() => load().catch((e) => say(e.message))) : null);
  await load();
  return onLive((message) => {
    if (message.event === "command_update") {
      settle(pending, message.command_id, message.status, message.is_on, message.reason);
      return;
    }
    const article = message.device_id && grid.querySelector(`article[data-device="${CSS.escape(message.device_id)}"]`);
    if (!article) return;
    if (message.event === "device_status") {
      const badge = article.querySelector('[data-role="online"]');
      badge.textContent = message.status;
      badge.className = message.status;
    } else if (message.event === "device_update" && message.data) {
      const data = message.data;
      // A relay switch's update (it names `outlet_index`) does not know the power: the next reading says it.
      if (data.current_power_w !== undefined && !("outlet_index" in data)) {
        article.querySelector('[data-role="power"]').textContent = watts(data.current_power_w);
        const plugRow = article.querySelector('li[data-outlet=""]');
        if (plugRow) plugRow.querySelector(".power").textContent = watts(data.current_power_w);
      }
      for (const outlet of data.outlets || []) {
        const row = article.querySelector(`li[data-outlet="${outlet.index}"]`);
        if (!row) continue;
        row.querySelector(".power").textContent = watts(outlet.current_power_w);
        row.querySelector(".state").textContent = outlet.is_on ? "on" : "off";
      }
      if (!data.outlets && data.is_on !== undefined) {
        const index = data.outlet_index;
        const row = article.querySelector(`li[data-outlet="${index === undefined || index === null ? "" : index}"]`);
        if (row) row.querySelector(".state").textContent = data.is_on ? "on" : "off";
      }
    }
  });
}
