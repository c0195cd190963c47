// Ferry console: upstreams, targets and their cluster-wide health, data planes.
//
// Plain browser JavaScript, no build step and no dependency. It only calls the
// control plane's Admin API on the same origin (docs/admin-api.md):
//   GET  /upstreams (following `next`), GET /upstreams/{id}/health (idem),
//   GET  /clustering/data-planes,
//   POST /upstreams/{id}/targets, DELETE /upstreams/{id}/targets/{id},
//   PUT  /upstreams/{id}/targets/{id}/healthy | /unhealthy,
//   GET  /upstreams/{id}/health/events (one page, only while its history is open).
// Every call carries `Ferry-Admin-Token` when the operator gave a token; a 401
// asks for one (kept in sessionStorage) and retries, a 403 says the token is
// read-only. Everything from the API is rendered with textContent / DOM
// building, never as HTML: names and tags come from users.
"use strict";

(() => {
  const POLL_MS = 2000;
  const TOKEN_KEY = "ferry-admin-token";
  const TOKEN_HEADER = "Ferry-Admin-Token";
  const PAGE_SIZE = 1000;
  const MAX_PARALLEL = 6;
  const MAX_PAGES = 1000;
  const HISTORY_SIZE = 200; // newest health events shown per upstream
  const READ_ONLY_TEXT = "This token is read-only: it can look but cannot change anything.";

  // ------------------------------------------------------------------ helpers

  const $ = (id) => document.getElementById(id);

  /** An element with attributes, classes and children (strings become text nodes). */
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "className") node.className = value;
      else if (key === "text") node.textContent = String(value);
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key === "onclick") node.addEventListener("click", value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === undefined || child === null || child === false) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function setText(node, text) {
    const value = String(text);
    if (node.textContent !== value) node.textContent = value;
  }

  function setAttr(node, name, value) {
    if (value === null || value === undefined) {
      if (node.hasAttribute(name)) node.removeAttribute(name);
    } else if (node.getAttribute(name) !== String(value)) {
      node.setAttribute(name, String(value));
    }
  }

  function show(node, visible) {
    node.hidden = !visible;
  }

  const enc = encodeURIComponent;

  function clockTime(epochSeconds) {
    if (typeof epochSeconds !== "number" || !isFinite(epochSeconds) || epochSeconds <= 0) return "never";
    return new Date(epochSeconds * 1000).toLocaleTimeString();
  }

  function isoTime(epochSeconds) {
    if (typeof epochSeconds !== "number" || !isFinite(epochSeconds) || epochSeconds <= 0) return undefined;
    return new Date(epochSeconds * 1000).toISOString();
  }

  function ago(epochSeconds) {
    if (typeof epochSeconds !== "number" || !isFinite(epochSeconds) || epochSeconds <= 0) return "never";
    const seconds = Math.max(0, Math.round(Date.now() / 1000 - epochSeconds));
    if (seconds < 60) return `${seconds} s ago`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
    return `${Math.floor(seconds / 86400)} d ago`;
  }

  /** A health or sync-status badge; the class is derived from a known word only. */
  const KNOWN_STATES = new Set([
    "HEALTHY", "UNHEALTHY", "MIXED", "HEALTHCHECKS_OFF", "DNS_ERROR",
    "SYNCED", "STALE", "NACKED", "UNKNOWN", "VERSION_INCOMPATIBLE",
  ]);

  function badgeClass(state) {
    return "badge state-" + (KNOWN_STATES.has(state) ? state.toLowerCase() : "other");
  }

  function badge(state, title) {
    const text = state === undefined || state === null ? "?" : String(state);
    return el("span", { className: badgeClass(text), text, title, dataset: { state: text } });
  }

  // ------------------------------------------------------------------ Admin API

  class ApiError extends Error {
    constructor(status, method, path, body) {
      const message = body && typeof body.message === "string" ? body.message : `HTTP ${status}`;
      super(message);
      this.status = status;
      this.method = method;
      this.path = path;
      this.body = body;
    }
  }

  let token = null;
  try {
    token = window.sessionStorage.getItem(TOKEN_KEY);
  } catch (_) {
    token = null; // storage disabled: keep the token in memory only
  }

  function storeToken(value) {
    token = value;
    try {
      if (value === null) window.sessionStorage.removeItem(TOKEN_KEY);
      else window.sessionStorage.setItem(TOKEN_KEY, value);
    } catch (_) {
      // storage disabled: the token lives as long as the page
    }
    show($("forget-token"), token !== null);
  }

  /** One Admin API call; resolves to the parsed JSON body (null when empty), rejects with ApiError. */
  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (token !== null) headers[TOKEN_HEADER] = token;
    const init = { method, headers, cache: "no-store", credentials: "same-origin", redirect: "error" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      throw new ApiError(0, method, path, {
        message: `cannot reach the control plane (${err && err.message ? err.message : err})`,
      });
    }
    const text = await response.text();
    let payload = null;
    if (text) {
      try {
        payload = JSON.parse(text);
      } catch (_) {
        payload = { message: text.slice(0, 500) };
      }
    }
    if (!response.ok) throw new ApiError(response.status, method, path, payload);
    return payload;
  }

  /** Every item of a paged list, following `next` (same-origin paths only: the token goes along). */
  async function listAll(path, onFirst) {
    const items = [];
    let next = path;
    for (let page = 0; next && page < MAX_PAGES; page++) {
      const body = await api("GET", next);
      if (page === 0 && onFirst) onFirst(body);
      if (body && Array.isArray(body.data)) items.push(...body.data);
      const link = body ? body.next : null;
      next = typeof link === "string" && link.startsWith("/") && !link.startsWith("//") ? link : null;
    }
    return items;
  }

  /** `fn` over `items`, at most `limit` at once, results in order. */
  async function mapLimit(items, limit, fn) {
    const results = new Array(items.length);
    let index = 0;
    async function worker() {
      while (index < items.length) {
        const mine = index++;
        results[mine] = await fn(items[mine]);
      }
    }
    await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
    return results;
  }

  /** Kong's `fields` ({"a": {"b": "msg"}, "paths": [null, "msg"]}) as "a.b: msg" lines. */
  function flattenFields(value, prefix, out) {
    if (value === null || value === undefined) return out;
    if (Array.isArray(value)) {
      value.forEach((item, i) => flattenFields(item, prefix ? `${prefix}.${i + 1}` : String(i + 1), out));
    } else if (typeof value === "object") {
      for (const [key, item] of Object.entries(value)) flattenFields(item, prefix ? `${prefix}.${key}` : key, out);
    } else {
      out.push(prefix ? `${prefix}: ${value}` : String(value));
    }
    return out;
  }

  // ------------------------------------------------------------------ messages

  // The notice stays until the next action: nothing moves on the page by itself
  // under the operator's pointer.
  function showNotice(text) {
    const notice = $("notice");
    setText(notice, text);
    show(notice, true);
  }

  function clearNotice() {
    show($("notice"), false);
  }

  function showError(text, err) {
    clearNotice();
    setText($("error-text"), text);
    const detail = [];
    if (err instanceof ApiError) {
      const name = err.body && typeof err.body.name === "string" ? ` (${err.body.name})` : "";
      detail.push(err.status ? `${err.method} ${err.path} answered ${err.status}${name}` : `${err.method} ${err.path}`);
    }
    setText($("error-detail"), detail.join(" "));
    const list = $("error-fields");
    list.replaceChildren();
    const fields = err instanceof ApiError && err.body ? flattenFields(err.body.fields, "", []) : [];
    for (const line of fields) list.append(el("li", { text: line }));
    show(list, fields.length > 0);
    show($("error"), true);
  }

  function clearError() {
    show($("error"), false);
  }

  function describe(err) {
    return err instanceof Error ? err.message : String(err);
  }

  function setLive(text, state) {
    const live = $("live");
    setText(live, text);
    live.dataset.state = state;
  }

  // ------------------------------------------------------------------ token

  let awaitingToken = false;
  let pendingRetry = null;

  /** A 401: ask for a token, then run `retry` (a write that was refused) and refresh. */
  function askForToken(err, retry) {
    const refused = token !== null;
    if (refused) storeToken(null); // it is not valid (any more): stop sending it
    awaitingToken = true;
    if (retry) pendingRetry = retry;
    stopPolling();
    const reason = err instanceof ApiError ? err.message : describe(err);
    setText(
      $("token-message"),
      refused
        ? `The control plane refused the token: ${reason}`
        : `This control plane requires an admin token: ${reason}`,
    );
    $("token-message").dataset.refused = refused ? "true" : "false";
    show($("main"), false);
    show($("token-panel"), true);
    setLive("Waiting for an admin token", "token");
    const input = $("token-input");
    input.value = "";
    input.focus();
  }

  async function submitToken(event) {
    event.preventDefault();
    const value = $("token-input").value.trim();
    if (!/^[\x20-\x7e]+$/.test(value)) {
      setText($("token-message"), "A token is printable ASCII text.");
      return;
    }
    storeToken(value);
    awaitingToken = false;
    show($("token-panel"), false);
    clearError();
    const retry = pendingRetry;
    pendingRetry = null;
    if (retry) await retry();
    refresh();
  }

  function forgetToken() {
    storeToken(null);
    pendingRetry = null;
    clearError();
    clearNotice();
    refresh();
  }

  /** The error of a user action: 401 asks for a token (then retries), 403 is read-only. */
  function actionFailed(err, retry) {
    if (err instanceof ApiError && err.status === 401) {
      askForToken(err, retry);
    } else if (err instanceof ApiError && err.status === 403) {
      showError(READ_ONLY_TEXT, err);
    } else {
      showError(describe(err), err);
    }
  }

  /** Run a write; on success say so and refresh at once. */
  async function runAction(call, success, onSuccess) {
    const attempt = async () => {
      try {
        await call();
      } catch (err) {
        actionFailed(err, attempt);
        return false;
      }
      clearError();
      showNotice(success);
      if (onSuccess) onSuccess();
      refresh();
      return true;
    };
    return attempt();
  }

  // ------------------------------------------------------------------ refresh loop

  let timer = null;
  let refreshing = false;
  let refreshAgain = false;

  function stopPolling() {
    clearTimeout(timer);
    timer = null;
  }

  function schedule() {
    stopPolling();
    if (awaitingToken) return;
    if (document.visibilityState === "hidden") {
      setLive("Paused while the tab is hidden", "paused");
      return;
    }
    timer = setTimeout(refresh, POLL_MS);
  }

  /** The upstream's targets with their cluster-wide health and its panic block
   *  (`{threshold, data_planes}`, only with a panic_threshold), or null when it is gone. */
  async function healthOf(upstream) {
    try {
      let panic = null;
      const targets = await listAll(`/upstreams/${enc(upstream.id)}/health?size=${PAGE_SIZE}`, (body) => {
        if (body && body.panic && Array.isArray(body.panic.data_planes)) panic = body.panic;
      });
      return { targets, panic };
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) return null; // deleted meanwhile
      throw err;
    }
  }

  /** The upstream's newest health events (newest first), or null when it is gone. */
  async function historyOf(upstream) {
    try {
      const body = await api("GET", `/upstreams/${enc(upstream.id)}/health/events?size=${HISTORY_SIZE}`);
      return body && Array.isArray(body.data) ? body.data : [];
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) return null; // deleted meanwhile
      throw err;
    }
  }

  async function refresh() {
    if (awaitingToken) return;
    if (refreshing) {
      refreshAgain = true;
      return;
    }
    refreshing = true;
    stopPolling();
    try {
      const [upstreams, dataPlanes] = await Promise.all([
        listAll(`/upstreams?size=${PAGE_SIZE}`),
        listAll("/clustering/data-planes"),
      ]);
      const healths = await mapLimit(upstreams, MAX_PARALLEL, healthOf);
      const present = upstreams
        .map((u, i) => ({ upstream: u, targets: healths[i] ? healths[i].targets : null, panic: healths[i] ? healths[i].panic : null }))
        .filter((x) => x.targets !== null);
      // Histories only of the cards whose "Health history" is open (cards of earlier refreshes).
      const opened = present.filter((x) => cards.has(x.upstream.id) && cards.get(x.upstream.id).history.open);
      const histories = await mapLimit(opened.map((x) => x.upstream), MAX_PARALLEL, historyOf);
      renderUpstreams(present);
      opened.forEach((x, i) => {
        const card = cards.get(x.upstream.id);
        if (card && histories[i] !== null) renderHistory(card, histories[i]);
      });
      renderDataPlanes(dataPlanes);
      show($("main"), true);
      setLive(`Live: updated ${new Date().toLocaleTimeString()}, every ${POLL_MS / 1000} s`, "live");
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) {
        askForToken(err, null);
      } else if (err instanceof ApiError && err.status === 403) {
        setLive(`Refresh refused: ${READ_ONLY_TEXT} (${err.message})`, "error");
      } else {
        const where = err instanceof ApiError ? ` (${err.method} ${err.path}${err.status ? " → " + err.status : ""})` : "";
        setLive(`Refresh failed, retrying: ${describe(err)}${where}`, "error");
      }
    } finally {
      refreshing = false;
      if (refreshAgain && !awaitingToken) {
        refreshAgain = false;
        refresh();
      } else {
        refreshAgain = false;
        schedule();
      }
    }
  }

  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "hidden") schedule();
    else refresh();
  });

  // ------------------------------------------------------------------ upstreams

  /** upstream id → {root, title, meta, tags, table, tbody, empty, rows: Map(target id → row)} */
  const cards = new Map();

  function renderUpstreams(items) {
    items.sort((a, b) => String(a.upstream.name).localeCompare(String(b.upstream.name)));
    const container = $("upstreams");
    const seen = new Set();
    items.forEach(({ upstream, targets, panic }, position) => {
      seen.add(upstream.id);
      let card = cards.get(upstream.id);
      if (!card) {
        card = createCard(upstream);
        cards.set(upstream.id, card);
      }
      updateCard(card, upstream, targets, panic);
      if (container.children[position] !== card.root) container.insertBefore(card.root, container.children[position] || null);
    });
    for (const [id, card] of cards) {
      if (!seen.has(id)) {
        card.root.remove();
        cards.delete(id);
      }
    }
    show($("upstreams-empty"), items.length === 0);
    renderUpstreamChoices(items.map((x) => x.upstream));
  }

  function createCard(upstream) {
    const title = el("span", { className: "upstream-name" });
    const meta = el("span", { className: "upstream-meta" });
    const tags = el("ul", { className: "tags" });
    const tbody = el("tbody");
    const empty = el("p", { className: "empty", text: "No targets." });
    const table = el(
      "table",
      { className: "grid targets" },
      el(
        "thead",
        {},
        el("tr", {}, el("th", { text: "Target" }), el("th", { text: "Weight" }), el("th", { text: "Health" }),
          el("th", { text: "Per data plane" }), el("th", { text: "Actions" })),
      ),
      tbody,
    );
    const historyBody = el("div", { className: "history-body" }, el("p", { className: "muted", text: "Loading…" }));
    const history = el("details", { className: "history" }, el("summary", { text: "Health history" }), historyBody);
    history.addEventListener("toggle", () => {
      if (history.open) refresh();
    });
    const panic = el("span", { className: "badge panic", hidden: true });
    const root = el("section", { className: "upstream" }, el("h3", {}, title, " ", meta, " ", panic), tags, table, empty, history);
    return { root, title, meta, panic, tags, table, tbody, empty, rows: new Map(), tagsKey: null, history, historyBody, historyKey: null };
  }

  /** Each target's timeline per data plane, from `events` (newest first, as the API lists them). */
  function renderHistory(card, events) {
    const key = JSON.stringify(events.map((e) => e.id));
    if (card.historyKey === key) return;
    card.historyKey = key;
    if (events.length === 0) {
      card.historyBody.replaceChildren(el("p", { className: "empty", text: "No health transition recorded yet." }));
      return;
    }
    const byTarget = new Map(); // target → Map(data plane id → {id, hostname, events})
    for (const event of events) {
      const target = String(event.target);
      const dp = event.data_plane || {};
      if (!byTarget.has(target)) byTarget.set(target, new Map());
      const dps = byTarget.get(target);
      const dpId = String(dp.id);
      if (!dps.has(dpId)) dps.set(dpId, { id: dpId, hostname: String(dp.hostname || dp.id), events: [] });
      dps.get(dpId).events.push(event);
    }
    const sections = [...byTarget.keys()].sort().map((target) => {
      const lanes = [...byTarget.get(target).values()].sort((a, b) => a.hostname.localeCompare(b.hostname)).map((dp) =>
        el("div", { className: "timeline-dp", dataset: { dp: dp.hostname, dpId: dp.id } },
          el("span", { className: "dp-name", text: dp.hostname, title: `data plane ${dp.id}` }),
          el("ol", { className: "events" }, ...dp.events.map((e) =>
            el("li", {
              className: "event",
              dataset: { from: e.from === null || e.from === undefined ? "" : String(e.from), to: String(e.to) },
              title: `recorded by the control plane at ${clockTime(e.recorded_at)}`,
            },
            el("time", { className: "when", text: clockTime(e.time), datetime: isoTime(e.time) }),
            " ",
            e.from === null || e.from === undefined ? el("span", { className: "muted from-none", text: "new" }) : badge(e.from),
            " → ",
            badge(e.to),
            e.address && e.address !== target ? el("code", { className: "address", text: ` ${e.address}` }) : null,
            e.reason ? el("span", { className: "reason", text: ` ${e.reason}` }) : null)))));
      return el("section", { className: "timeline", dataset: { target } }, el("h4", {}, el("code", { text: target })), ...lanes);
    });
    const note = el("p", { className: "hint", text: `The newest ${HISTORY_SIZE} transitions at most, newest first; ` +
      "the whole history is at GET /upstreams/{upstream}/health/events." });
    card.historyBody.replaceChildren(...sections, note);
  }

  function updateCard(card, upstream, targets, panic) {
    card.root.dataset.upstream = String(upstream.name);
    // Panic mode (healthchecks.panic_threshold): the data planes balancing over every
    // target, health ignored, because too little of the upstream's weight is healthy.
    const inPanic = panic ? panic.data_planes.map(String) : [];
    show(card.panic, inPanic.length > 0);
    if (inPanic.length > 0) {
      setText(card.panic, `panic on ${inPanic.length} data plane${inPanic.length === 1 ? "" : "s"}`);
      setAttr(card.panic, "title", `less than ${panic.threshold}% of the weight is healthy: ` +
        `balancing over all targets, health ignored (${inPanic.join(", ")})`);
    }
    card.root.dataset.panic = inPanic.join(" ");
    card.root.dataset.upstreamId = String(upstream.id);
    setText(card.title, upstream.name);
    setText(card.meta, `${upstream.algorithm || ""} · ${targets.length} target${targets.length === 1 ? "" : "s"}`);
    setAttr(card.meta, "title", `id ${upstream.id}`);
    const tagsKey = JSON.stringify(upstream.tags || []);
    if (tagsKey !== card.tagsKey) {
      card.tagsKey = tagsKey;
      card.tags.replaceChildren(...(upstream.tags || []).map((tag) => el("li", { className: "tag", text: tag })));
    }
    show(card.tags, (upstream.tags || []).length > 0);

    targets.sort((a, b) => String(a.target).localeCompare(String(b.target)));
    const seen = new Set();
    targets.forEach((target, position) => {
      seen.add(target.id);
      let row = card.rows.get(target.id);
      if (!row) {
        row = createRow(upstream, target);
        card.rows.set(target.id, row);
      }
      updateRow(row, target);
      if (card.tbody.children[position] !== row.root) card.tbody.insertBefore(row.root, card.tbody.children[position] || null);
    });
    for (const [id, row] of card.rows) {
      if (!seen.has(id)) {
        row.root.remove();
        card.rows.delete(id);
      }
    }
    show(card.empty, targets.length === 0);
    show(card.table, targets.length > 0);
  }

  function createRow(upstream, target) {
    const upstreamId = upstream.id;
    const upstreamName = String(upstream.name);
    const targetId = target.id;
    const name = String(target.target);
    const base = `/upstreams/${enc(upstreamId)}/targets/${enc(targetId)}`;

    const health = el("span", { className: "health" });
    const weights = el("span", { className: "weights" });
    const perDp = el("td", { className: "per-dp" });
    const weight = el("td", { className: "weight" });
    const buttons = el("span", { className: "buttons" });
    const confirm = el("span", { className: "confirm", hidden: true });
    const root = el(
      "tr",
      { dataset: { target: name, targetId: String(targetId) } },
      el("td", { className: "target" }, el("code", { text: name })),
      weight,
      el("td", { className: "health-cell" }, health, " ", weights),
      perDp,
      el("td", { className: "actions" }, buttons, confirm),
    );
    const row = { root, health, weights, perDp, weight, healthKey: null, dpKey: null };

    const setBusy = (busy) => {
      for (const button of root.querySelectorAll("button")) button.disabled = busy;
    };
    const act = (call, success) => async () => {
      setBusy(true);
      try {
        await runAction(call, success);
      } finally {
        setBusy(false);
      }
    };
    const mark = (state) =>
      act(
        () => api("PUT", `${base}/${state}`),
        `Marked ${name} ${state} on every data plane of ${upstreamName}; the view follows when they report it.`,
      );

    buttons.append(
      el("button", { type: "button", className: "mark-healthy", dataset: { action: "healthy" }, onclick: mark("healthy") },
        "Mark healthy"),
      " ",
      el("button", { type: "button", className: "mark-unhealthy", dataset: { action: "unhealthy" }, onclick: mark("unhealthy") },
        "Mark unhealthy"),
      " ",
      el("button", {
        type: "button", className: "danger", dataset: { action: "remove" },
        onclick: () => { show(buttons, false); show(confirm, true); },
      }, "Remove"),
    );
    confirm.append(
      el("span", { text: `Remove ${name}? ` }),
      el("button", {
        type: "button", className: "danger", dataset: { action: "confirm-remove" },
        onclick: act(() => api("DELETE", base), `Removed ${name} from ${upstreamName}.`),
      }, "Yes, remove"),
      " ",
      el("button", {
        type: "button", className: "secondary", dataset: { action: "cancel-remove" },
        onclick: () => { show(confirm, false); show(buttons, true); },
      }, "Cancel"),
    );
    return row;
  }

  function updateRow(row, target) {
    setText(row.weight, target.weight);
    const state = String(target.health);
    const healthKey = state;
    if (row.healthKey !== healthKey) {
      row.healthKey = healthKey;
      row.health.replaceChildren(badge(state));
      row.root.dataset.health = state;
    }
    const w = target.data && target.data.weight;
    setText(row.weights, w ? `${w.available}/${w.total} weight available` : "");

    const dps = Array.isArray(target.data_planes) ? target.data_planes : [];
    const dpKey = JSON.stringify(dps.map((d) => [d.id, d.hostname, d.health, d.reason, d.updated_at, d.addresses]));
    if (row.dpKey !== dpKey) {
      row.dpKey = dpKey;
      if (dps.length === 0) {
        row.perDp.replaceChildren(el("span", { className: "muted", text: "no data plane reports it" }));
      } else {
        const list = el("ul", { className: "dp-health" });
        for (const dp of dps) {
          const addresses = (Array.isArray(dp.addresses) ? dp.addresses : [])
            .map((a) => `${a.address} ${a.health}${a.reason ? " (" + a.reason + ")" : ""}`)
            .join("; ");
          const title = [`data plane ${dp.id}`, dp.reason ? `reason: ${dp.reason}` : "",
            `since ${clockTime(dp.updated_at)}`, addresses].filter(Boolean).join("\n");
          list.append(el("li", { dataset: { dp: String(dp.hostname), state: String(dp.health) }, title },
            el("span", { className: "dp-name", text: dp.hostname || dp.id }), " ", badge(dp.health),
            dp.reason ? el("span", { className: "reason", text: ` ${dp.reason}` }) : null));
        }
        row.perDp.replaceChildren(list);
      }
    }
  }

  function renderUpstreamChoices(upstreams) {
    const select = $("add-upstream");
    const key = JSON.stringify(upstreams.map((u) => [u.id, u.name]));
    if (select.dataset.key === key) return;
    select.dataset.key = key;
    const chosen = select.value;
    select.replaceChildren(...upstreams.map((u) => el("option", { value: u.id, text: u.name })));
    if (upstreams.some((u) => u.id === chosen)) select.value = chosen;
    $("add-submit").disabled = upstreams.length === 0;
  }

  // ------------------------------------------------------------------ data planes

  const dpRows = new Map();

  function renderDataPlanes(rows) {
    rows.sort((a, b) => String(a.hostname).localeCompare(String(b.hostname)) || String(a.id).localeCompare(String(b.id)));
    const body = $("data-planes-body");
    const seen = new Set();
    rows.forEach((dp, position) => {
      seen.add(dp.id);
      let row = dpRows.get(dp.id);
      if (!row) {
        const cells = {};
        for (const name of ["hostname", "ip", "version", "sync", "configVersion", "hash", "lastSeen", "labels"]) {
          cells[name] = el("td", { className: `dp-${name}` });
        }
        row = { root: el("tr", {}, ...Object.values(cells)), cells, syncKey: null };
        dpRows.set(dp.id, row);
      }
      const c = row.cells;
      row.root.dataset.dp = String(dp.hostname);
      setText(c.hostname, dp.hostname);
      setAttr(c.hostname, "title", `id ${dp.id}`);
      setText(c.ip, dp.ip || "");
      setText(c.version, dp.version || "");
      const syncKey = `${dp.sync_status}\u0000${dp.sync_error || ""}`;
      if (row.syncKey !== syncKey) {
        row.syncKey = syncKey;
        c.sync.replaceChildren(badge(dp.sync_status, dp.sync_error || undefined));
        if (dp.sync_error) c.sync.append(el("span", { className: "reason", text: ` ${dp.sync_error}` }));
      }
      setText(c.configVersion, dp.config_version === undefined ? "" : dp.config_version);
      const hash = String(dp.config_hash || "");
      setText(c.hash, hash ? hash.slice(0, 12) : "none yet");
      setAttr(c.hash, "title", hash || null);
      setText(c.lastSeen, ago(dp.last_seen));
      setAttr(c.lastSeen, "title", dp.last_seen ? new Date(dp.last_seen * 1000).toString() : null);
      const labels = dp.labels && typeof dp.labels === "object" ? Object.entries(dp.labels) : [];
      setText(c.labels, labels.map(([k, v]) => `${k}=${v}`).join(", "));
      if (body.children[position] !== row.root) body.insertBefore(row.root, body.children[position] || null);
    });
    for (const [id, row] of dpRows) {
      if (!seen.has(id)) {
        row.root.remove();
        dpRows.delete(id);
      }
    }
    show($("data-planes-empty"), rows.length === 0);
    show($("data-planes"), rows.length > 0);
  }

  // ------------------------------------------------------------------ add a target

  async function addTarget(event) {
    event.preventDefault();
    const upstreamId = $("add-upstream").value;
    const upstreamName = $("add-upstream").selectedOptions.length ? $("add-upstream").selectedOptions[0].textContent : upstreamId;
    const target = $("add-target").value.trim();
    const weightText = $("add-weight").value.trim();
    if (!upstreamId) {
      showError("Choose an upstream first.");
      return;
    }
    const body = { target };
    if (weightText !== "") {
      const weight = Number(weightText);
      if (!Number.isInteger(weight)) {
        showError(`The weight must be a whole number, not "${weightText}".`);
        return;
      }
      body.weight = weight;
    }
    const submit = $("add-submit");
    submit.disabled = true;
    try {
      await runAction(
        () => api("POST", `/upstreams/${enc(upstreamId)}/targets`, body),
        `Added ${target} to ${upstreamName}.`,
        () => { $("add-target").value = ""; },
      );
    } finally {
      submit.disabled = $("add-upstream").options.length === 0;
    }
  }

  // ------------------------------------------------------------------ start

  function start() {
    $("token-form").addEventListener("submit", submitToken);
    $("add-target-form").addEventListener("submit", addTarget);
    $("forget-token").addEventListener("click", forgetToken);
    $("error-dismiss").addEventListener("click", clearError);
    show($("forget-token"), token !== null);
    refresh();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
