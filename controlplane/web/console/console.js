// The admins' console: pools (with capacity plots and rollouts), desktops (with a screenshot),
// live sessions, images, policies, shift rosters and the audit log. Every action is a call to the
// same REST API the CLI uses, so it is authorised and audited there; this page only shows and asks.
// Text from the server is only ever set as textContent, never as HTML.
const $ = (id) => document.getElementById(id);
let token = null;

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, cache: "no-store",
    headers: { "Content-Type": "application/json", ...(token ? { Authorization: `Bearer ${token}` } : {}) } });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    const err = new Error(typeof body.detail === "string" ? body.detail : response.statusText);
    err.problems = Array.isArray(body.errors) ? body.errors : [];
    throw err;
  }
  return response;
}
const json = async (path, options) => (await api(path, options)).json();
const post = (path, body = {}) => json(path, { method: "POST", body: JSON.stringify(body) });

function say(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

// Run an action from a button: say what happened, or why it failed, then refresh the view.
function act(label, run, refresh) {
  return async () => {
    try {
      await run();
      say(`${label}: done`);
    } catch (err) {
      say(`${label}: ${err.message}`, true);
    }
    await refresh();
  };
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text ?? "-";
  return td;
}

function button(text, onClick, label) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  if (label) b.setAttribute("aria-label", label);
  b.addEventListener("click", onClick);
  return b;
}

function row(cells, buttons = []) {
  const tr = document.createElement("tr");
  for (const text of cells) tr.append(cell(text));
  if (buttons.length) {
    const td = document.createElement("td");
    td.append(...buttons);
    tr.append(td);
  }
  return tr;
}

function fill(tbody, rows, empty) {
  $(tbody).replaceChildren(...(rows.length ? rows : [row([empty])]));
}

function age(iso) {
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

const confirmed = (question) => window.confirm(question);

const when = (iso) => (iso ? new Date(iso).toISOString().slice(0, 16).replace("T", " ") : null);

// What the API refused, one problem a line: file, line and field for YAML files, else the field.
function problems(err) {
  if (!err.problems?.length) return err.message;
  return err.problems.map((p) => (p.file ? `${p.file}:${p.line}: ${p.field}: ${p.message}` : `${p.field}: ${p.msg}`))
    .join("\n");
}

// The YAML files picked in a file input, as the apply routes take them: {name: text}.
async function yamlFiles(input) {
  const files = {};
  for (const file of $(input).files) files[file.name] = await file.text();
  return files;
}

function output(id, text, isError = false) {
  $(id).textContent = text;
  $(id).classList.toggle("error", isError);
  $(id).hidden = false;
}

// --- tabs ------------------------------------------------------------------------------------

const loaders = { pools: loadPools, desktops: loadDesktops, sessions: loadSessions, images: loadImages,
  policies: loadPolicies, rosters: loadRosters, hosts: loadHosts, audit: loadAudit };

async function show(name) {
  for (const tab of document.querySelectorAll("[role=tab]")) {
    const on = tab.getAttribute("aria-controls") === name;
    tab.setAttribute("aria-selected", String(on));
    $(tab.getAttribute("aria-controls")).hidden = !on;
  }
  try {
    await loaders[name]();
  } catch (err) {
    say(`${name}: ${err.message}`, true);
  }
}

for (const tab of document.querySelectorAll("[role=tab]")) {
  tab.addEventListener("click", () => show(tab.getAttribute("aria-controls")));
}

// --- sign in ---------------------------------------------------------------------------------

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const body = await post("/api/v1/auth/login", { username: $("username").value, password: $("password").value });
    if (body.role !== "admin") throw new Error("this console is for administrators");
    token = body.token;
    $("who").textContent = body.username;
    $("login").hidden = true;
    $("password").value = "";
    $("tabs").hidden = false;
    $("sign-out").hidden = false;
    await show("pools");
  } catch (err) {
    $("error").textContent = err.message;
    $("error").hidden = false;
  }
});

$("sign-out").addEventListener("click", async () => {
  await api("/api/v1/auth/logout", { method: "POST" }).catch(() => {});
  token = null;
  window.location.reload();
});

// --- pools -----------------------------------------------------------------------------------

