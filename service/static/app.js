// LexVLA search UI: plain JavaScript, no build step. State lives in the URL hash
// (#q=...&mode=...&bind=1&offset=...&open=<image id>&word=<word>&off=<filters>) so a view can be shared
// or reloaded. Word filters live in the query text (+word keeps only images that have the word,
// -word drops them); the chips above the results switch each one off and on again.
"use strict";

const PAGE = 12;
const $ = (id) => document.getElementById(id);
const state = { query: "", mode: "model", bind: false, offset: 0, open: null, word: null, imageHits: null, off: [] };
const FILTER_TOKEN = /^[+-]\S+$/;

function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text) node.textContent = text;
  return node;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const retry = response.headers.get("Retry-After");
    const hint = retry ? ` (retry in ${retry} s)` : "";
    throw new Error((body.detail || `${response.status} ${response.statusText}`) + hint);
  }
  return body;
}

// --- URL state ---------------------------------------------------------------------------------
function readHash() {
  const p = new URLSearchParams(location.hash.slice(1));
  state.query = p.get("q") || "";
  state.mode = ["words", "table"].includes(p.get("mode")) ? p.get("mode") : "model";
  state.bind = p.get("bind") === "1";
  state.offset = Math.max(0, parseInt(p.get("offset") || "0", 10) || 0);
  state.open = p.get("open");
  state.word = p.get("word");
  state.off = (p.get("off") || "").split(" ").filter((t) => FILTER_TOKEN.test(t));
}

function writeHash() {
  const p = new URLSearchParams();
  if (state.query) p.set("q", state.query);
  if (state.mode !== "model") p.set("mode", state.mode);
  if (state.bind) p.set("bind", "1");
  if (state.offset) p.set("offset", String(state.offset));
  if (state.open) p.set("open", state.open);
  if (state.word) p.set("word", state.word);
  if (state.off.length) p.set("off", state.off.join(" "));
  history.replaceState(null, "", "#" + p.toString());
}

// --- search ------------------------------------------------------------------------------------
async function search() {
  if (!state.query.trim()) return;
  $("query").value = state.query;
  $("mode").value = state.mode;
  $("bind").checked = state.bind;
  state.imageHits = null;
  setStatus("Searching…");
  writeHash();
  try {
    const body = { query: state.query, mode: state.mode, bind: state.bind, top_k: PAGE, offset: state.offset, matched_limit: 12, query_words_limit: 40 };
    const result = await api("/search", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    render(result);
  } catch (err) {
    setStatus(err.message, true);
  }
}

async function searchByImage(file) {
  setStatus(`Searching with ${file.name}…`);
  const form = new FormData();
  form.append("file", file);
  form.append("top_k", String(PAGE));
  form.append("matched_limit", "12");
  try {
    const result = await api("/search/image", { method: "POST", body: form });
    state.query = ""; state.offset = 0; state.open = null; state.word = null;
    writeHash();
    render(result);
    state.imageHits = Object.fromEntries(result.hits.map((h) => [h.id, h]));
  } catch (err) {
    setStatus(err.message, true);
  }
}

function render(result) {
  const t = result.timings;
  const shown = result.hits.length;
  const first = result.offset + 1;
  const f = result.filters || { require: [], exclude: [] };
  const only = [...f.require.map((w) => "+" + w), ...f.exclude.map((w) => "−" + w)].join(" ");
  const filtered = only ? ` · filters ${only}` : "";
  setStatus(shown
    ? `Results ${first}–${result.offset + shown} for “${result.query}”${filtered} · ${result.active_words} query words · encode ${t.encode_ms.toFixed(1)} ms · search ${t.search_ms.toFixed(1)} ms · index ${result.index_version}`
    : `No images match “${result.query}”${filtered}. ${result.notes.join(" ")}`);
  const words = $("query-words");
  words.replaceChildren(...result.query_words.slice(0, 40).map((w) => el("span", { class: "chip", title: w.weight.toFixed(4) }, w.word)));
  renderFilters(result);
  $("results").replaceChildren(...result.hits.map(card));
  $("pager").hidden = result.mode === "image" || (result.offset === 0 && shown < PAGE);
  $("prev").disabled = result.offset === 0;
  $("next").disabled = shown < PAGE;
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
  search();
}

function card(hit) {
  const node = el("button", { class: "card", type: "button", "data-id": hit.id });
  const img = el("img", { src: hit.thumbnail_url, alt: hit.id, loading: "lazy" });
  const meta = el("div", { class: "meta" });
  const head = el("div");
  head.append(el("span", { class: "score" }, hit.score.toFixed(4)), document.createTextNode(`  #${hit.rank}`));
  if (hit.bound_score !== null && hit.bound_score !== undefined) {
    const [row, col] = hit.bound_patch;
    head.append(el("span", { class: "bound", title: `all the query's words at patch row ${row}, column ${col}` }, ` · together ${hit.bound_score.toFixed(3)}`));
  }
  meta.append(head, el("div", { class: "id", title: hit.id }, hit.id));
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
  writeHash();
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
  else { $("heatmap").src = ex.thumbnail_url; $("heatmap-caption").textContent = "No word in common with the query."; }
  const notes = ex.notes.join(" ");
  if (notes) $("heatmap-caption").textContent += ` ${notes}`;
}

function showHeatmap(ex, word) {
  state.word = word;
  writeHash();
  for (const chip of $("matched").children) chip.classList.toggle("active", chip.dataset.word === word);
  const img = $("heatmap");
  img.onerror = () => { $("heatmap-caption").textContent = `No heat map for “${word}”.`; };
  img.src = `/explain/${encodeURIComponent(ex.image_id)}/heatmap.png?word=${encodeURIComponent(word)}&size=320`;
  const m = ex.matched.find((c) => c.word === word);
  $("heatmap-caption").textContent = m
    ? `“${word}”: query ${m.query_weight.toFixed(3)} × image ${m.image_weight.toFixed(3)} = ${m.contribution.toFixed(5)} (bright = where the model sees it)`
    : `“${word}”`;
}

function closeDetail() {
  $("detail").hidden = true;
  state.open = null;
  state.word = null;
  writeHash();
}

// --- wiring ------------------------------------------------------------------------------------
$("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.query = $("query").value;
  state.off = [];
  state.mode = $("mode").value;
  state.bind = $("bind").checked;
  state.offset = 0;
  closeDetail();
  search();
});
$("upload").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (file) searchByImage(file);
  event.target.value = "";
});
$("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); search(); });
$("next").addEventListener("click", () => { state.offset += PAGE; search(); });
$("close").addEventListener("click", closeDetail);
document.addEventListener("keydown", (event) => { if (event.key === "Escape") closeDetail(); });

async function start() {
  readHash();
  if (state.query) {
    const open = state.open, word = state.word;
    await search();
    if (open) await openDetail(open, word);
  }
  document.body.dataset.ready = "true"; // for the headless-browser test
}
start();
