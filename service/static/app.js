// LexVLA search UI: plain JavaScript modules, no build step. The state lives in the URL's query
// string (state.js), so a search can be shared, reloaded, and gone back to. Word filters live in
// the query text (+word keeps only images that have the word, -word drops them); the chips above
// the results switch each one off and on again. Field filters, sort and facet counts (facets.js)
// are offered for the fields the service reports; requests carry the API key once one is asked
// for (api.js).

import { api, currentKey, optional, release, showImage } from "./api.js";
import { $, el } from "./dom.js";
import { chooseFacet, readControls, renderFacets, showControls, syncControls } from "./facets.js";
import { facetsOf, readUrl, state, whereOf, writeUrl } from "./state.js";

const PAGE = 12;
const WELCOME = $("status").textContent;
let fields; // GET /fields: {name: {type}}; null where the service has no such endpoint
let fieldsFailedWith; // the key (or null) of a GET /fields that failed: asked again with another
let latest = 0; // the newest search: answers to older ones are dropped

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

// --- search ------------------------------------------------------------------------------------
/** A new search from the user: a new history entry, then the search. */
function go() {
  writeUrl(true);
  return search();
}

function searchBody() {
  const body = { query: state.query, mode: state.mode, bind: state.bind, top_k: PAGE, offset: state.offset, matched_limit: 12, query_words_limit: 40 };
  if (!fields) return body; // a service without field filters refuses these keys
  const where = whereOf(fields);
  if (where) body.where = where;
  if (state.sort !== "relevance" && fields[state.sort.replace(/^-/, "")]) body.sort = state.sort;
  const facets = facetsOf(fields);
  if (facets.length) body.facets = facets;
  return body;
}

/** Asks the service which fields it has, until it has answered (a failure: again with a new key). */
async function loadFields() {
  if (fields !== undefined || fieldsFailedWith === currentKey()) return;
  try {
    const answer = await optional("/fields");
    fields = answer && answer.fields ? answer.fields : null;
  } catch (err) {
    fieldsFailedWith = currentKey();
    setStatus(`Field filters are unavailable for now: ${err.message}`, true);
  }
  showControls(fields || null);
}

/** Runs the search ``state`` describes (the URL is written by the caller). */
async function search() {
  if (!state.query.trim()) return;
  await loadFields();
  $("query").value = state.query;
  $("mode").value = state.mode;
  $("bind").checked = state.bind;
  state.imageHits = null;
  setStatus("Searching…");
  const mine = ++latest;
  try {
    const result = await api("/search", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(searchBody()),
    });
    if (mine === latest) render(result);
  } catch (err) {
    if (mine === latest) setStatus(err.message, true);
  }
}

async function searchByImage(file) {
  setStatus(`Searching with ${file.name}…`);
  const form = new FormData();
  form.append("file", file);
  form.append("top_k", String(PAGE));
  form.append("matched_limit", "12");
  const mine = ++latest;
  try {
    const result = await api("/search/image", { method: "POST", body: form });
    if (mine !== latest) return;
    state.query = ""; state.offset = 0; state.open = null; state.word = null;
    writeUrl(true);
    render(result);
    state.imageHits = Object.fromEntries(result.hits.map((h) => [h.id, h]));
  } catch (err) {
    if (mine === latest) setStatus(err.message, true);
  }
}

function render(result) {
  const t = result.timings;
  const shown = result.hits.length;
  const first = result.offset + 1;
  const f = result.filters || { require: [], exclude: [] };
  const only = [...f.require.map((w) => "+" + w), ...f.exclude.map((w) => "−" + w)].join(" ");
  const filtered = only ? ` · filters ${only}` : "";
  const of = typeof result.matches === "number" ? ` of ${result.matches}` : "";
  setStatus(shown
    ? `Results ${first}–${result.offset + shown}${of} for “${result.query}”${filtered} · ${result.active_words} query words · encode ${t.encode_ms.toFixed(1)} ms · search ${t.search_ms.toFixed(1)} ms · index ${result.index_version}`
    : `No images match “${result.query}”${filtered}. ${result.notes.join(" ")}`);
  const words = $("query-words");
  words.replaceChildren(...result.query_words.slice(0, 40).map((w) => el("span", { class: "chip", title: w.weight.toFixed(4) }, w.word)));
  renderFilters(result);
  renderFacets(result.facets, (field, value) => {
    chooseFacet(field, value);
    state.offset = 0;
    syncControls();
    go();
  });
  for (const img of $("results").querySelectorAll("img")) release(img);
  $("results").replaceChildren(...result.hits.map(card));
  const more = typeof result.matches === "number" ? result.offset + shown < result.matches : shown === PAGE;
  $("pager").hidden = result.mode === "image" || (result.offset === 0 && !more);
  $("prev").disabled = result.offset === 0;
  $("next").disabled = !more;
}