async function rolloutText(pool) {
  try {
    const r = await json(`/api/v1/pools/${encodeURIComponent(pool)}/rollout`);
    const where = r.state === "canary" || r.state === "rolling" ? ` (${r.desktops.new} new, ${r.desktops.old} old)` : "";
    return `${r.state} to ${r.to_image}${where}${r.reason ? `: ${r.reason}` : ""}`;
  } catch {
    return "-";
  }
}

async function loadPools() {
  const [pools, images] = await Promise.all([json("/api/v1/pools"), json("/api/v1/images")]);
  const rows = [];
  for (const pool of pools) {
    const counts = Object.entries(pool.desktops).map(([k, v]) => `${k} ${v}`).join(", ") || "-";
    const rollout = await rolloutText(pool.name);
    const buttons = [button("Show plan", () => showPlot(pool.name), `Show the capacity plan of ${pool.name}`)];
    if (rollout.startsWith("canary") || rollout.startsWith("rolling")) {
      buttons.push(button("Roll back", act(`roll back ${pool.name}`, async () => {
        if (!confirmed(`Stop the rollout of ${pool.name} and go back to the previous image?`)) throw new Error("cancelled");
        await post(`/api/v1/pools/${encodeURIComponent(pool.name)}/rollout/rollback`, { reason: "from the console" });
      }, loadPools), `Roll back the rollout of ${pool.name}`));
    }
    const state = pool.unplaceable ? `${counts}; ${pool.unplaceable}` : counts;
    rows.push(row([pool.name, pool.image, String(pool.size), state, rollout], buttons));
  }
  fill("pool-rows", rows, "no pools");
  const keep = (select, options) => {
    const chosen = select.value;
    select.replaceChildren(...options.map((o) => new Option(o, o)));
    if (options.includes(chosen)) select.value = chosen;
  };
  keep($("rollout-pool"), pools.map((p) => p.name));
  keep($("rollout-image"), images.filter((i) => !i.deprecated).map((i) => `${i.name}:${i.version}`));
}

$("rollout").addEventListener("submit", async (event) => {
  event.preventDefault();
  const pool = $("rollout-pool").value;
  await act(`rollout of ${pool}`, () => post(`/api/v1/pools/${encodeURIComponent(pool)}/rollouts`, {
    image: $("rollout-image").value, canary: $("rollout-canary").value.trim(),
    batch: Number($("rollout-batch").value), soak_s: Number($("rollout-soak").value) }), loadPools)();
});

// A pool's capacity plot (planned head-count and desktops against actual desktops) in one place
// on the page: an image, its title and a range select. Returns the function that shows a pool's.
function capacityPlot(img, title, range) {
  let shown = null;
  async function showPlot(pool) {
    shown = pool;
    try {
      const path = `/api/v1/schedules/${encodeURIComponent(pool)}/plan?fmt=svg&days=${$(range).value}`;
      const blob = await (await api(path)).blob();
      $(img).src = URL.createObjectURL(blob);
      $(img).hidden = false;
      $(title).textContent = `Capacity of ${pool}`;
    } catch (err) {
      $(title).textContent = `${pool}: ${err.message}`;
      $(img).hidden = true;
    }
    $(title).hidden = false;
  }
  $(range).addEventListener("change", () => shown && showPlot(shown));
  return showPlot;
}
const showPlot = capacityPlot("plot", "plot-title", "range");

// --- desktops --------------------------------------------------------------------------------

