/** Asking for the API key, once, when an upload needs it. Uploads waiting at the same time
 * share one question; the key is remembered on this device (store.js). */

import { $ } from "./dom.js";
import { apiKey } from "./store.js";

let asking = null;

/** Resolves with the key the user gave, or null if they cancelled. */
export function askForKey(dialog, { wrong }) {
  asking ??= new Promise((resolve) => {
    const input = $("#key-input", dialog);
    $(".key-error", dialog).textContent = wrong
      ? "That key was not accepted. Check it and try again."
      : "";
    input.value = "";
    dialog.returnValue = "";
    dialog.addEventListener(
      "close",
      () => {
        const key = dialog.returnValue === "save" ? input.value.trim() : "";
        if (key) apiKey.set(key);
        asking = null;
        resolve(key || null);
      },
      { once: true },
    );
    dialog.showModal();
  });
  return asking;
}
