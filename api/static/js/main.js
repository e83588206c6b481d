// The page's entry: first-run setup, sign-in (with the second factor when asked), then the
// section named by the location's hash.

import { ApiError, call, can, login, logout, onToken, refresh, token } from "./api.js";
import { field, h, replace, say } from "./dom.js";
import { restartLive, startLive, stopLive } from "./live.js";
import { showAudit } from "./audit.js";
import { showCosts } from "./costs.js";
import { showDevice } from "./device.js";
import { showDevices } from "./devices.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
let leave = null;

function setUpForm() {
  const username = h("input", { name: "username", autocomplete: "username", required: true, minlength: "3", maxlength: "64" });
  const password = h("input", { name: "password", type: "password", autocomplete: "new-password", required: true, minlength: "12" });
  const form = h("form", { class: "card narrow", "aria-labelledby": "setup-title" },
    h("h1", { id: "setup-title", text: "Create the administrator" }),
    h("p", { text: "This installation has no account yet. The first one you create here administers it." }),
    field("User name", username),
    field("Password", password, "12 characters or more, mixing two kinds (letters, digits, others)."),
    h("button", { type: "submit", text: "Create administrator" }));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await call("POST", "/api/auth/setup", { username: username.value, password: password.value }, { anonymous: true });
      say("Administrator created: sign in.");
      showSignIn(username.value);
    } catch (error) {
      say(`Setup refused: ${error.message}`);
    }
  });
  return form;
}

function showSignIn(name = "") {
  nav.hidden = true;
  const username = h("input", { name: "username", autocomplete: "username", required: true, value: name });
  const password = h("input", { name: "password", type: "password", autocomplete: "current-password", required: true });
  const code = h("input", { name: "totp", inputmode: "numeric", autocomplete: "one-time-code" });
  const codeField = field("Two-factor code", code, "From your authenticator app, or a backup code.");
  codeField.hidden = true;
  const form = h("form", { class: "card narrow", "aria-labelledby": "signin-title" },
    h("h1", { id: "signin-title", text: "Sign in" }),
    field("User name", username), field("Password", password), codeField,
    h("button", { type: "submit", text: "Sign in" }));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await login(username.value, password.value, codeField.hidden ? null : code.value);
      say("Signed in.");
      route();
    } catch (error) {
      if (error instanceof ApiError && error.code === "TOTP_REQUIRED") {
        codeField.hidden = false;
        code.focus();
        say("Enter the code from your authenticator app.");
      } else {
        say(`Sign-in refused: ${error.message}`);
      }
    }
  });
  replace(main, form);
  (name ? password : username).focus();
}

async function route() {
  if (leave) leave();
  leave = null;
  if (!token()) return showSignIn();
  nav.hidden = false;
  nav.querySelector('a[href="#/audit"]').hidden = !(can("AUDIT_VIEW") || can("DATA_EXPORT"));
  startLive();
  const [section, arg] = location.hash.replace(/^#\/?/, "").split("/");
  const views = { devices: showDevices, device: showDevice, costs: showCosts, audit: showAudit };
  const view = views[section] || showDevices;
  for (const link of nav.querySelectorAll("a")) {
    link.toggleAttribute("aria-current", link.getAttribute("href") === `#/${section || "devices"}`);
  }
  try {
    leave = await view(main, arg ? decodeURIComponent(arg) : undefined);
  } catch (error) {
    replace(main, h("p", { class: "error", text: `Could not load this page: ${error.message}` }));
  }
}

async function start() {
  onToken((current) => {
    if (current) restartLive();
    else {
      stopLive();
      showSignIn();
    }
  });
  document.getElementById("signout").addEventListener("click", async () => {
    await logout();
    say("Signed out.");
  });
  window.addEventListener("hashchange", async () => {
    await route();
    // A new section: reading and keyboard focus start at its content.
    main.focus({ preventScroll: true });
  });
  const { setup_required: setupRequired } = await call("GET", "/api/auth/setup-required", undefined, { anonymous: true });
  if (setupRequired) {
    replace(main, setUpForm());
    return;
  }
  try {
    await refresh();
  } catch {
    // No session kept in this browser: sign in.
  }
  route();
}

start().catch((error) => say(`The dashboard could not start: ${error.message}`));