async function loadDesktops() {
  const pools = await json("/api/v1/pools");
  const select = $("desktop-pool");
  const chosen = select.value;
  select.replaceChildren(new Option("All pools", ""), ...pools.map((p) => new Option(p.name, p.name)));
  select.value = chosen;
  const query = chosen ? `?pool=${encodeURIComponent(chosen)}` : "";
  const desktops = await json(`/api/v1/desktops${query}`);
  fill("desktop-rows", desktops.map((d) => {
    const path = `/api/v1/desktops/${encodeURIComponent(d.name)}`;
    const buttons = [button("View", () => preview(d.name), `View the screen of ${d.name}`)];
    if (d.assigned_to) {
      buttons.push(button("Disconnect", act(`disconnect ${d.name}`, () => post(`${path}/disconnect`), loadDesktops),
        `Disconnect the session on ${d.name}`));
    } else {
      buttons.push(button("Reboot", act(`reboot ${d.name}`, () => post(`${path}/reboot`), loadDesktops),
        `Reboot ${d.name}`));
      buttons.push(button("Rebuild", act(`rebuild ${d.name}`, () => post(`${path}/rebuild`), loadDesktops),
        `Rebuild ${d.name} from its pool's image`));
    }
    buttons.push(button("Recycle", act(`recycle ${d.name}`, async () => {
      if (!confirmed(`Recycle ${d.name}? It is deleted and replaced by a fresh desktop.`)) throw new Error("cancelled");
      await api(path, { method: "DELETE" });
    }, loadDesktops), `Recycle ${d.name}`));
    return row([d.name, d.pool, d.state + (d.reason ? ` (${d.reason})` : ""), d.assigned_to, age(d.since)], buttons);
  }), "no desktops");
}
$("desktop-pool").addEventListener("change", () => loadDesktops().catch((err) => say(err.message, true)));

async function preview(name) {
  try {
    const blob = await (await api(`/api/v1/desktops/${encodeURIComponent(name)}/screenshot`)).blob();
    $("preview-img").src = URL.createObjectURL(blob);
    $("preview-img").alt = `The screen of ${name}`;
    $("preview-caption").textContent = `${name}, ${new Date().toLocaleTimeString()} (this look is in the audit log)`;
    $("preview").hidden = false;
  } catch (err) {
    say(`screen of ${name}: ${err.message}`, true);
  }
}

// --- sessions --------------------------------------------------------------------------------

async function loadSessions() {
  const sessions = await json("/api/v1/sessions");
  fill("session-rows", sessions.map((s) => row(
    [s.user, s.desktop, s.pool, s.source, age(s.since), s.idle_s == null ? "-" : `${Math.round(s.idle_s)} s`,
      `${s.bytes_from_browser} / ${s.bytes_to_browser}`],
    [button("Disconnect", act(`disconnect ${s.user}`, () => post(`/api/v1/desktops/${encodeURIComponent(s.desktop)}/disconnect`),
      loadSessions), `Disconnect ${s.user} from ${s.desktop}`),
    button("Revoke", act(`revoke ${s.user}`, async () => {
      if (!confirmed(`End every sign-in of ${s.user}? They must sign in again.`)) throw new Error("cancelled");
      await post("/api/v1/auth/revoke", { username: s.user });
    }, loadSessions), `Revoke every sign-in of ${s.user}`)])), "no live sessions");
}

// --- images ----------------------------------------------------------------------------------

async function loadImages() {
  const [images, pools] = await Promise.all([json("/api/v1/images"), json("/api/v1/pools")]);
  fill("image-rows", images.map((i) => {
    const ref = `${i.name}:${i.version}`;
    const users = pools.filter((p) => p.image === ref).map((p) => p.name).join(", ") || "-";
    return row([ref, when(i.built_at), i.sha256.slice(0, 12), i.deprecated ? "yes" : "no", users]);
  }), "no images");
}

$("build").addEventListener("submit", async (event) => {
  event.preventDefault();
  const recipe = $("build-recipe").value.trim();
  say(`building ${recipe} ...`);
  await act(`build of ${recipe}`, () => post("/api/v1/images", { recipe }), loadImages)();
});

// --- hosts -----------------------------------------------------------------------------------

const GiB = 1024 ** 3;

async function loadHosts() {
  const hosts = await json("/api/v1/hosts");
  fill("host-rows", hosts.map((h) => {
    const c = h.capacity;
    const counts = Object.entries(h.desktops).map(([state, n]) => `${state} ${n}`).join(", ") || "none";
    const state = h.reason ? `${h.state}: ${h.reason}` : h.state;
    return row([h.name, h.uri, h.mode === "active" ? state : `${state} (${h.mode})`,
      `${h.committed_vcpus} / ${c ? c.vcpus : "?"}`,
      `${(h.committed_memory_mib / 1024).toFixed(1)} / ${c ? (c.memory_mib / 1024).toFixed(1) : "?"} GiB`,
      c ? `${(c.disk_free_bytes / GiB).toFixed(0)} of ${(c.disk_bytes / GiB).toFixed(0)} GiB` : "?", counts]);
  }), "no hosts");
}

