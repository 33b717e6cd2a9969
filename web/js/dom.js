/** Small DOM helpers: elements from a tag, attributes and children; icons from the sprite. */

const SVG = "http://www.w3.org/2000/svg";

/** `el("button", {class: "chip", type: "button", text: "cat"}, child, ...)`; false and null
 * attributes are left out, true ones are set empty. */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value == null) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  node.append(...children);
  return node;
}

/** An icon from the sprite in index.html, hidden from screen readers. */
export function icon(name) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "icon");
  svg.setAttribute("aria-hidden", "true");
  const use = document.createElementNS(SVG, "use");
  use.setAttribute("href", `#i-${name}`);
  svg.append(use);
  return svg;
}

export const $ = (selector, root = document) => root.querySelector(selector);

export const reducedMotion = () => matchMedia("(prefers-reduced-motion: reduce)").matches;

/** Curly-quoted, for words the user typed. */
export const quoted = (text) => `\u201c${text}\u201d`;

/** A count with its thousands grouped as the reader's locale does. Small ones are written
 * as they are: the locale's data takes a slow phone ~100 ms to load, at the first call. */
export const number = (count) => (Math.abs(count) < 1000 ? String(count) : count.toLocaleString());

export const plural = (count, one, many = `${one}s`) =>
  `${number(count)} ${count === 1 ? one : many}`;

/** A count the API gives "up to 200" (matches, a class's photos), as a person reads it. */
export const upTo200 = (count) => (count >= 200 ? `${number(count)}+` : number(count));
