// The feature-serving console: plain JavaScript, no library, every request to this origin.
// The API key lives in this tab's sessionStorage only and goes out as the bearer header; the
// server cuts every answer to the key's scope, so the page shows what the key may read.
"use strict";

const KEY_ITEM = "feature-serving-console-key";
const body = document.body;
const ROLE = body.dataset.role;
const AUTH = body.dataset.auth === "on";
let who = null;
let refreshTimer = null;

function key() { return sessionStorage.getItem(KEY_ITEM); }

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (key()) h["Authorization"] = "Bearer " + key();
  return h;
}

async function call(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = headers(opts.headers);
  const resp = await fetch(path, opts);
  const text = await resp.text();
  if (!resp.ok) {
    let message = text;
    try { message = JSON.parse(text).message || text; } catch (_) { /* not JSON */ }
    if (resp.status === 401) { sessionStorage.removeItem(KEY_ITEM); }
    throw new ApiError(resp.status, message);
  }
  return text;
}

async function getJson(path) { return JSON.parse(await call(path)); }

async function postJson(path, data) {
  return JSON.parse(await call(path, {
    method: "POST", body: JSON.stringify(data), headers: { "Content-Type": "application/json" },
  }));
}

async function chart(path, title) {
  const box = el("div", { class: "chart", "data-chart": path });
  try {
    const text = await call(path);
    const doc = new DOMParser().parseFromString(text, "image/svg+xml");
    box.append(document.importNode(doc.documentElement, true));
  } catch (e) {
    box.append(errorBox(e));
  }
  return el("section", { class: "card" }, el("h3", {}, title), box);
}

function errorBox(e) {
  return el("div", { class: "error", role: "alert" }, e.message || String(e));
}

function fmtTime(t) {
  if (t === null || t === undefined) return "—";
  return new Date(t * 1000).toISOString().replace(".000Z", "Z");
}

function fmtAge(s) {
  if (s === null || s === undefined) return "—";
  if (s < 120) return s.toFixed(1) + " s";
  if (s < 7200) return (s / 60).toFixed(1) + " min";
  if (s < 172800) return (s / 3600).toFixed(1) + " h";
  return (s / 86400).toFixed(1) + " d";
}

function fmtTtl(s) { return s ? fmtAge(s) + " (" + s + " s)" : "none"; }

function facts(attrs, pairs) {
  if (pairs === undefined) { pairs = attrs; attrs = {}; }
  return el("dl", Object.assign({ class: "facts" }, attrs),
    pairs.map(([k, v, attrs]) => [el("dt", {}, k), el("dd", attrs || {}, v)]));
}