// --- policies --------------------------------------------------------------------------------

async function loadPolicies() {
  const revisions = await json("/api/v1/policies/revisions");
  const current = revisions.length ? revisions[0].revision : null;
  fill("revision-rows", revisions.map((r) => row(
    [String(r.revision) + (r.revision === current ? " (current)" : ""), when(r.created_at), r.actor,
      r.comment || (r.rollback_of ? `rollback to ${r.rollback_of}` : "")],
    r.revision === current ? [] : [button("Roll back", act(`roll back to revision ${r.revision}`, async () => {
      if (!confirmed(`Make revision ${r.revision}'s policies current again?`)) throw new Error("cancelled");
      await post("/api/v1/policies/rollback", { revision: r.revision, comment: "from the console" });
    }, loadPolicies), `Roll back to revision ${r.revision}`)])), "no policies applied");
}

function showChanges(changes, heading) {
  const lines = [heading];
  for (const c of changes) {
    lines.push(`${c.change} ${c.policy}`);
    for (const f of c.fields) lines.push(`    ${f.field}: ${JSON.stringify(f.old)} -> ${JSON.stringify(f.new)}`);
  }
  if (!changes.length) lines.push("no changes");
  output("apply-out", lines.join("\n"));
}

async function policyCall(path, heading) {
  try {
    const body = await post(path, { files: await yamlFiles("apply-files"), comment: $("apply-comment").value });
    showChanges(body.changes, heading(body));
    await loadPolicies();
  } catch (err) {
    output("apply-out", problems(err), true);
  }
}

$("apply-diff").addEventListener("click", () => policyCall("/api/v1/policies/diff", () => "Applying these files would change:"));
$("apply").addEventListener("submit", (event) => {
  event.preventDefault();
  policyCall("/api/v1/policies/apply", (body) => `Applied as revision ${body.revision}:`);
});

$("explain").addEventListener("submit", async (event) => {
  event.preventDefault();
  const query = new URLSearchParams({ user: $("explain-user").value });
  if ($("explain-pool").value) query.set("pool", $("explain-pool").value);
  try {
    const result = await json(`/api/v1/policies/explain?${query}`);
    $("explain-out").textContent = JSON.stringify(result, null, 2);
  } catch (err) {
    $("explain-out").textContent = err.message;
  }
  $("explain-out").hidden = false;
});

// --- rosters ---------------------------------------------------------------------------------
// What `shiftdesk schedule apply|show|plan` do: every pool with its roster in brief, one pool's
// roster in full with its capacity plot, and roster files checked or applied.

const DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const showRosterPlot = capacityPlot("roster-plot", "roster-plot-title", "roster-range");

async function loadRosters() {
  const rosters = await json("/api/v1/schedules");
  fill("roster-rows", rosters.map((r) => (r.applied_at
    ? row([r.pool, r.timezone, String(r.shifts), String(r.events), String(r.holidays), when(r.applied_at), r.actor],
      [button("Show", () => showRoster(r.pool), `Show the roster of ${r.pool}`)])
    : row([r.pool, "no roster", "-", "-", "-", "-", "-"]))), "no pools");
}

const days = (list) => (list.length === DAYS.length ? "every day"
  : DAYS.filter((d) => list.includes(d)).join(" "));
const minutes = (value, unset) => (value == null ? unset : `${value} min`);

function buffer(b) {
  const spare = `${b?.min ?? 0} spare desktop${b?.min === 1 ? "" : "s"}`;
  return b?.percent ? `${spare}, or ${b.percent}% of head-count if that is more` : spare;
}

function settings(doc) {
  return [
    ["Time zone", doc.timezone],
    ["Desktops", `${doc.min ?? "default"} to ${doc.max ?? "default"}`],
    ["Idle buffer", buffer(doc.buffer)],
    ["Prewarm", minutes(doc.prewarm_minutes, "from measured provisioning")],
    ["Log-off after ramp-down", minutes(doc.ramp_down?.logoff_after_minutes, "default")],
    ["Arrival margin", minutes(doc.arrival_margin_minutes, "default")],
    ["Holidays", (doc.holidays ?? []).join(", ") || "none"],
  ].flatMap(([term, value]) => {
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = term;
    dd.textContent = value;
    return [dt, dd];
  });
}

