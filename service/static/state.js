// The page's state and its URL: /?q=red+circle&album=Trip&from=2020-01-01&sort=-taken_at...
//
// Parameters: q, mode, bind=1, offset, off (word filters switched off), album, collection,
// from and to (dates, both included), sort, open (the image explained) and word (its heat map).
// A search adds a history entry (pushState), so back and forward return to earlier searches;
// opening or closing an explanation only replaces the current entry.

export const SORTS = ["relevance", "-taken_at", "taken_at"];
const FILTER_TOKEN = /^[+-]\S+$/;
const DATE = /^\d{4}-\d{2}-\d{2}$/;

export const state = {
  query: "", mode: "model", bind: false, offset: 0, off: [],
  album: "", collection: "", from: "", to: "", sort: "relevance",
  open: null, word: null, imageHits: null,
};

/** Fills ``state`` from the URL's query string (or, for links made before, its #hash). */
export function readUrl() {
  let p = new URLSearchParams(location.search);
  if (!p.has("q") && location.hash.length > 1) p = new URLSearchParams(location.hash.slice(1));
  state.query = p.get("q") || "";
  state.mode = ["words", "table"].includes(p.get("mode")) ? p.get("mode") : "model";
  state.bind = p.get("bind") === "1";
  state.offset = Math.max(0, parseInt(p.get("offset") || "0", 10) || 0);
  state.off = (p.get("off") || "").split(" ").filter((t) => FILTER_TOKEN.test(t));
  state.album = (p.get("album") || "").trim();
  state.collection = (p.get("collection") || "").trim();
  state.from = DATE.test(p.get("from")) ? p.get("from") : "";
  state.to = DATE.test(p.get("to")) ? p.get("to") : "";
  state.sort = SORTS.includes(p.get("sort")) ? p.get("sort") : "relevance";
  state.open = p.get("open");
  state.word = p.get("word");
}

function url() {
  const p = new URLSearchParams();
  if (state.query) p.set("q", state.query);
  if (state.mode !== "model") p.set("mode", state.mode);
  if (state.bind) p.set("bind", "1");
  for (const name of ["album", "collection", "from", "to"]) if (state[name]) p.set(name, state[name]);
  if (state.sort !== "relevance") p.set("sort", state.sort);
  if (state.offset) p.set("offset", String(state.offset));
  if (state.off.length) p.set("off", state.off.join(" "));
  if (state.open) p.set("open", state.open);
  if (state.word) p.set("word", state.word);
  const query = p.toString();
  return location.pathname + (query ? "?" + query : "");
}

/** Writes ``state`` into the URL: a new history entry (``push``) or the current one. */
export function writeUrl(push) {
  const next = url();
  if (next === location.pathname + location.search && !location.hash) return;
  history[push ? "pushState" : "replaceState"](null, "", next);
}

/** The day after an ISO date: "to" includes its whole day, whatever time a photo was taken. */
function dayAfter(date) {
  const d = new Date(date + "T00:00:00Z");
  d.setUTCDate(d.getUTCDate() + 1);
  return d.toISOString().slice(0, 10);
}

/**
 * The search's ``where`` from the filters the service has fields for (``fields``: the answer of
 * GET /fields), or null. The date range is ``taken_at >= from`` and ``taken_at < the day after
 * to``: a bound of "2020-12-31" would leave out that day's photos taken after midnight.
 */
export function whereOf(fields) {
  const where = {};
  if (state.album && fields.album) where.album = state.album;
  if (state.collection && fields.collection) where.collection = state.collection;
  if ((state.from || state.to) && fields.taken_at) {
    where.taken_at = {};
    if (state.from) where.taken_at.gte = state.from;
    if (state.to) where.taken_at.lt = dayAfter(state.to);
  }
  return Object.keys(where).length ? where : null;
}

/** The facets worth asking for: album, collection and the year taken, where the index has them. */
export function facetsOf(fields) {
  const wanted = [];
  if (fields.album) wanted.push("album");
  if (fields.collection) wanted.push("collection");
  if (fields.taken_at && fields.taken_at.type === "datetime") wanted.push("taken_at:year");
  return wanted;
}

/** The year a from/to pair covers exactly ("2021" for 2021-01-01 .. 2021-12-31), else null. */
export function selectedYear() {
  const year = state.from.slice(0, 4);
  return state.from === `${year}-01-01` && state.to === `${year}-12-31` ? year : null;
}
