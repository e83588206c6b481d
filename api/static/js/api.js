// The JSON API with the access token held in memory only. The refresh token never reaches
// script: it lives in an HttpOnly cookie sent to POST /api/auth/web/refresh alone, which also
// wants the double-submit CSRF value of the readable wl_csrf cookie.

const REFRESH_URL = "/api/auth/web/refresh";
let accessToken = null;
let permissions = new Set();
let refreshTimer = null;
let refreshing = null;
const tokenListeners = new Set();

export class ApiError extends Error {
  constructor(status, body) {
    super(body && body.detail ? body.detail : `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error_code ? body.error_code : null;
    this.body = body;
  }
}

export function token() {
  return accessToken;
}

// What the signed-in user may do: the page offers only those controls (the API checks anyway).
export function can(permission) {
  return permissions.has(permission);
}

export function onToken(listener) {
  tokenListeners.add(listener);
}

function csrf() {
  const found = document.cookie.split("; ").find((c) => c.startsWith("wl_csrf="));
  return found ? decodeURIComponent(found.slice("wl_csrf=".length)) : "";
}

function keep(answer) {
  accessToken = answer.access_token;
  permissions = new Set(answer.user ? answer.user.permissions : []);
  clearTimeout(refreshTimer);
  // A minute before it expires, the token is renewed from the cookie.
  const renewIn = Math.max((answer.expires_in - 60) * 1000, 5000);
  refreshTimer = setTimeout(() => refresh().catch(() => signedOut()), renewIn);
  for (const listener of tokenListeners) listener(accessToken);
  return answer;
}

function signedOut() {
  accessToken = null;
  permissions = new Set();
  clearTimeout(refreshTimer);
  for (const listener of tokenListeners) listener(null);
}

async function decode(response) {
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : null;
}

export async function refresh() {
  if (!refreshing) {
    refreshing = (async () => {
      const response = await fetch(REFRESH_URL, {
        method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": csrf() },
      });
      const body = await decode(response);
      if (!response.ok) throw new ApiError(response.status, body);
      return keep(body);
    })().finally(() => { refreshing = null; });
  }
  return refreshing;
}

export async function login(username, password, totpCode) {
  const body = { username, password };
  if (totpCode) body.totp_code = totpCode;
  const answer = await call("POST", "/api/auth/login", body, { anonymous: true, headers: { "X-Refresh-Delivery": "cookie" } });
  return keep(answer);
}

export async function logout() {
  try {
    if (accessToken) await call("POST", "/api/auth/logout");
  } finally {
    await fetch("/api/auth/web/signout", { method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": csrf() } });
    signedOut();
  }
}

export async function call(method, path, body, options = {}) {
  const response = await send(method, path, body, options);
  const decoded = await decode(response);
  if (!response.ok) throw new ApiError(response.status, decoded);
  return decoded;
}

export async function download(path, filename) {
  const response = await send("GET", path);
  if (!response.ok) throw new ApiError(response.status, await decode(response));
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

async function send(method, path, body, options = {}) {
  const attempt = () => {
    const headers = { ...(options.headers || {}) };
    if (accessToken && !options.anonymous) headers.Authorization = `Bearer ${accessToken}`;
    const init = { method, headers, credentials: "same-origin" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(path, init);
  };
  let response = await attempt();
  if (response.status === 401 && accessToken && !options.anonymous) {
    // An expired access token is renewed once from the cookie; the request is then sent again.
    try {
      await refresh();
    } catch (error) {
      signedOut();
      return response;
    }
    response = await attempt();
  }
  return response;
}
