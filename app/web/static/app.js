// eventrag's web page: plain JavaScript, no framework, no build step, no request to any other host.
// Everything the server returns is put into the page as text (textContent), never parsed as HTML.
"use strict";

const KEY_STORAGE = "eventrag.api_key";
const $ = (id) => document.getElementById(id);
const state = { key: sessionStorage.getItem(KEY_STORAGE), singleUser: false, documentsCursor: null, eventsCursor: null,
                healthTimer: null };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function headers(extra = {}) {
  const h = { Accept: "application/json", ...extra };
  if (state.key) h["X-API-Key"] = state.key;
  return h;
}

async function api(path, { method = "GET", body } = {}) {
  const init = { method, headers: headers(body !== undefined ? { "Content-Type": "application/json" } : {}) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const resp = await fetch(path, init);
  const data = await resp.json().catch(() => ({}));
  if (resp.status === 401 && !state.singleUser) showSignIn("Your API key was not accepted; sign in again.");
  if (!resp.ok) throw new ApiError(resp.status, data.detail || `HTTP ${resp.status}`);
  return data;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}

function docPath(fileId) { return `/documents/${encodeURIComponent(fileId)}`; }
function when(iso) { return iso ? new Date(iso).toLocaleString() : ""; }
function badge(status) { return el("span", { class: `badge s-${status}` }, status); }

// -- signing in ---------------------------------------------------------------------------------------
function showSignIn(message = "") {
  $("app").hidden = true;
  $("views").hidden = true;
  $("signin").hidden = false;
  $("signout").hidden = true;
  $("who").textContent = "";
  $("signin-error").textContent = message;
  $("api-key").focus();
}

async function start() {
  try {
    const me = await api("/me");
    state.singleUser = me.single_user && !state.key;
    $("signin").hidden = true;
    $("app").hidden = false;
    $("views").hidden = false;
    $("signout").hidden = state.singleUser;
    $("who").textContent = state.singleUser ? `Workspace ${me.workspace} (single-user mode, no key needed)`
                                            : `Workspace ${me.workspace}`;
    selectTab(location.hash.slice(1) || "ask", false);
  } catch (err) {
    if (err.status === 401) showSignIn(state.key ? "Your API key was not accepted." : "");
    else $("who").textContent = `The server did not answer: ${err.message}`;
  }
}

$("signin-form").addEventListener("submit", (e) => {
  e.preventDefault();
  state.key = $("api-key").value.trim();
  sessionStorage.setItem(KEY_STORAGE, state.key);
  $("api-key").value = "";
  start();
});

$("signout").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_STORAGE);
  state.key = null;
  showSignIn("Signed out.");
});

// -- tabs (WAI-ARIA tabs pattern: arrow keys move between tabs) ---------------------------------------
const TABS = ["ask", "documents", "events", "health"];

function selectTab(name, focus = true) {
  if (!TABS.includes(name)) name = "ask";
  for (const t of TABS) {
    const tab = $(`tab-${t}`);
    const on = t === name;
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;
    $(`view-${t}`).hidden = !on;
  }
  $(`tab-${name}`).scrollIntoView({ block: "nearest", inline: "nearest" });
  if (focus) $(`tab-${name}`).focus();
  if (location.hash.slice(1) !== name) history.replaceState(null, "", `#${name}`);
  clearInterval(state.healthTimer);
  if (name === "documents") loadDocuments(true);
  if (name === "events") loadEvents(true);
  if (name === "health") { loadHealth(); state.healthTimer = setInterval(loadHealth, 5000); }
  if (name === "ask" && !focus) $("question").focus();
}

for (const t of TABS) $(`tab-${t}`).addEventListener("click", () => selectTab(t));
$("tabs").addEventListener("keydown", (e) => {
  const at = TABS.indexOf(document.activeElement.id.replace("tab-", ""));
  if (at < 0) return;
  let next = null;
  if (e.key === "ArrowRight") next = (at + 1) % TABS.length;
  if (e.key === "ArrowLeft") next = (at - 1 + TABS.length) % TABS.length;
  if (e.key === "Home") next = 0;
  if (e.key === "End") next = TABS.length - 1;
  if (next !== null) { e.preventDefault(); selectTab(TABS[next]); }
});

// -- ask: the answer streams in (server-sent events over fetch, so the API key can be sent) ------------
$("question").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("ask-form").requestSubmit(); }
});

