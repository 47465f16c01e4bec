// The agents' portal: sign in, pick (or go straight to) a desktop, see it through the gateway.
// Pixels only: no clipboard or file UI exists here, and the page's Permissions-Policy denies
// clipboard access; the gateway drops clipboard traffic either way.
import RFB from "./novnc/core/rfb.js";

const $ = (id) => document.getElementById(id);
const state = { token: null, user: null, pool: null, rfb: null, desktop: null, retries: 0, leaving: false,
  closeReason: "" };
// The gateway's close reasons (EndReason) after which the agent gets a fresh desktop, and what they are told.
const FRESH_DESKTOP = {
  "desktop stopped by a security check":
    "Your desktop was stopped by a security check. Connecting you to a fresh desktop...",
  "the desktop's host failed":
    "The server your desktop ran on failed. Connecting you to a fresh desktop (unsaved work is lost)...",
};

async function api(path, options = {}) {
  const headers = { "Content-Type": "application/json" };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  const response = await fetch(path, { ...options, headers, credentials: "same-origin", cache: "no-store" });
  const body = response.status === 204 ? {} : await response.json().catch(() => ({}));
  if (!response.ok) throw Object.assign(new Error(body.detail || response.statusText), { status: response.status });
  return body;
}

function show(view) {
  for (const id of ["login-view", "pools-view", "viewer-view"]) $(id).hidden = id !== view;
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("login-button").disabled = true;
  $("login-error").hidden = true;
  try {
    const result = await api("/api/v1/auth/login", {
      method: "POST", body: JSON.stringify({ username: $("username").value, password: $("password").value }),
    });
    $("password").value = "";
    state.token = result.token;
    state.user = result.username;
    const pools = await api("/api/v1/me/pools");
    if (pools.length === 1) return connect(pools[0].name);  // one click from login to desktop
    listPools(pools);
  } catch (err) {
    $("login-error").textContent = err.status === 503 ? "Sign-in is unavailable right now. Please try again shortly."
      : err.status === 401 ? "Wrong username or password." : err.message;
    $("login-error").hidden = false;
  } finally {
    $("login-button").disabled = false;
  }
});

function listPools(pools) {
  const list = $("pool-list");
  list.replaceChildren();
  if (!pools.length) {
    $("pools-error").textContent = "No desktop is assigned to you. Please contact your supervisor.";
    $("pools-error").hidden = false;
  }
  for (const pool of pools) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.textContent = `Open ${pool.name}`;
    button.addEventListener("click", () => connect(pool.name));
    item.append(button);
    list.append(item);
  }
  show("pools-view");
}

async function connect(pool) {
  state.pool = pool;
  show("viewer-view");
  $("status").textContent = FRESH_DESKTOP[state.closeReason] || "Connecting...";
  let ticket;
  try {
    ticket = await api(`/api/v1/me/pools/${encodeURIComponent(pool)}/connect`, { method: "POST" });
  } catch (err) {
    $("status").textContent = err.status === 503 ? "Your desktop is starting, one moment..." : err.message;
    if (err.status === 401) return signOut();
    return retryLater();
  }
  state.desktop = ticket.desktop;
  $("who").textContent = state.user;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const url = `${scheme}://${location.host}${ticket.gateway}?ticket=${encodeURIComponent(ticket.ticket)}`;
  // Our own WebSocket (noVNC takes a channel as well as a URL): its close event carries the
  // gateway's reason, which noVNC's disconnect event does not.
  const channel = new WebSocket(url, ["binary"]);
  channel.binaryType = "arraybuffer";
  channel.addEventListener("close", (ev) => { state.closeReason = ev.reason; });
  const rfb = new RFB($("screen"), channel, { shared: false });
  rfb.scaleViewport = true;  // usable on a small laptop screen
  rfb.clipViewport = false;
  rfb.resizeSession = false;
  rfb.showDotCursor = true;
  rfb.addEventListener("connect", () => {
    state.retries = 0;
    state.closeReason = "";
    $("status").textContent = `Connected to your desktop`;
    rfb.focus();
  });
  rfb.addEventListener("disconnect", () => {
    state.rfb = null;
    if (state.leaving) return;
    $("status").textContent = FRESH_DESKTOP[state.closeReason]
      || "Connection lost, reconnecting...";  // same desktop, within the grace period
    retryLater();
  });
  state.rfb = rfb;
  window.__shiftdesk = { rfb };  // for tests and support: the same access any page script would have
  watchLimits(pool);
}

