// DOM helpers shared by the UI's modules.

export const $ = (id) => document.getElementById(id);

/** A new element with attributes and text. */
export function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text) node.textContent = text;
  return node;
}
