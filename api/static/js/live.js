// Live readings, status and command outcomes over /ws. The socket signs in with its first
// message (a browser cannot set headers on a WebSocket) and subscribes to every device.

import { token } from "./api.js";

const listeners = new Set();
let socket = null;
let retry = null;
let wanted = false;

export function onLive(listener) {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

export function startLive() {
  wanted = true;
  if (socket) return;
  const current = token();
  if (!current) return;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws`);
  socket = ws;
  ws.addEventListener("open", () => ws.send(JSON.stringify({ event: "auth", token: current })));
  ws.addEventListener("message", (message) => {
    let data;
    try {
      data = JSON.parse(message.data);
    } catch {
      return;
    }
    if (data.event === "authenticated") ws.send(JSON.stringify({ event: "subscribe_all" }));
    for (const listener of listeners) listener(data);
  });
  ws.addEventListener("close", () => {
    if (socket === ws) socket = null;
    for (const listener of listeners) listener({ event: "live_closed" });
    // Closed for an expired token or a restart: connect again with the token held now.
    if (wanted) {
      clearTimeout(retry);
      retry = setTimeout(startLive, 2000);
    }
  });
}

export function restartLive() {
  if (socket) socket.close();
  else if (wanted) startLive();
}

export function stopLive() {
  wanted = false;
  clearTimeout(retry);
  if (socket) socket.close();
  socket = null;
}
