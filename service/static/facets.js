// The filter bar (dates, album, collection, sort) and the facet counts beside the results.
//
// Controls appear only for the fields the service reports (GET /fields); a service without
// that endpoint gets no filter bar and searches without where/sort/facets. The album list and
// the collection menu offer the values of the last search's facet counts.

import { $, el } from "./dom.js";
import { state, selectedYear } from "./state.js";

const TITLES = { album: "Album", collection: "Collection", "taken_at:year": "Year taken" };
const SHOWN = 12; // values per facet, most frequent first

/** Shows the controls that make sense for ``fields`` (null: none at all). */
export function showControls(fields) {
  const bar = $("filter-form");
  bar.hidden = !fields || !["album", "collection", "taken_at"].some((name) => fields[name]);
  if (bar.hidden) return;
  for (const node of bar.querySelectorAll("[data-field]")) {
    const known = Boolean(fields[node.dataset.field]);
    node.hidden = !known;
    if (node.tagName === "OPTION") node.disabled = !known;
  }
  const sorts = [...$("sort").options].filter((o) => !o.disabled);
  $("sort").closest("label").hidden = sorts.length < 2; // relevance only: nothing to choose
}

/** Puts ``state``'s filters into the controls. */
export function syncControls() {
  $("from").value = state.from;
  $("to").value = state.to;
  $("album").value = state.album;
  const listed = [...$("collection").options].slice(1).map((o) => o.value);
  setOptions($("collection"), listed, state.collection);
  $("sort").value = state.sort;
}

/** Reads the controls into ``state``. */
export function readControls() {
  state.from = $("from").value;
  state.to = $("to").value;
  state.album = $("album").value.trim();
  state.collection = $("collection").value;
  state.sort = $("sort").value;
}

/** The collection menu: "any" and ``values`` (and ``current``, even with no count). */
function setOptions(select, values, current) {
  const all = [...new Set([...values, ...(current ? [current] : [])])].sort();
  select.replaceChildren(el("option", { value: "" }, "any collection"), ...all.map((v) => el("option", { value: v }, v)));
  select.value = current;
}

/** Most frequent first; years newest first. */
function ranked(counts, field) {
  const entries = Object.entries(counts || {});
  if (field === "taken_at:year") return entries.sort((a, b) => b[0].localeCompare(a[0]));
  return entries.sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
}

/** Renders the facet counts of a search answer; ``choose(field, value)`` runs on a click. */
export function renderFacets(facets, choose) {
  const aside = $("facets");
  const groups = [];
  for (const [field, counts] of Object.entries(facets || {})) {
    const values = ranked(counts, field);
    if (!values.length) continue;
    const group = el("section", { class: "facet-group", "data-facet": field });
    const title = TITLES[field] || field;
    const list = el("ul", { "aria-label": title });
    for (const [value, count] of values.slice(0, SHOWN)) {
      const on = isChosen(field, String(value));
      const button = el("button", {
        type: "button", class: "facet", "data-value": value, "aria-pressed": String(on),
        title: on ? `Showing only ${title.toLowerCase()} ${value}: click to show all` : `Only ${title.toLowerCase()} ${value} (${count} images)`,
      });
      button.append(el("span", { class: "value" }, String(value)), el("span", { class: "count" }, String(count)));
      button.addEventListener("click", () => choose(field, on ? "" : String(value)));
      const item = el("li");
      item.append(button);
      list.append(item);
    }
    group.append(el("h3", {}, title), list);
    groups.push(group);
  }
  aside.replaceChildren(...groups);
  aside.hidden = groups.length === 0;
  if (facets && facets.album) {
    $("album-options").replaceChildren(...ranked(facets.album).map(([v]) => el("option", { value: v })));
  }
  if (facets && facets.collection) {
    setOptions($("collection"), Object.keys(facets.collection), state.collection);
  }
}

function isChosen(field, value) {
  if (field === "taken_at:year") return selectedYear() === value;
  return state[field] === value;
}

/** Applies a facet click to ``state``: a value of "" clears that filter. */
export function chooseFacet(field, value) {
  if (field === "taken_at:year") {
    state.from = value ? `${value}-01-01` : "";
    state.to = value ? `${value}-12-31` : "";
  } else if (field === "album" || field === "collection") {
    state[field] = value;
  }
}