async function showRoster(pool) {
  try {
    const shown = await json(`/api/v1/schedules/${encodeURIComponent(pool)}`);
    const doc = shown.roster;
    $("roster-title").textContent = `Roster of ${pool}, applied ${when(shown.applied_at)} UTC by ${shown.actor}`;
    $("roster-settings").replaceChildren(...settings(doc));
    $("shift-caption").textContent = `Shifts of ${pool} (${doc.timezone} wall-clock time)`;
    fill("shift-rows", doc.shifts.map((s) => row([s.name, days(s.days), s.start,
      s.end <= s.start ? `${s.end} (next day)` : s.end, String(s.headcount)])), "no shifts");
    $("event-caption").textContent = `Events of ${pool}`;
    fill("event-rows", (doc.events ?? []).map((e) => row([e.name, e.start.replace("T", " "), e.end.replace("T", " "),
      String(e.headcount)])), "no events");
    $("roster-yaml").textContent = shown.yaml;
    $("roster-view").hidden = false;
    await showRosterPlot(pool);
  } catch (err) {
    say(`roster of ${pool}: ${err.message}`, true);
  }
}

function changedText(body) {
  const rosters = body.changed.length === 1 ? "roster" : "rosters";
  const lines = body.changed.length ? [`Applied: the ${rosters} of ${body.changed.join(", ")} changed.`]
    : ["Applied: no roster changed (these files are what is applied already)."];
  for (const [pool, [before, after]] of Object.entries(body.scaled)) {
    lines.push(`${pool}: ${before} -> ${after} desktops now`);
  }
  return lines.join("\n");
}

// Check or apply the picked files; on success DONE shows the answer, else each problem is listed.
async function rosterCall(verb, done) {
  let body;
  try {
    body = await post(`/api/v1/schedules/${verb}`, { files: await yamlFiles("roster-files") });
  } catch (err) {
    say(`roster files: ${verb === "apply" ? "not applied" : "not valid"}`, true);
    output("roster-out", problems(err), true);
    return;
  }
  say(`roster files: ${verb === "apply" ? "applied" : "valid"}`);
  await done(body).catch((err) => say(`rosters: ${err.message}`, true));
}

$("roster-validate").addEventListener("click", () => rosterCall("validate", async (body) => output("roster-out",
  `Valid: rosters for ${body.pools.join(", ")} (applying also checks that these pools exist).`)));
$("roster-apply").addEventListener("submit", (event) => {
  event.preventDefault();
  rosterCall("apply", async (body) => {
    output("roster-out", changedText(body));
    await loadRosters();
    if (body.changed.length) await showRoster(body.changed[0]);
  });
});

// --- audit -----------------------------------------------------------------------------------

function auditQuery() {
  const query = new URLSearchParams();
  for (const [key, id] of [["actor", "audit-actor"], ["action", "audit-action"], ["target", "audit-target"]]) {
    if ($(id).value.trim()) query.set(key, $(id).value.trim());
  }
  for (const [key, id] of [["since", "audit-since"], ["until", "audit-until"]]) {
    if ($(id).value) query.set(key, new Date($(id).value).toISOString());
  }
  return query;
}

async function loadAudit() {
  const query = auditQuery();
  query.set("limit", "200");
  const events = await json(`/api/v1/audit?${query}`);
  fill("audit-rows", events.map((e) => row([e.at.slice(0, 19).replace("T", " "), e.actor, e.action, e.target,
    JSON.stringify(e.detail)])), "no events match");
}

$("audit-search").addEventListener("submit", (event) => {
  event.preventDefault();
  loadAudit().catch((err) => say(err.message, true));
});

$("audit-export").addEventListener("click", async () => {
  try {
    const blob = await (await api(`/api/v1/audit/export.csv?${auditQuery()}`)).blob();
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = "shiftdesk-audit.csv";
    link.click();
    say("audit export: downloaded (the export itself is audited)");
  } catch (err) {
    say(`audit export: ${err.message}`, true);
  }
});
