// LexVLA search UI: plain JavaScript, no build step. State lives in the URL hash
// (#q=...&mode=...&offset=...&open=<image id>&word=<word>) so a view can be shared or reloaded.
"use strict";

const PAGE = 12;
const $ = (id) => document.getElementById(id);
const state = { query: "", mode: "model", offset: 0, open: null, word: null, imageHits: null };

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
  state.mode = p.get("mode") === "words" ? "words" : "model";
  state.offset = Math.max(0, parseInt(p.get("offset") || "0", 10) || 0);
  state.open = p.get("open");
  state.word = p.get("word");
}

function writeHash() {
  const p = new URLSearchParams();
  if (state.query) p.set("q", state.query);
  if (state.mode !== "model") p.set("mode", state.mode);
  if (state.offset) p.set("offset", String(state.offset));
  if (state.open) p.set("open", state.open);
  if (state.word) p.set("word", state.word);
  history.replaceState(null, "", "#" + p.toString());
}

// --- search ------------------------------------------------------------------------------------
async function search() {
  if (!state.query.trim()) return;
  $("query").value = state.query;
  $("mode").value = state.mode;
  state.imageHits = null;
  setStatus("Searching…");
  writeHash();
  try {
    const body = { query: state.query, mode: state.mode, top_k: PAGE, offset: state.offset, matched_limit: 12, query_words_limit: 40 };
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
  setStatus(shown
    ? `Results ${first}–${result.offset + shown} for “${result.query}” · ${result.active_words} query words · encode ${t.encode_ms.toFixed(1)} ms · search ${t.search_ms.toFixed(1)} ms · index ${result.index_version}`
    : `No images match “${result.query}”. ${result.notes.join(" ")}`);
  const words = $("query-words");
  words.replaceChildren(...result.query_words.slice(0, 40).map((w) => el("span", { class: "chip", title: w.weight.toFixed(4) }, w.word)));
  $("results").replaceChildren(...result.hits.map(card));
  $("pager").hidden = result.mode === "image" || (result.offset === 0 && shown < PAGE);
  $("prev").disabled = result.offset === 0;
  $("next").disabled = shown < PAGE;
}

function card(hit) {
  const node = el("button", { class: "card", type: "button", "data-id": hit.id });
  const img = el("img", { src: hit.thumbnail_url, alt: hit.id, loading: "lazy" });
  const meta = el("div", { class: "meta" });
  const head = el("div");
  head.append(el("span", { class: "score" }, hit.score.toFixed(4)), document.createTextNode(`  #${hit.rank}`));
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
  state.mode = $("mode").value;
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
