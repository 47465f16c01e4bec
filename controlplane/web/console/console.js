// The admins' console: pools at a glance and the capacity plot (planned, rostered, actual).
const $ = (id) => document.getElementById(id);
let token = null;
let current = null;

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, cache: "no-store",
    headers: { "Content-Type": "application/json", ...(token ? { Authorization: `Bearer ${token}` } : {}) } });
  if (!response.ok) throw new Error((await response.json().catch(() => ({}))).detail || response.statusText);
  return response;
}

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const r = await api("/api/v1/auth/login", { method: "POST",
      body: JSON.stringify({ username: $("username").value, password: $("password").value }) });
    const body = await r.json();
    if (body.role !== "admin") throw new Error("this console is for administrators");
    token = body.token;
    $("who").textContent = body.username;
    $("login").hidden = true;
    $("pools").hidden = false;
    await loadPools();
  } catch (err) {
    $("error").textContent = err.message;
    $("error").hidden = false;
  }
});

async function loadPools() {
  const pools = await (await api("/api/v1/pools")).json();
  const rows = $("pool-rows");
  rows.replaceChildren();
  for (const pool of pools) {
    const tr = document.createElement("tr");
    const cells = [pool.name, pool.image, String(pool.size),
      Object.entries(pool.desktops).map(([k, v]) => `${k} ${v}`).join(", ") || "-"];
    for (const text of cells) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    const td = document.createElement("td");
    const button = document.createElement("button");
    button.textContent = "Show plan";
    button.addEventListener("click", () => showPlot(pool.name));
    td.append(button);
    tr.append(td);
    rows.append(tr);
  }
}

async function showPlot(pool) {
  current = pool;
  const days = $("range").value;
  try {
    const blob = await (await api(`/api/v1/schedules/${encodeURIComponent(pool)}/plan?fmt=svg&days=${days}`)).blob();
    $("plot").src = URL.createObjectURL(blob);
    $("plot").hidden = false;
    $("plot-title").textContent = `Capacity of ${pool}`;
    $("plot-title").hidden = false;
  } catch (err) {
    $("plot-title").textContent = `${pool}: ${err.message}`;
    $("plot-title").hidden = false;
    $("plot").hidden = true;
  }
}
$("range").addEventListener("change", () => current && showPlot(current));
