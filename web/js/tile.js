/** One result in the grid: the photo (opens the viewer), a "learned" mark for results placed
 * by votes, and buttons to vote on it and to find more like it. */

import { resolve } from "./api.js";
import { el, icon, quoted } from "./dom.js";

// The first screen's photos take the connection first: on a slow one, every other image
// (the rest of the grid, the start view's covers) waits until they are in, or a few seconds.
let waiting = 0;
let queued = [];
const FIRST_SCREEN_WAIT_MS = 4000;

function firstScreen(image, start) {
  waiting += 1;
  const done = () => {
    waiting -= 1;
    if (waiting <= 0) release();
  };
  image.addEventListener("load", done, { once: true });
  image.addEventListener("error", done, { once: true });
  start();
  setTimeout(release, FIRST_SCREEN_WAIT_MS);
}

function release() {
  waiting = 0;
  const now = queued;
  queued = [];
  for (const start of now) start();
}

// The first screen's photos boot.js asked for (from the answers in the page) count too.
for (const image of window.IMGSEARCH_PRELOADED || []) {
  if (!image.complete) firstScreen(image, () => {});
}

/** Run `start` (which asks for an image) once the first screen's photos are in. */
export function afterFirstScreen(start) {
  if (waiting > 0) queued.push(start);
  else start();
}

/** The URL a tile (or a cover) shows `result` by: its tile thumbnail where that is enough
 * (boot.js says when), else its thumbnail; resolved against the API. */
export function tileSource(result) {
  const choose = window.IMGSEARCH_TILE_SOURCE || ((one) => one.thumbnail);
  return resolve(choose(result));
}

/** Show `result` in `image`; a tile thumbnail that fails (an image stored before they were
 * made, where a CDN serves them) falls back to the thumbnail. */
export function showIn(image, result) {
  const thumbnail = resolve(result.thumbnail);
  const source = tileSource(result);
  if (source !== thumbnail) {
    image.addEventListener(
      "error",
      (event) => {
        event.stopImmediatePropagation();
        image.src = thumbnail;
      },
      { once: true },
    );
  }
  image.src = source;
}

function actionButton(action, label, pressed) {
  return el(
    "button",
    {
      class: `act act-${action}`,
      type: "button",
      tabindex: -1,
      title: label,
      "data-action": action,
      "aria-pressed": pressed,
    },
    icon(action),
    el("span", { class: "visually-hidden", text: label }),
  );
}

/** `context` is null where there is nothing to vote on, else
 * `{query, vote: id -> 1 | -1 | undefined}` for the words searched. */
export function createTile(result, context, { first = false } = {}) {
  const image = el("img", {
    alt: result.key,
    // The first screen's photos before anything else; the rest as they come near.
    loading: first ? "eager" : "lazy",
    fetchpriority: first ? "high" : "low",
    decoding: "async",
    width: 384,
    height: 384,
  });
  const stack = result.stack
    ? el(
        "span",
        { class: "stack", title: `${result.stack} near-copies of this photo` },
        el("span", { "aria-hidden": "true", text: `${result.stack}` }),
        el("span", { class: "visually-hidden", text: `${result.stack} near-copies` }),
      )
    : "";
  const open = el(
    "button",
    {
      class: "tile-open",
      type: "button",
      tabindex: -1,
      "aria-haspopup": "dialog",
      title: result.key,
    },
    image,
    stack,
    el(
      "span",
      { class: "badge", title: "Learned: moved here by votes" },
      icon("learned"),
      el("span", { class: "visually-hidden", text: "Learned" }),
    ),
  );
  const votes = context
    ? [
        actionButton("up", `Relevant to ${quoted(context.query)}`, "false"),
        actionButton("down", `Not relevant to ${quoted(context.query)}`, "false"),
      ]
    : [];
  const actions = el(
    "div",
    { class: "tile-actions", role: "group", "aria-label": result.key },
    ...votes,
    actionButton("similar", "More like this"),
  );
  const tile = el("li", { class: "tile", "data-id": result.id }, open, actions);
  if (result.stackStart) tile.classList.add("stack-start");
  image.addEventListener("load", () => tile.classList.add("loaded"), { once: true });
  const start = () => {
    showIn(image, result);
    image.addEventListener("error", () => tile.classList.add("broken"), { once: true });
  };
  if (first) firstScreen(image, start);
  else afterFirstScreen(start);
  updateTile(tile, result, context);
  return tile;
}

/** Bring a tile up to date with its result and this session's vote on it. */
export function updateTile(tile, result, context) {
  // Marked only where votes placed it: this session's own vote, or a move a vote caused.
  const moved = result.reason === "voted" || Boolean(context?.moved(result.id));
  tile.classList.toggle("learned", Boolean(result.learned) && moved);
  const vote = context?.vote(result.id);
  if (vote) tile.dataset.vote = vote;
  else delete tile.dataset.vote;
  tile.querySelector(".act-up")?.setAttribute("aria-pressed", String(vote === 1));
  tile.querySelector(".act-down")?.setAttribute("aria-pressed", String(vote === -1));
}