// Warn before the gateway ends the session (it enforces the same limits, whatever the page does).
async function watchLimits(pool) {
  let limits;
  try {
    limits = (await api(`/api/v1/me/policy?pool=${encodeURIComponent(pool)}`)).session;
  } catch (err) {
    return;
  }
  const started = Date.now();
  state.lastInput = Date.now();
  clearInterval(state.limitTimer);
  clearInterval(state.logoffTimer);
  const checkLogoff = async () => {  // a ramp-down after the shift: signed out at this time
    try {
      const mine = await api(`/api/v1/me/pools/${encodeURIComponent(pool)}/desktop`);
      state.logoffAt = mine.logoff_at ? Date.parse(mine.logoff_at) : null;
    } catch (err) { /* keep the last answer */ }
  };
  checkLogoff();
  state.logoffTimer = setInterval(checkLogoff, 30000);
  state.limitTimer = setInterval(() => {
    const idleLeft = limits.idle_timeout_minutes * 60000 - (Date.now() - state.lastInput);
    const sessionLeft = limits.max_session_hours * 3600000 - (Date.now() - started);
    const logoffLeft = state.logoffAt ? state.logoffAt - Date.now() : Infinity;
    let text = "";
    if (logoffLeft < Infinity) text = `Your shift has ended: you will be signed out in ${Math.max(0, Math.ceil(logoffLeft / 60000))} min. Please save your work.`;
    else if (idleLeft < 60000) text = `No activity: you will be disconnected in ${Math.max(0, Math.round(idleLeft / 1000))} s.`;
    $("warning").textContent = text;
    $("warning").hidden = !text;
  }, 1000);
}
for (const type of ["keydown", "pointerdown", "pointermove", "wheel"]) {
  document.addEventListener(type, () => { state.lastInput = Date.now(); }, { capture: true, passive: true });
}

function retryLater() {
  state.retries += 1;
  const delay = Math.min(1000 * 2 ** Math.min(state.retries, 4), 15000);
  setTimeout(() => { if (!state.leaving && state.token) connect(state.pool); }, delay);
}

async function signOut() {
  state.leaving = true;
  if (state.rfb) state.rfb.disconnect();
  try { await api("/api/v1/auth/logout", { method: "POST" }); } catch (err) { /* already gone */ }
  state.token = null;
  location.reload();
}
$("logout").addEventListener("click", signOut);

// The watermark: who, which desktop, when. Redrawn every second and restored if anything
// removes or hides it; it sits above the screen and lets clicks through.
function drawWatermark() {
  let mark = $("watermark");
  if (!mark || !document.body.contains(mark)) {
    mark = document.createElement("div");
    mark.id = "watermark";
    mark.setAttribute("aria-hidden", "true");
    $("viewer-view").append(mark);
  }
  mark.removeAttribute("style");
  mark.hidden = false;
  const text = `${state.user || ""} · ${state.desktop || ""} · ${new Date().toISOString().slice(0, 19).replace("T", " ")} UTC`;
  if (mark.childElementCount !== 12) {
    mark.replaceChildren(...Array.from({ length: 12 }, () => document.createElement("span")));
  }
  for (const span of mark.children) span.textContent = text;
}
function watermarkTampered() {
  const mark = $("watermark");
  return !mark || !document.body.contains(mark) || mark.hidden || mark.hasAttribute("style")
    || mark.childElementCount !== 12;
}
setInterval(drawWatermark, 1000);
new MutationObserver(() => { if (watermarkTampered()) drawWatermark(); }).observe(document.body, {
  subtree: true, childList: true, attributes: true, attributeFilter: ["style", "hidden", "class"] });
drawWatermark();