$("ask-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const question = $("question").value.trim();
  if (!question) return;
  const answer = $("answer");
  $("answer-card").hidden = false;
  answer.textContent = "";
  answer.setAttribute("aria-busy", "true");
  $("sources").replaceChildren();
  $("answer-notes").hidden = true;
  $("ask-status").textContent = "Searching your documents…";
  $("ask-button").disabled = true;
  try {
    const resp = await fetch("/query", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
      body: JSON.stringify({ question, stream: true }),
    });
    if (!resp.ok) {
      const data = await resp.json().catch(() => ({}));
      if (resp.status === 401 && !state.singleUser) showSignIn("Your API key was not accepted; sign in again.");
      throw new ApiError(resp.status, data.detail || `HTTP ${resp.status}`);
    }
    let text = "";
    for await (const [event, data] of serverSentEvents(resp)) {
      if (event === "token") { text += data.text; answer.textContent = text; }
      else if (event === "done") renderAnswer(data);
      else if (event === "error") throw new ApiError(data.status, data.detail);
    }
    $("ask-status").textContent = "";
  } catch (err) {
    $("ask-status").textContent = `The question could not be answered: ${err.message}`;
  } finally {
    answer.setAttribute("aria-busy", "false");
    $("ask-button").disabled = false;
  }
});

async function* serverSentEvents(resp) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (value) buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) yield [event, JSON.parse(data.join("\n"))];
    }
    if (done) return;
  }
}

function renderAnswer(result) {
  const answer = $("answer");
  const known = new Set(result.citations.map((c) => c.n));
  const parts = [];
  let last = 0;
  for (const m of result.answer.matchAll(/\[(\d+)\]/g)) {
    const n = Number(m[1]);
    if (!known.has(n)) continue;
    parts.push(result.answer.slice(last, m.index));
    parts.push(el("a", { href: `#source-${n}`, class: "cite", "aria-label": `source ${n}` }, `[${n}]`));
    last = m.index + m[0].length;
  }
  parts.push(result.answer.slice(last));
  answer.replaceChildren(...parts);
  if (!result.covered) $("ask-status").textContent = "Your documents do not seem to cover this question.";
  // What the server's checks found in an LLM's answer: quotes no cited passage holds, made-up markers.
  const notes = [];
  for (const q of result.unverified_quotes || []) notes.push(el("li", {}, `Not found in the cited sources: “${q}”`));
  if (result.invented_citations) {
    notes.push(el("li", {}, `${result.invented_citations} source marker(s) that named no source were removed.`));
  }
  $("answer-notes").replaceChildren(...notes);
  $("answer-notes").hidden = !notes.length;
  const list = $("sources");
  list.replaceChildren(...result.citations.map(sourceItem));
  if (!result.citations.length) list.append(el("li", {}, "No sources."));
}

// Offsets from the server count Unicode code points (Python); JavaScript strings count UTF-16 units.
function codePoints(text) { return Array.from(text); }

// The cited passage, with the parts the answer quotes from it (`quotes`, document offsets) marked; the
// whole passage is marked when the answer quotes no part of it word for word.
function passageNodes(c) {
  const chars = codePoints(c.text);
  const spans = (c.quotes || [])
    .map((q) => [Math.max(q.start, c.start) - c.start, Math.min(q.end, c.end) - c.start])
    .filter(([a, b]) => b > a)
    .sort((x, y) => x[0] - y[0]);
  if (!spans.length) return [el("mark", {}, c.text)];
  const out = [];
  let at = 0;
  for (const [a, b] of spans) {
    if (b <= at) continue;
    const from = Math.max(a, at);
    if (from > at) out.push(chars.slice(at, from).join(""));
    out.push(el("mark", {}, chars.slice(from, b).join("")));
    at = b;
  }
  if (at < chars.length) out.push(chars.slice(at).join(""));
  return [el("span", { class: "passage" }, ...out)];
}

function score(value, digits) { return value === null || value === undefined ? null : Number(value).toFixed(digits); }

