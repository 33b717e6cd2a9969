/** Telling the user what happened: screen-reader announcements, a toast for passing news,
 * the notice in place of results (empty, or an error with a way to try again), and the words
 * for an error. */

import { $, el, icon } from "./dom.js";

const TOAST_MS = 5000;
const TOAST_ACTION_MS = 8000;
let toastTimer = 0;

/** Say something to screen readers only. */
export function announce(text) {
  const region = $("#announcer");
  region.textContent = "";
  // A change after a tick is announced even when the text repeats.
  requestAnimationFrame(() => {
    region.textContent = text;
  });
}

/** Show passing news for a few seconds (it is announced too: the toast is a status region).
 * `action` ({label, run}) adds a button, and the toast stays longer so it can be reached. */
export function toast(text, action = null) {
  const box = $("#toast");
  box.replaceChildren(el("span", { text }));
  if (action) {
    const button = el("button", { class: "toast-action", type: "button", text: action.label });
    button.addEventListener("click", () => {
      hideToast();
      action.run();
    });
    box.append(button);
  }
  box.classList.add("shown");
  clearTimeout(toastTimer);
  toastTimer = setTimeout(hideToast, action ? TOAST_ACTION_MS : TOAST_MS);
}

export function hideToast() {
  $("#toast").classList.remove("shown");
}

/** What went wrong, in words for the user. */
export function describe(error) {
  if (error.status === 0) {
    return "the server could not be reached. Check the connection, or whether imgsearch is running.";
  }
  if (error.status >= 500) {
    const detail = error.message && error.message !== "internal error" ? `: ${error.message}` : "";
    return `the server had a problem (error ${error.status}${detail}). Try again in a moment.`;
  }
  return error.message || `the request was refused (error ${error.status})`;
}

const capitalised = (text) => text.charAt(0).toUpperCase() + text.slice(1);

/** Show a notice where the results go: `{kind: "empty" | "error", title, text, action?}` with
 * `action` as `{label, run}`. The title is announced. */
export function showNotice({ kind, title, text, action }) {
  const notice = $("#notice");
  const button = action
    ? el("button", { class: "button", type: "button", text: action.label })
    : "";
  if (action) button.addEventListener("click", action.run);
  notice.dataset.kind = kind;
  notice.replaceChildren(
    icon(kind === "error" ? "alert" : "image"),
    el("h2", { text: title }),
    el("p", { text: capitalised(text) }),
    button,
  );
  notice.hidden = false;
  announce(`${title}. ${capitalised(text)}`);
}

export function hideNotice() {
  $("#notice").hidden = true;
}