// --- word filters ------------------------------------------------------------------------------
function renderFilters(result) {
  const f = result.filters || { require: [], exclude: [], rule: "" };
  const active = [...f.require.map((w) => "+" + w), ...f.exclude.map((w) => "-" + w)];
  state.off = state.off.filter((t) => !active.includes(t));
  const chip = (token, on) => {
    const kind = token[0] === "+" ? "require" : "exclude";
    const label = (token[0] === "+" ? "+" : "−") + token.slice(1);
    const what = kind === "require" ? "only images that have" : "no image that has";
    const node = el("button", {
      type: "button", class: `chip filter ${kind}${on ? "" : " off"}`, "data-token": token,
      "aria-pressed": String(on), title: `${on ? "On" : "Off"}: ${what} “${token.slice(1)}” (${f.rule || "click to switch on"}). Click to switch ${on ? "off" : "on"}.`,
    }, label);
    node.addEventListener("click", () => toggleFilter(token, on));
    return node;
  };
  const chips = [...active.map((t) => chip(t, true)), ...state.off.map((t) => chip(t, false))];
  $("filters").replaceChildren(...chips);
  $("filters").hidden = chips.length === 0;
}

function toggleFilter(token, on) {
  if (on) {
    state.query = state.query.split(/\s+/).filter((t) => t !== token).join(" ");
    state.off = [...state.off, token];
    if (!state.query.replace(/(^|\s)-\S+/g, "").trim()) {
      // nothing left to search for: search for the switched-off word itself
      state.query = (state.query + " " + token.slice(1)).trim();
    }
  } else {
    state.off = state.off.filter((t) => t !== token);
    state.query = `${state.query} ${token}`.trim();
  }
  state.offset = 0;
  go();
}

// --- results -----------------------------------------------------------------------------------
/** "2021-06-01T12:30:45+02:00" -> "1 Jun 2021, 12:30": the clock time where it was taken. */
function readableDate(value) {
  const m = /^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2}))?/.exec(String(value));
  if (!m) return String(value);
  const [y, mo, d, h, mi] = m.slice(1).map((x) => (x === undefined ? undefined : Number(x)));
  const when = new Date(Date.UTC(y, mo - 1, d, h || 0, mi || 0));
  const style = h === undefined ? { dateStyle: "medium" } : { dateStyle: "medium", timeStyle: "short" };
  return new Intl.DateTimeFormat(undefined, { ...style, timeZone: "UTC" }).format(when);
}

function card(hit) {
  const node = el("button", { class: "card", type: "button", "data-id": hit.id });
  const img = el("img", { alt: hit.id, loading: "lazy" });
  showImage(img, hit.thumbnail_url);
  const meta = el("div", { class: "meta" });
  const head = el("div");
  head.append(el("span", { class: "score" }, hit.score.toFixed(4)), document.createTextNode(`  #${hit.rank}`));
  if (hit.bound_score !== null && hit.bound_score !== undefined) {
    const [row, col] = hit.bound_patch;
    head.append(el("span", { class: "bound", title: `all the query's words at patch row ${row}, column ${col}` }, ` · together ${hit.bound_score.toFixed(3)}`));
  }
  meta.append(head, el("div", { class: "id", title: hit.id }, hit.id));
  const { taken_at: taken, album } = hit.metadata || {};
  if (taken || album) {
    const when = el("div", { class: "taken" });
    if (taken) when.append(el("time", { datetime: String(taken), title: String(taken) }, readableDate(taken)));
    if (taken && album) when.append(document.createTextNode(" · "));
    if (album) when.append(el("span", { class: "album" }, String(album)));
    meta.append(when);
  }
  const chips = el("div", { class: "chips" });
  const top = hit.matched.length ? hit.matched[0].contribution : 1;
  for (const m of hit.matched.slice(0, 8)) {
    // chip size grows with the word's share of the largest contribution
    const share = Math.max(0, m.contribution / top);
    const size = 10 + 7 * share * share;
    const chip = el("span", { class: "chip", title: `${m.query_weight.toFixed(3)} × ${m.image_weight.toFixed(3)} = ${m.contribution.toFixed(5)}` }, m.word);
    chip.style.fontSize = `${size.toFixed(1)}px`;
    chips.append(chip);
  }
  meta.append(chips);
  node.append(img, meta);
  node.addEventListener("click", () => openDetail(hit.id));
  return node;
}

// --- explanation -------------------------------------------------------------------------------
async function openDetail(imageId, word = null) {
  state.open = imageId;
  state.word = word;
  writeUrl(false);
  const panel = $("detail");
  panel.hidden = false;
  $("detail-title").textContent = imageId;
  $("matched").replaceChildren();
  $("cloud").replaceChildren();
  $("heatmap-caption").textContent = "Explaining…";
  let query = state.query, mode = state.mode;
  const imageHit = state.imageHits && state.imageHits[imageId];
  if (imageHit) { // an image query: explain with the words both images share
    query = imageHit.matched.map((m) => m.word.replace(/^·/, "")).join(" ");
    mode = "words";
  }
  if (!query.trim()) { $("heatmap-caption").textContent = "Search first to explain a match."; return; }
  try {
    const ex = await api("/explain", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ query, mode, image_id: imageId, top_words: 40, heatmaps: 12 }),
    });
    showExplanation(ex, word);
  } catch (err) {
    $("heatmap-caption").textContent = err.message;
  }
}