function sourceItem(c) {
  const where = [];
  if (c.version !== null && c.version !== undefined) where.push(`version ${c.version}`);
  // Pages of a PDF, slides of a deck (page_start/page_end), or the sheet of a spreadsheet, when known.
  const kind = /\.pptx?$/i.test(c.path) ? "slide" : "page";
  if (c.page_start) {
    where.push(c.page_end && c.page_end !== c.page_start ? `${kind}s ${c.page_start}–${c.page_end}` : `${kind} ${c.page_start}`);
  }
  if (c.sheet) where.push(`sheet ${c.sheet}`);
  if (c.heading) where.push(c.heading);
  where.push(`characters ${c.start}–${c.end}`);
  // Both relevance signals, whatever the search mode ranked by (rank_score is that mode's own score).
  const scores = [];
  const similarity = score(c.similarity, 2);
  const keyword = score(c.keyword_score, 2);
  if (similarity !== null) scores.push(`similarity ${similarity}`);
  if (keyword !== null) scores.push(`keyword score ${keyword}`);
  const quote = el("blockquote", { class: "context" }, ...passageNodes(c));
  const item = el("li", { id: `source-${c.n}`, value: c.n, tabindex: "-1" },
    el("div", { class: "source-head" }, c.path),
    el("div", { class: "source-meta" }, where.join(" · ")),
    scores.length ? el("div", { class: "source-scores",
                                title: "similarity: cosine to the question; keyword score: BM25" }, scores.join(" · ")) : null,
    quote);
  // The passage in its surrounding text, if the document still reads the same there.
  api(`${docPath(c.file_id)}/passage${query({ start: c.start, end: c.end, context: 240 })}`)
    .then((p) => {
      if (p.text !== c.text) return;
      const before = codePoints(p.before).length;
      const more = p.end + codePoints(p.after).length < p.length ? "…" : "";
      quote.replaceChildren(p.start > before ? "…" : "", p.before, ...passageNodes(c), p.after, more);
    })
    .catch(() => {});
  return item;
}

// -- documents ----------------------------------------------------------------------------------------
$("documents-filter").addEventListener("submit", (e) => { e.preventDefault(); loadDocuments(true); });
$("documents-more").addEventListener("click", () => loadDocuments(false));
$("document-close").addEventListener("click", () => { $("document-detail").hidden = true; });

async function loadDocuments(fresh) {
  const body = $("documents-table").tBodies[0];
  if (fresh) { state.documentsCursor = null; body.replaceChildren(); }
  try {
    const page = await api(`/documents${query({ status: $("documents-status").value,
      path_prefix: $("documents-path").value.trim(), cursor: state.documentsCursor, limit: 50 })}`);
    for (const d of page.documents) body.append(documentRow(d));
    state.documentsCursor = page.next_cursor;
    $("documents-more").hidden = !page.next_cursor;
    $("documents-summary").textContent = `Showing ${body.rows.length} of ${page.total} document(s)`;
  } catch (err) {
    $("documents-summary").textContent = `Could not list documents: ${err.message}`;
  }
}

function documentRow(d) {
  return el("tr", {},
    el("td", { class: "path" }, d.path),
    el("td", {}, badge(d.status)),
    el("td", {}, d.version ?? ""),
    el("td", {}, d.chunk_count),
    el("td", { class: "err" }, d.last_error || ""),
    el("td", {}, el("button", { type: "button", class: "quiet", "aria-label": `Open ${d.path}`,
                                onclick: () => openDocument(d) }, "Open")));
}

async function openDocument(d) {
  const detail = $("document-detail");
  $("document-title").textContent = d.path;
  const meta = [`status ${d.status}`, d.version !== null ? `version ${d.version}` : null,
                `${d.chunk_count} chunk(s): ${d.embedded} embedded, ${d.reused} reused`,
                d.last_event_id ? `last event ${d.last_event_id}` : null, d.last_error];
  $("document-meta").textContent = meta.filter(Boolean).join(" · ");
  const list = $("document-chunks");
  list.replaceChildren(el("li", {}, "Loading…"));
  detail.hidden = false;
  detail.focus();
  try {
    const data = await api(`${docPath(d.file_id)}/chunks`);
    list.replaceChildren(...data.chunks.map((c) => el("li", { value: c.index + 1 },
      c.heading ? el("strong", {}, `${c.heading}\n`) : null, c.text)));
    if (!data.chunks.length) list.replaceChildren(el("li", {}, "Nothing of this file is searchable."));
  } catch (err) {
    list.replaceChildren(el("li", {}, `Could not load the chunks: ${err.message}`));
  }
}

// -- events -------------------------------------------------------------------------------------------
$("events-filter").addEventListener("submit", (e) => { e.preventDefault(); loadEvents(true); });
$("events-more").addEventListener("click", () => loadEvents(false));

