/** The image view: a modal dialog with the photo, what the model sees in it, the keys it is
 * stored under, a link to the original, "more like this", a vote when there are words to vote
 * for (also the Y and N keys), and previous / next through the results (also the arrow keys,
 * and a swipe sideways on a touch screen). Escape, the close button, a click outside or a
 * swipe down closes it, and focus goes back to the photo's tile. */

import * as api from "./api.js";
import { $, el, quoted } from "./dom.js";

const UPSCALE = 2; // the most a photo is enlarged
const SWIPE_PX = 60; // a finger moved this far is a swipe

/** `results()` the results in order; `context()` the vote context (see tile.js) or null;
 * `opener(id)` the element to focus when the view closes on that photo; `describe(error)`;
 * `onShown(id)` each photo shown, and `onShown(null)` when the view closes. */
export function createViewer(
  dialog,
  { results, context, opener, describe, onShown, onSimilar, onVote, onSearch },
) {
  const image = $(".viewer-image", dialog);
  const title = $("#viewer-title", dialog);
  const meta = $(".viewer-meta", dialog);
  const voting = $(".viewer-vote", dialog);
  const original = $("[data-original]", dialog);
  const classes = $(".viewer-classes", dialog);
  const keys = $(".viewer-keys", dialog);
  const stage = $(".viewer-stage", dialog);
  let current = null;
  let returnTo = null;
  let refocus = true; // false while closing to go elsewhere, which takes the focus itself
  let request = new AbortController();

  const neighbour = (step) => {
    const list = results();
    const index = list.findIndex((result) => result.id === current);
    return index < 0 ? null : (list[index + step] ?? null);
  };

  function showVote() {
    const vote = context();
    voting.hidden = !vote;
    if (!vote) return;
    $("#viewer-vote-label", dialog).textContent = `Does it show ${quoted(vote.query)}?`;
    const mine = vote.vote(current);
    for (const button of voting.querySelectorAll("[data-vote]")) {
      button.setAttribute("aria-pressed", String(Number(button.dataset.vote) === mine));
    }
  }

  /** Never blown up beyond twice its size: a small photo stays sharp enough to judge. */
  function capSize(width, height) {
    image.style.setProperty("--max-w", `${width * UPSCALE}px`);
    image.style.setProperty("--max-h", `${height * UPSCALE}px`);
  }

  function showDetail(detail) {
    capSize(detail.width, detail.height);
    meta.textContent = `${detail.width.toLocaleString()} \u00d7 ${detail.height.toLocaleString()} pixels`;
    const full = new Image();
    full.src = api.resolve(detail.url);
    full.decode().then(
      () => {
        if (detail.id === current) image.src = full.src;
      },
      () => {}, // the original did not load: the thumbnail stays
    );
    classes.replaceChildren(
      ...detail.classes.map(({ label, score }) => {
        const bar = el("span", { class: "bar" });
        bar.style.setProperty("--score", score.toFixed(3));
        const link = el("a", {
          href: `?q=${encodeURIComponent(label)}`,
          "data-search": true,
          text: label,
        });
        const percent = el("span", { class: "score", text: `${Math.round(score * 100)}%` });
        return el("li", {}, link, percent, bar);
      }),
    );
    keys.replaceChildren(...detail.keys.map((key) => el("li", {}, el("code", { text: key }))));
  }

  function show(id) {
    current = id;
    onShown(id);
    request.abort();
    request = new AbortController();
    const result = results().find((one) => one.id === id);
    image.src = result ? api.resolve(result.thumbnail) : api.thumbnailUrl(id);
    image.alt = result?.key ?? "";
    if (result) capSize(result.width, result.height);
    title.textContent = result?.key ?? "Photo";
    meta.textContent = "Loading details\u2026";
    original.href = result
      ? api.resolve(result.url)
      : `${api.API}/images/${encodeURIComponent(id)}/file`;
    classes.replaceChildren();
    keys.replaceChildren();
    for (const button of dialog.querySelectorAll("[data-step]")) {
      button.setAttribute("aria-disabled", String(!neighbour(Number(button.dataset.step))));
    }
    showVote();
    api.image(id, request.signal).then(
      (detail) => {
        if (detail.id !== current) return;
        title.textContent = detail.key;
        image.alt = detail.key;
        showDetail(detail);
      },
      (error) => {
        if (error.name !== "AbortError") meta.textContent = `No details: ${describe(error)}`;
      },
    );
  }

  /** Close, then `go` elsewhere (the close event comes later: it must not take the focus). */
  function leave(go) {
    refocus = false;
    dialog.close();
    go();
  }

  function step(by) {
    const next = neighbour(by);
    if (next) show(next.id);
  }

  dialog.addEventListener("click", (event) => {
    if (event.target === dialog) return dialog.close();
    const button = event.target.closest("button");
    if (!button) return;
    if (button.matches("[data-close]")) dialog.close();
    else if (button.matches("[data-step]")) step(Number(button.dataset.step));
    else if (button.matches("[data-similar]")) leave(() => onSimilar(current));
    else if (button.matches("[data-vote]")) {
      onVote(current, Number(button.dataset.vote)).then(showVote);
    }
  });
  classes.addEventListener("click", (event) => {
    const link = event.target.closest("a[data-search]");
    if (!link || event.ctrlKey || event.metaKey || event.shiftKey) return;
    event.preventDefault();
    leave(() => onSearch(link.textContent));
  });
  function vote(value) {
    if (context()) onVote(current, value).then(showVote);
  }

  dialog.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.key === "ArrowLeft" || event.key === "ArrowRight") {
      event.preventDefault();
      step(event.key === "ArrowLeft" ? -1 : 1);
    } else if (event.key === "y" || event.key === "n") {
      event.preventDefault();
      vote(event.key === "y" ? 1 : -1);
    }
  });

  // Touch: a swipe sideways steps, a swipe down closes (the photo follows the finger).
  let touch = null;
  stage.addEventListener("pointerdown", (event) => {
    if (event.pointerType === "touch" && event.isPrimary) {
      touch = { id: event.pointerId, x: event.clientX, y: event.clientY };
    }
  });
  stage.addEventListener("pointermove", (event) => {
    if (touch?.id !== event.pointerId) return;
    const dx = event.clientX - touch.x;
    const dy = Math.max(0, event.clientY - touch.y);
    image.style.translate = Math.abs(dx) > dy ? `${dx}px 0` : `0 ${dy}px`;
  });
  const endSwipe = (event) => {
    if (touch?.id !== event.pointerId) return;
    const dx = event.clientX - touch.x;
    const dy = event.clientY - touch.y;
    touch = null;
    image.style.translate = "";
    if (event.type === "pointercancel") return;
    if (Math.abs(dx) >= SWIPE_PX && Math.abs(dx) > Math.abs(dy)) step(dx < 0 ? 1 : -1);
    else if (dy >= SWIPE_PX && dy > Math.abs(dx)) dialog.close();
  };
  stage.addEventListener("pointerup", endSwipe);
  stage.addEventListener("pointercancel", endSwipe);
  dialog.addEventListener("close", () => {
    request.abort();
    onShown(null);
    if (refocus) (opener(current) ?? returnTo)?.focus();
    refocus = true;
  });

  return {
    get isOpen() {
      return dialog.open;
    },
    open(id) {
      if (!dialog.open) returnTo = document.activeElement;
      show(id);
      if (!dialog.open) dialog.showModal();
    },
    close() {
      if (dialog.open) dialog.close();
    },
  };
}