function showExplanation(ex, word) {
  $("detail-title").textContent = `${ex.image_id} · score ${ex.score.toFixed(4)}`;
  const top = ex.matched.length ? ex.matched[0].contribution : 1;
  const matched = ex.matched.slice(0, 24).map((m) => {
    const chip = el("button", { class: "chip", type: "button", "data-word": m.word, title: `contribution ${m.contribution.toFixed(5)}` }, m.word);
    chip.style.fontSize = `${(11 + 6 * (m.contribution / top) ** 2).toFixed(1)}px`;
    chip.addEventListener("click", () => showHeatmap(ex, m.word));
    return chip;
  });
  $("matched").replaceChildren(...matched);
  const heaviest = ex.image_words.length ? ex.image_words[0].weight : 1;
  $("cloud").replaceChildren(...ex.image_words.map((w) => {
    const span = el("span", { title: w.weight.toFixed(4) }, w.word);
    const share = w.weight / heaviest;
    span.style.fontSize = `${(11 + 14 * share * share).toFixed(1)}px`;
    span.style.opacity = (0.45 + 0.55 * share).toFixed(2);
    return span;
  }));
  const chosen = word || (ex.matched.length ? ex.matched[0].word : null);
  if (chosen) showHeatmap(ex, chosen);
  else { showImage($("heatmap"), ex.thumbnail_url); $("heatmap-caption").textContent = "No word in common with the query."; }
  const notes = ex.notes.join(" ");
  if (notes) $("heatmap-caption").textContent += ` ${notes}`;
}

function showHeatmap(ex, word) {
  state.word = word;
  writeUrl(false);
  for (const chip of $("matched").children) chip.classList.toggle("active", chip.dataset.word === word);
  const url = `/explain/${encodeURIComponent(ex.image_id)}/heatmap.png?word=${encodeURIComponent(word)}&size=320`;
  showImage($("heatmap"), url).then((shown) => {
    if (!shown && $("heatmap").dataset.src === url) $("heatmap-caption").textContent = `No heat map for “${word}”.`;
  });
  const m = ex.matched.find((c) => c.word === word);
  $("heatmap-caption").textContent = m
    ? `“${word}”: query ${m.query_weight.toFixed(3)} × image ${m.image_weight.toFixed(3)} = ${m.contribution.toFixed(5)} (bright = where the model sees it)`
    : `“${word}”`;
}

function closeDetail() {
  $("detail").hidden = true;
  state.open = null;
  state.word = null;
  writeUrl(false);
}

function clearResults() {
  latest++; // a search still under way is not shown
  setStatus(WELCOME);
  for (const img of $("results").querySelectorAll("img")) release(img);
  for (const id of ["results", "query-words", "filters", "facets"]) $(id).replaceChildren();
  $("filters").hidden = $("facets").hidden = $("pager").hidden = true;
}

// --- wiring ------------------------------------------------------------------------------------
$("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.query = $("query").value;
  state.off = [];
  state.mode = $("mode").value;
  state.bind = $("bind").checked;
  state.offset = 0;
  state.open = state.word = null;
  $("detail").hidden = true;
  go();
});
$("filter-form").addEventListener("change", applyControls);
$("filter-form").addEventListener("submit", (event) => { event.preventDefault(); applyControls(); });
$("clear-filters").addEventListener("click", () => {
  Object.assign(state, { album: "", collection: "", from: "", to: "", sort: "relevance", offset: 0 });
  syncControls();
  go();
});
$("upload").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (file) searchByImage(file);
  event.target.value = "";
});
$("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); go(); });
$("next").addEventListener("click", () => { state.offset += PAGE; go(); });
$("close").addEventListener("click", closeDetail);
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && !$("key-dialog").open && !$("detail").hidden) closeDetail();
});
window.addEventListener("popstate", show); // back and forward: the search of that entry

/** The filter bar changed: a new search when the filters differ from the current ones. */
function applyControls() {
  const before = JSON.stringify([state.album, state.collection, state.from, state.to, state.sort]);
  readControls();
  if (JSON.stringify([state.album, state.collection, state.from, state.to, state.sort]) === before) return;
  state.offset = 0;
  go();
}

/** Shows what the URL describes: its search, and the explanation it has open. */
async function show() {
  readUrl();
  syncControls();
  $("query").value = state.query;
  $("mode").value = state.mode;
  $("bind").checked = state.bind;
  const open = state.open, word = state.word;
  if (state.query) await search();
  else clearResults();
  if (open) await openDetail(open, word);
  else $("detail").hidden = true;
}

async function start() {
  await loadFields();
  await show();
  writeUrl(false); // a link of the older #q=... form becomes ?q=...
  document.body.dataset.ready = "true"; // for the headless-browser test
}
start();