async function loadEvents(fresh) {
  const list = $("events-list");
  if (fresh) { state.eventsCursor = null; list.replaceChildren(); }
  try {
    const page = await api(`/events${query({ status: $("events-status").value, file_id: $("events-file").value.trim(),
      cursor: state.eventsCursor, limit: 50 })}`);
    for (const ev of page.events) list.append(eventItem(ev));
    state.eventsCursor = page.next_cursor;
    $("events-more").hidden = !page.next_cursor;
    $("events-summary").textContent = `Showing ${list.children.length} of ${page.total} event(s), newest first`;
  } catch (err) {
    $("events-summary").textContent = `Could not list events: ${err.message}`;
  }
}

function eventItem(ev) {
  const actions = el("div", { class: "row" });
  const item = el("li", { "data-event-id": ev.event_id },
    el("div", { class: "event-head" }, badge(ev.status), el("span", { class: "event-path" }, ev.path),
       el("span", {}, ev.type), ev.version !== null ? el("span", {}, `version ${ev.version}`) : null,
       el("span", { class: "hint" }, when(ev.received_at))),
    ev.error ? el("p", { class: "event-error" }, ev.error) : null,
    ev.detail ? el("p", { class: "event-detail" }, ev.detail) : null,
    el("p", { class: "hint" }, `event ${ev.event_id} · ${ev.attempts} attempt(s)`),
    actions);
  const act = async (label, path, body) => {
    for (const b of actions.querySelectorAll("button")) b.disabled = true;
    try {
      const result = await api(path, { method: "POST", body });
      const updated = result.events ? result.events[0] : result;
      $("events-message").textContent = `${label}: ${ev.path} is now ${updated ? updated.status : "unchanged"}.`;
      if (updated) item.replaceWith(eventItem(updated));
    } catch (err) {
      $("events-message").textContent = `${label} failed: ${err.message}`;
      for (const b of actions.querySelectorAll("button")) b.disabled = false;
    }
  };
  if (ev.status === "failed") {
    actions.append(el("button", { type: "button", "aria-label": `Retry ${ev.path}`,
      onclick: () => act("Retry", `/events/${encodeURIComponent(ev.event_id)}/retry`) }, "Retry"));
  }
  if (ev.status === "held") {
    actions.append(
      el("button", { type: "button", class: "danger", "aria-label": `Confirm delete of ${ev.path}`,
        onclick: () => act("Confirm", "/held-deletes/confirm", { event_ids: [ev.event_id] }) }, "Confirm delete"),
      el("button", { type: "button", class: "quiet", "aria-label": `Discard delete of ${ev.path}`,
        onclick: () => act("Discard", "/held-deletes/discard", { event_ids: [ev.event_id] }) }, "Discard"));
  }
  return item;
}

// -- health -------------------------------------------------------------------------------------------
function fill(id, pairs) {
  $(id).replaceChildren(...pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

function nonZero(counts) {
  const pairs = Object.entries(counts).filter(([, v]) => v > 0);
  return pairs.length ? pairs : [["none", 0]];
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "none waiting";
  if (seconds < 90) return `${seconds.toFixed(1)} s`;
  if (seconds < 5400) return `${(seconds / 60).toFixed(1)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

async function loadHealth() {
  try {
    const s = await api("/stats");
    fill("health-documents", Object.entries(s.documents));
    fill("health-index", [["chunks", s.chunks], ["embedded", s.embeddings.embedded], ["reused", s.embeddings.reused]]);
    fill("health-queue", [["queued events", s.queue_depth], ["oldest waiting", age(s.oldest_queued_age_seconds)],
                          ["held deletes", s.held], ["queue (all workspaces)", s.queue_pending]]);
    fill("health-hour", nonZero(s.events_last_hour));
    fill("health-day", nonZero(s.events_last_day));
    fill("health-deliveries", Object.keys(s.deliveries).length ? Object.entries(s.deliveries) : [["none", 0]]);
    $("health-updated").textContent = `Updated ${new Date().toLocaleTimeString()}; refreshes every 5 seconds`;
  } catch (err) {
    $("health-updated").textContent = `Could not read the figures: ${err.message}`;
  }
}

// Only tab names switch views; other fragments (#source-2) are in-page links.
window.addEventListener("hashchange", () => {
  const name = location.hash.slice(1);
  if (TABS.includes(name)) selectTab(name, false);
});
start();