function table(head, rows, attrs) {
  return el("table", attrs || {},
    el("thead", {}, el("tr", {}, head.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows));
}

// -- login and navigation ------------------------------------------------------------------

function showLogin(message) {
  const app = document.getElementById("app");
  const input = el("input", { type: "password", id: "api-key", autocomplete: "off",
    placeholder: "fsk_..." });
  const form = el("form", { class: "login card", id: "login", onsubmit: (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(KEY_ITEM, input.value.trim());
    start();
  } },
  el("h2", {}, "API key"),
  el("p", {}, "This console reads with an API key: it sees what the key may read. The key is ",
    "kept in this browser tab only (session storage) and sent as the bearer header."),
  message ? errorBox({ message }) : null,
  input, el("button", { type: "submit", id: "sign-in" }, "Open the console"));
  app.replaceChildren(form);
  document.getElementById("nav").replaceChildren();
  document.getElementById("who").replaceChildren();
  input.focus();
}

function renderNav() {
  const pages = [["registry", "Registry"], ["quality", "Quality"], ["try", "Try it"]];
  if (who.role === "router") pages.push(["cluster", "Cluster"]);
  if (who.admin) pages.push(["admin", "Admin"]);
  const current = (location.hash.split("/")[1] || "registry");
  document.getElementById("nav").replaceChildren(...pages.map(([id, name]) =>
    el("a", { href: "#/" + id, id: "nav-" + id, class: current === id ? "active" : null }, name)));
  document.getElementById("role").textContent = who.role + " · " + who.project;
  const signOut = el("button", { class: "secondary", id: "sign-out", onclick: () => {
    sessionStorage.removeItem(KEY_ITEM); who = null; showLogin();
  } }, "Sign out");
  document.getElementById("who").replaceChildren(
    who.key ? "key " + who.key.name + (who.key.admin ? " (admin)" : "") : "no auth",
    who.auth ? signOut : "");
}

async function start() {
  // `make run` prints the console's URL with the demo key in the fragment (never sent to the
  // server): keep it for this tab and take it out of the address bar and the history
  if (location.hash.startsWith("#key=")) {
    sessionStorage.setItem(KEY_ITEM, decodeURIComponent(location.hash.slice(5)));
    history.replaceState(null, "", location.pathname + "#/registry");
  }
  if (AUTH && !key()) { showLogin(); return; }
  try {
    who = await getJson("/ui/api/whoami");
  } catch (e) {
    if (e.status === 401) { showLogin(e.message); return; }
    document.getElementById("app").replaceChildren(errorBox(e));
    return;
  }
  route();
}

const PAGES = {
  registry: pageRegistry, view: pageView, service: pageService, quality: pageQuality,
  try: pageTry, cluster: pageCluster, admin: pageAdmin,
};

async function route() {
  if (!who) return;
  if (AUTH && !key()) { who = null; showLogin(); return; }
  if (refreshTimer) { clearInterval(refreshTimer); refreshTimer = null; }
  renderNav();
  const parts = location.hash.replace(/^#\//, "").split("/");
  const page = PAGES[parts[0]] || pageRegistry;
  const app = document.getElementById("app");
  try {
    const content = await page(parts.slice(1).map(decodeURIComponent));
    app.replaceChildren(content);
    app.dataset.page = parts[0] || "registry";
  } catch (e) {
    if (e.status === 401) { showLogin(e.message); return; }
    app.replaceChildren(errorBox(e));
  }
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", start);

// -- registry ------------------------------------------------------------------------------

function sources(v) {
  const out = [];
  if (v.batch_source) out.push("batch: " + v.batch_source.type);
  if (v.stream_source) out.push("stream: kafka " + v.stream_source.topic);
  if (v.push_source) out.push("push: " + v.push_source);
  return out.join(", ") || "—";
}

async function pageRegistry() {
  const reg = await getJson("/ui/api/registry");
  const search = el("input", { type: "search", id: "search", placeholder:
    "search views, features, services, entities" });
  const rows = [];
  const viewRows = reg.feature_views.map((v) => {
    const text = [v.name, v.description, ...v.features.map((f) => f.name + " " + f.description)]
      .join(" ").toLowerCase();
    const tr = el("tr", { "data-view": v.name },
      el("td", {}, el("a", { href: "#/view/" + encodeURIComponent(v.name) }, v.name)),
      el("td", {}, v.entities.join(", ")),
      el("td", { class: "num" }, v.features.length),
      el("td", {}, fmtTtl(v.ttl_seconds)),
      el("td", {}, sources(v)),
      el("td", { class: "muted" }, v.description));
    rows.push([tr, text]);
    return tr;
  });
  const serviceRows = reg.feature_services.map((s) => {
    const tr = el("tr", { "data-service": s.name },
      el("td", {}, el("a", { href: "#/service/" + encodeURIComponent(s.name) }, s.name)),
      el("td", { class: "num" }, s.features.length),
      el("td", {}, s.views.join(", ")),
      el("td", { class: "muted" }, s.description));
    rows.push([tr, (s.name + " " + s.description + " " + s.features.join(" ")).toLowerCase()]);
    return tr;
  });
  const entityRows = reg.entities.map((e) => {
    const tr = el("tr", { "data-entity": e.name }, el("td", {}, e.name),
      el("td", {}, e.join_keys.map((k) => k.name + " (" + k.dtype + ")").join(", ")),
      el("td", { class: "muted" }, e.description));
    rows.push([tr, (e.name + " " + e.description).toLowerCase()]);
    return tr;
  });
  const odfvRows = reg.on_demand_views.map((v) => {
    const inputs = (v.sources || []).concat(
      (v.request_fields || []).map((f) => "request: " + f.name + " (" + f.dtype + ")"));
    const tr = el("tr", { "data-on-demand-view": v.name }, el("td", {}, v.name),
      el("td", {}, (v.kind || "") + (v.mode ? ", " + v.mode : "")),
      el("td", {}, inputs.join(", ")),
      el("td", {}, (v.features || []).map((f) => f.name + " (" + f.dtype + ")").join(", ")),
      el("td", { class: "muted" }, v.description || ""));
    rows.push([tr, JSON.stringify(v).toLowerCase()]);
    return tr;
  });
  search.addEventListener("input", () => {
    const q = search.value.trim().toLowerCase();
    for (const [tr, text] of rows) tr.hidden = q !== "" && !text.includes(q);
  });
  return el("div", {},
    el("h2", {}, "Registry of project " + reg.project),
    el("div", { class: "row" }, search),
    el("section", { class: "card" }, el("h3", {}, "Feature views"),
      table(["name", "entities", "features", "TTL", "sources", "description"], viewRows,
        { id: "views" })),
    el("section", { class: "card" }, el("h3", {}, "Feature services"),
      serviceRows.length ? table(["name", "features", "views", "description"], serviceRows,
        { id: "services" }) : el("p", { class: "muted" }, "none this key may read")),
    el("section", { class: "card" }, el("h3", {}, "On-demand feature views"),
      odfvRows.length ? table(["name", "kind", "inputs", "features", "description"], odfvRows,
        { id: "on-demand-views" }) : el("p", { class: "muted" }, "none")),
    el("section", { class: "card" }, el("h3", {}, "Entities"),
      table(["name", "join keys", "description"], entityRows, { id: "entities" })));
}

async function pageService(args) {
  const reg = await getJson("/ui/api/registry");
  const s = reg.feature_services.find((x) => x.name === args[0]);
  if (!s) throw new ApiError(403, "this API key may not read feature service '" + args[0] + "'");
  return el("div", {}, el("h2", {}, "Feature service " + s.name),
    s.description ? el("p", {}, s.description) : null,
    el("section", { class: "card" },
      el("div", { class: "row" }, el("a", { href: "#/try/service/" + encodeURIComponent(s.name) },
        "Try it with this service")),
      table(["feature"], s.features.map((f) => el("tr", {}, el("td", {}, el("code", {}, f)))))));
}

function freshnessCard(f) {
  const rows = [
    ["newest event time served", fmtTime(f.newest_event_time), { id: "newest-event-time" }],
    ["age of that row", fmtAge(f.age_seconds), { id: "data-age" }],
    ["TTL", fmtTtl(f.ttl_seconds)],
    ["state", f.state, { id: "freshness-state", class: f.state === "older than the TTL" ? "bad" :
      f.state === "no value served yet" ? "warn" : "ok" }],
  ];
  const served = Object.entries(f.values_served).map(([k, n]) =>
    el("span", { class: "status-" + k }, k + " " + n + "  "));
  rows.push(["values served since start", el("span", { id: "values-served" }, served)]);
  const parts = [el("h3", {}, "Freshness"), facts(rows)];
  if (f.batch) {
    const b = f.batch;
    parts.push(el("h3", {}, "Last batch sync"), facts([
      ["watermark (event time)", fmtTime(b.watermark)],
      ["Delta version", b.delta_version === undefined ? "—" : b.delta_version],
      ["last job by this server", fmtTime(b.last_success)],
      ["rows written", b.applied === undefined ? "—" : b.applied],
      ["rows skipped as older", b.skipped_older === undefined ? "—" : b.skipped_older],
    ]));
  }
  if (f.kafka) {
    const k = f.kafka;
    const lag = Object.entries(k.lag || {});
    parts.push(el("h3", {}, "Kafka (topic " + k.topic + ")"), facts({ id: "kafka" }, [
      ["seconds since broker contact", k.seconds_since_broker_contact === null ||
        k.seconds_since_broker_contact === undefined ? "—" :
        k.seconds_since_broker_contact.toFixed(1)],
      ["rows written", k.applied], ["rows skipped as older", k.skipped_older],
      ["errors / dead-lettered", k.errors + " / " + k.dead_lettered],
      ["lag per partition", lag.length ? lag.map(([p, n]) => "p" + p + ": " + n).join(", ") :
        "unknown yet"],
    ]));
  }
  return el("section", { class: "card", id: "freshness" }, parts,
    el("p", { class: "muted" }, "as of " + fmtTime(f.now)));
}

async function pageView(args) {
  const name = args[0];
  const data = await getJson("/ui/api/views/" + encodeURIComponent(name));
  const v = data.view;
  const features = v.features.map((f) => el("tr", {},
    el("td", {}, el("code", {}, f.name)),
    el("td", {}, f.dtype + (f.dim ? "[" + f.dim + "]" : "")),
    el("td", { class: "muted" }, f.description)));
  const live = el("div", { id: "live" });
  async function refresh() {
    const fresh = await getJson("/ui/api/views/" + encodeURIComponent(name));
    const parts = [];
    if (fresh.freshness) parts.push(freshnessCard(fresh.freshness));
    else parts.push(el("section", { class: "card" }, el("p", { class: "muted" },
      "A router holds no rows: each node's console shows this view's freshness.")));
    if (who.role === "node") {
      parts.push(await chart("/ui/api/charts/quality/" + encodeURIComponent(name) + ".svg",
        "Answer quality over the last minutes"));
    }
    live.replaceChildren(...parts);
  }
  await refresh();
  refreshTimer = setInterval(() => { refresh().catch(() => {}); }, who.sample_seconds * 1000);
  const src = [];
  if (v.batch_source) src.push(["batch source", v.batch_source.type + " " + v.batch_source.path +
    " (time: " + v.batch_source.timestamp_field + ")"]);
  if (v.stream_source) src.push(["stream source", "kafka topic " + v.stream_source.topic + " at " +
    v.stream_source.bootstrap_servers + " (" + v.stream_source.format + ")"]);
  if (v.push_source) src.push(["push source", v.push_source]);
  return el("div", {},
    el("h2", {}, "Feature view " + v.name),
    v.description ? el("p", {}, v.description) : null,
    el("div", { class: "row" },
      el("button", { id: "refresh", class: "secondary", onclick: () => refresh() }, "Refresh"),
      el("a", { href: "#/try/view/" + encodeURIComponent(v.name) }, "Try it with this view")),
    live,
    el("section", { class: "card" }, el("h3", {}, "Definition"), facts([
      ["entities", v.entities.join(", ")],
      ["join keys", v.join_keys.map((k) => k.name + " (" + k.dtype + ")").join(", ")],
      ["TTL", fmtTtl(v.ttl_seconds)], ["online", v.online ? "yes" : "no"],
      ...src,
      ["feature services", data.services.join(", ") || "—"],
    ])),
    el("section", { class: "card" }, el("h3", {}, "Features (" + v.features.length + ")"),
      table(["name", "type", "description"], features, { id: "features" })));
}

// -- quality -------------------------------------------------------------------------------

async function pageQuality() {
  const reg = await getJson("/ui/api/registry");
  const parts = [el("h2", {}, "Requests and answer quality")];
  parts.push(el("p", { class: "muted" }, "From this process's own history: one sample every " +
    who.sample_seconds + " s, the last 15 minutes, kept in memory (a restart starts over). ",
    who.prometheus_url ? el("a", { href: who.prometheus_url, id: "prometheus-link",
      rel: "noopener" }, "Longer history in Prometheus") : ""));
  parts.push(el("div", { class: "grid2" },
    await chart("/ui/api/charts/requests.svg", "Request rate per API"),
    await chart("/ui/api/charts/latency.svg", "Latency per API")));
  if (who.role === "node") {
    for (const v of reg.feature_views) {
      parts.push(await chart("/ui/api/charts/quality/" + encodeURIComponent(v.name) + ".svg",
        "Answer quality of " + v.name));
    }
  } else {
    parts.push(el("p", { class: "muted" },
      "Answer quality is counted where values are read: open a node's console."));
  }
  return el("div", {}, parts);
}

// -- try it --------------------------------------------------------------------------------

function parseValues(text, dtype) {
  return text.split(",").map((s) => s.trim()).filter((s) => s !== "").map((s) =>
    (dtype === "int32" || dtype === "int64") && /^-?\d+$/.test(s) ? Number(s) : s);
}

function cellText(v) {
  if (v === null || v === undefined) return "null";
  if (Array.isArray(v)) return "[" + v.map(cellText).join(", ") + "]";
  return String(v);
}

function resultTable(answer) {
  const names = answer.metadata.feature_names;
  const cols = answer.results;
  const n = cols.length ? cols[0].values.length : 0;
  const rows = [];
  for (let i = 0; i < n; i++) {
    rows.push(el("tr", {}, cols.map((c, j) => {
      const status = c.statuses ? c.statuses[i] : "PRESENT";
      return el("td", { class: "status-" + status, title: status,
        "data-feature": names[j] }, cellText(c.values[i]));
    })));
  }
  return table(names, rows, { id: "try-result" });
}

async function pageTry(args) {
  const reg = await getJson("/ui/api/registry");
  const views = Object.fromEntries(reg.feature_views.map((v) => [v.name, v]));
  const service = el("select", { id: "try-service" },
    el("option", { value: "" }, "— features listed below —"),
    reg.feature_services.map((s) => el("option", { value: s.name }, s.name)));
  const first = reg.feature_views[0];
  let initial = first ? first.features.slice(0, 3).map((f) => first.name + ":" + f.name) : [];
  if (args[0] === "service") service.value = args[1];
  if (args[0] === "view" && views[args[1]]) {
    initial = views[args[1]].features.slice(0, 5).map((f) => args[1] + ":" + f.name);
  }
  const features = el("textarea", { id: "try-features", spellcheck: "false" }, initial.join("\n"));
  const keysBox = el("div", { id: "try-keys" });
  const out = el("div", { id: "try-out" });
  function neededKeys() {
    let names;
    if (service.value) {
      const s = reg.feature_services.find((x) => x.name === service.value);
      names = s ? s.views : [];
    } else {
      names = features.value.split(/\s+/).filter(Boolean).map((r) => r.split(":")[0]);
    }
    const keys = new Map();
    for (const n of names) for (const k of (views[n] ? views[n].join_keys : [])) keys.set(k.name, k);
    return [...keys.values()];
  }
  const keyInputs = new Map();
  function renderKeys() {
    keysBox.replaceChildren(...neededKeys().map((k) => {
      let input = keyInputs.get(k.name);
      if (!input) {
        input = el("input", { type: "text", id: "try-key-" + k.name, "data-dtype": k.dtype,
          value: k.dtype.startsWith("int") ? "1, 2, 3" : "" });
        keyInputs.set(k.name, input);
      }
      return el("div", { class: "row" }, el("label", { for: input.id },
        k.name + " (" + k.dtype + ", comma-separated)"), input);
    }));
  }
  service.addEventListener("change", () => {
    features.disabled = service.value !== ""; renderKeys();
  });
  features.addEventListener("change", renderKeys);
  features.disabled = service.value !== "";
  renderKeys();
  async function run() {
    const request = {};
    if (service.value) request.feature_service = service.value;
    else request.features = features.value.split(/\s+/).filter(Boolean);
    request.entities = {};
    for (const k of neededKeys()) {
      request.entities[k.name] = parseValues(keyInputs.get(k.name).value, k.dtype);
    }
    out.replaceChildren(el("p", { class: "muted" }, "asking ..."));
    try {
      const [answer, code] = await Promise.all([
        postJson("/get-online-features", request), postJson("/ui/api/snippets", request)]);
      out.replaceChildren(
        el("section", { class: "card" }, el("h3", {}, "Answer"), resultTable(answer)),
        el("section", { class: "card" }, el("h3", {}, "The same call"),
          el("h4", {}, "curl (Feast HTTP API)"), el("pre", { id: "snippet-curl" }, code.curl),
          el("h4", {}, "Python client (gRPC)"), el("pre", { id: "snippet-python" }, code.python),
          el("h4", {}, "Feast SDK"), el("pre", { id: "snippet-feast" }, code.feast)));
    } catch (e) {
      out.replaceChildren(errorBox(e));
    }
  }
  return el("div", {}, el("h2", {}, "Try a request"),
    el("section", { class: "card" },
      el("div", { class: "row" }, el("label", { for: "try-service" }, "feature service"), service),
      el("label", { for: "try-features" }, "or features, one 'view:feature' per line"), features,
      keysBox,
      el("div", { class: "row" }, el("button", { id: "try-run", onclick: run }, "Get features"))),
    out);
}

// -- cluster (router) ----------------------------------------------------------------------

async function pageCluster() {
  const [c, reg] = await Promise.all([getJson("/ui/api/cluster"), getJson("/ui/api/registry")]);
  const shards = c.shards.map((s) => el("section", { class: "card", "data-shard": s.shard },
    el("h3", {}, "Shard " + s.shard),
    table(["replica", "HTTP", "router's health check", "node says", "Kafka lag per view"],
      s.replicas.map((r) => el("tr", { "data-replica": r.endpoint },
        el("td", {}, el("code", {}, r.endpoint)), el("td", {}, r.http || "—"),
        el("td", { class: r.ready ? "ok" : "bad", "data-ready": r.ready ? "yes" : "no" },
          r.ready ? "ready" : "not ready"),
        el("td", { class: r.node && r.node.ready ? "ok" : "bad" },
          r.node ? (r.node.ready ? "ready" : "not ready") + ", v" + r.node.version :
            "unreachable: " + r.unreachable),
        el("td", {}, r.node ? Object.entries(r.node.loader_lag).map(([v, n]) =>
          v + ": " + (n === null ? "unknown" : n)).join(", ") || "—" : "—"))))));
  const view = el("select", { id: "owner-view" },
    reg.feature_views.map((v) => el("option", { value: v.name }, v.name)));
  const keyText = el("input", { type: "text", id: "owner-key", placeholder:
    "join key values, comma-separated" });
  const answer = el("div", { id: "owner-answer" });
  async function lookup() {
    const q = new URLSearchParams({ view: view.value });
    for (const k of keyText.value.split(",").map((s) => s.trim())) q.append("key", k);
    try {
      const o = await getJson("/ui/api/cluster/owner?" + q.toString());
      answer.replaceChildren(o.sharded ?
        "partition " + o.partition + " → shard " + o.shard + " (" + o.replicas.join(", ") + ")" :
        "view " + o.view + " is not sharded: every shard holds it");
    } catch (e) { answer.replaceChildren(errorBox(e)); }
  }
  return el("div", {}, el("h2", {}, "Cluster: " + c.shard_count + " shards, " +
      c.topic_partitions + " topic partitions"),
    el("div", { class: "row" }, el("button", { id: "refresh", class: "secondary",
      onclick: () => route() }, "Refresh"), el("span", { class: "muted" },
      "checked " + fmtTime(c.checked_at))),
    shards,
    el("section", { class: "card" }, el("h3", {}, "Which shard owns an entity"),
      el("div", { class: "row" }, view, keyText,
        el("button", { id: "owner-run", onclick: lookup }, "Look up")), answer));
}

// -- admin ---------------------------------------------------------------------------------

async function pageAdmin() {
  if (!who.admin) {
    return el("div", { class: "error", id: "admin-refused", role: "alert" },
      "The admin panel needs an admin key; this key (" + (who.key ? who.key.name : "?") +
      ") is not one.");
  }
  const k = await getJson("/ui/api/admin/keys");
  const keys = k.keys.map((x) => el("tr", { "data-key": x.name },
    el("td", {}, x.name), el("td", {}, el("code", {}, x.key_id)),
    el("td", {}, x.read.join(", ") || "—"), el("td", {}, x.write.join(", ") || "—"),
    el("td", {}, x.admin ? "yes" : "no"), el("td", {}, x.state),
    el("td", {}, x.expires_at ? fmtTime(x.expires_at) : "never"),
    el("td", {}, x.last_used ? fmtTime(x.last_used) : "not since start")));
  const diff = el("div", { id: "reload-diff" });
  async function preview() {
    try {
      const p = await getJson("/ui/api/admin/reload-preview");
      const apply = el("button", { id: "reload-apply", onclick: async () => {
        try {
          const r = await postJson(p.apply_path, {});
          diff.replaceChildren(el("p", { class: "ok", id: "reload-done" }, "applied"),
            el("pre", {}, JSON.stringify(r, null, 2)));
        } catch (e) { diff.replaceChildren(errorBox(e)); }
      } }, "Apply");
      diff.replaceChildren(el("p", {}, "Reloading " + p.config + " would change:"),
        p.changes.length ? el("ul", { id: "reload-changes" }, p.changes.map((c) =>
          el("li", {}, el("code", {}, c)))) : el("p", { id: "reload-changes" }, "nothing"),
        p.changes.length ? apply : null);
    } catch (e) { diff.replaceChildren(errorBox(e)); }
  }
  return el("div", {}, el("h2", {}, "Admin"),
    el("section", { class: "card" }, el("h3", {}, "API keys"),
      k.auth ? el("p", { class: "muted" }, "From " + k.keys_file +
        "; secrets are never stored or shown. Last use as seen by this process, to within " +
        k.last_use_resolution_seconds + " s.") : el("p", {}, "This process runs without keys."),
      table(["name", "id", "read", "write", "admin", "state", "expires", "last use"], keys,
        { id: "keys" })),
    el("section", { class: "card" }, el("h3", {}, "Registry reload"),
      el("button", { id: "reload-preview", onclick: preview }, "Show what a reload would change"),
      diff));
}
