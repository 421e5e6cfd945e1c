// Requests to the service, with its API key when it needs one.
//
// The key is asked for only when a request answers 401, in the page's own form (#key-dialog),
// and kept in sessionStorage: this browser tab only, never localStorage, the URL or a cookie.
// Every request then sends it as "Authorization: Bearer <key>"; a later 401 (a wrong or revoked
// key) forgets it and asks again, and the request is sent once more with the new key.

import { $ } from "./dom.js";

const KEY = "lexvla.apiKey";

export function currentKey() {
  return sessionStorage.getItem(KEY);
}

function withKey(headers) {
  const out = new Headers(headers || {});
  const key = currentKey();
  if (key) out.set("Authorization", `Bearer ${key}`);
  return out;
}

// --- the key form ------------------------------------------------------------------------------
let asking = null; // one form for all the requests refused at once

function askForKey(message) {
  if (!asking) asking = showKeyForm(message).finally(() => { asking = null; });
  return asking;
}

/** Resolves to the key typed (and keeps it), or to null when the form is cancelled. */
function showKeyForm(message) {
  const dialog = $("key-dialog"), form = $("key-form"), input = $("key-input");
  $("key-message").textContent = message;
  input.value = "";
  return new Promise((resolve) => {
    const done = (key) => {
      form.removeEventListener("submit", submit);
      $("key-cancel").removeEventListener("click", cancel);
      dialog.removeEventListener("cancel", cancel);
      if (dialog.open) dialog.close();
      if (key) sessionStorage.setItem(KEY, key);
      resolve(key);
    };
    const submit = (event) => { event.preventDefault(); done(input.value.trim() || null); };
    const cancel = (event) => { event.preventDefault(); done(null); };
    form.addEventListener("submit", submit);
    $("key-cancel").addEventListener("click", cancel);
    dialog.addEventListener("cancel", cancel); // Escape
    dialog.showModal();
    input.focus();
  });
}

// --- requests ----------------------------------------------------------------------------------
/** fetch() with the key; a 401 asks for a key and resends. Cancelled: the 401 response. */
export async function authFetch(path, options = {}) {
  for (;;) {
    const sent = currentKey();
    const response = await fetch(path, { ...options, headers: withKey(options.headers) });
    if (response.status !== 401) return response;
    if (currentKey() !== sent) continue; // a key was entered while this request was out
    if (sent) sessionStorage.removeItem(KEY);
    const key = await askForKey(sent
      ? "The service refused this key (wrong or revoked). Enter another API key:"
      : "This service needs an API key to search. Enter yours:");
    if (!key) return response;
  }
}

/** The JSON body of a request that succeeded; an Error with the service's message otherwise. */
export async function api(path, options) {
  const response = await authFetch(path, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const retry = response.headers.get("Retry-After");
    const hint = retry ? ` (retry in ${retry} s)` : "";
    const said = body.detail || (body.error && body.error.message);
    throw new Error((said || `${response.status} ${response.statusText}`) + hint);
  }
  return body;
}

/** GET returning null on 404 (an endpoint this server version does not have). */
export async function optional(path) {
  const response = await authFetch(path);
  if (response.status === 404) return null;
  if (!response.ok) throw new Error(`${path}: ${response.status} ${response.statusText}`);
  return response.json();
}

// --- images ------------------------------------------------------------------------------------
/**
 * Shows ``url`` in ``img``; resolves to whether it loaded. An <img> cannot send an
 * Authorization header, so with a key the image is fetched with it and shown through an object
 * URL (revoked by release() when the <img> shows something else or leaves the page). Without a
 * key the browser loads the URL itself (its cache, lazy loading); if that fails, one fetch finds
 * out why, so a 401 asks for a key like any other request. ``img.dataset.src`` keeps the URL.
 */
export function showImage(img, url) {
  release(img);
  img.dataset.src = url;
  if (currentKey()) return fetchInto(img, url);
  return new Promise((resolve) => {
    img.onload = () => resolve(true);
    img.onerror = () => resolve(img.dataset.src === url && fetchInto(img, url));
    img.src = url;
  });
}

async function fetchInto(img, url) {
  img.onload = img.onerror = null;
  try {
    const response = await authFetch(url);
    if (!response.ok || img.dataset.src !== url) return false;
    const blob = await response.blob();
    if (img.dataset.src !== url) return false;
    release(img);
    const loaded = new Promise((resolve) => {
      img.onload = () => resolve(true);
      img.onerror = () => resolve(false);
    });
    img.src = URL.createObjectURL(blob);
    return await loaded;
  } catch {
    return false;
  }
}

/** Frees the object URL ``img`` shows, if any. */
export function release(img) {
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
}
