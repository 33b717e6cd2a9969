/** The uploads tray: the files being added to the collection, each with its progress and then
 * "View" or the reason it was refused. Two files go at a time. When the server asks for the
 * API key (401, or 403 for a wrong one) the user is asked once and the file is sent again. */

import { ApiError, UPLOAD_MODE } from "./api.js";
import { $, el, plural } from "./dom.js";
import { apiKey } from "./store.js";
import * as transfer from "./transfer.js";

const AT_ONCE = 2;
const send = UPLOAD_MODE === "presigned" ? transfer.presigned : transfer.direct;

const DONE = {
  added: "Added",
  duplicate: "Added; the same photo was already there under another name",
  unchanged: "Already in the collection",
  pending: "Uploaded; it will be searchable in a moment",
};

/** `askKey({wrong})` asks for the API key; `onAdded()` runs after a batch added something. */
export function createUploads(tray, { askKey, describe, announce, onOpen, onAdded }) {
  const list = $(".tray-list", tray);
  const title = $("#uploads-title", tray);
  const entries = [];
  const waiting = [];
  let running = 0;
  let addedInBatch = 0;

  function set(entry, state, text, ...extra) {
    entry.state = state;
    entry.item.dataset.state = state;
    entry.status.replaceChildren(text, ...extra);
    summarise();
  }

  function summarise() {
    const count = (state) => entries.filter((entry) => entry.state === state).length;
    const busy = entries.length - count("done") - count("refused");
    title.textContent = busy
      ? `Uploading ${plural(busy, "photo")}`
      : [
          count("done") && `${count("done")} added`,
          count("refused") && `${count("refused")} not added`,
        ]
          .filter(Boolean)
          .join(", ");
  }

  function entryFor(file) {
    const progress = el("progress", { max: 1, value: 0, "aria-label": `Upload of ${file.name}` });
    const status = el("p", { class: "upload-status" });
    const item = el(
      "li",
      { class: "upload" },
      el("span", { class: "upload-name", text: file.name }),
      progress,
      status,
    );
    list.append(item);
    const entry = { file, item, progress, status };
    entries.push(entry);
    set(entry, "waiting", "Waiting\u2026");
    return entry;
  }

  function onProgress(entry, share) {
    entry.progress.value = share;
    if (share >= 1) {
      entry.progress.removeAttribute("value"); // indeterminate while the server reads the photo
      set(entry, "processing", "Reading the photo\u2026");
    }
  }

  async function sendWithKey(entry) {
    let key = apiKey.get();
    for (;;) {
      try {
        return await send(entry.file, key, { onProgress: (share) => onProgress(entry, share) });
      } catch (error) {
        if (error.status !== 401 && error.status !== 403) throw error;
        const stored = apiKey.get();
        if (stored && stored !== key) {
          key = stored; // another upload was given a new key meanwhile
          continue;
        }
        set(entry, "waiting", "Waiting for the API key\u2026");
        key = await askKey({ wrong: error.status === 403 });
        if (!key) throw new ApiError(error.status, "adding photos needs the API key");
        set(entry, "sending", "Uploading\u2026");
      }
    }
  }

  async function run(entry) {
    set(entry, "sending", "Uploading\u2026");
    try {
      const { id, status } = await sendWithKey(entry);
      const view = id
        ? el("button", { class: "link-button", type: "button", "data-id": id, text: "View" })
        : "";
      set(entry, "done", DONE[status] ?? "Added", " ", view);
      addedInBatch += 1;
    } catch (error) {
      set(entry, "refused", `Not added: ${describe(error)}`);
    }
  }

  function pump() {
    while (running < AT_ONCE && waiting.length) {
      running += 1;
      run(waiting.shift()).finally(() => {
        running -= 1;
        pump();
        if (!running && !waiting.length) finished();
      });
    }
  }

  function finished() {
    announce(`Uploads finished: ${title.textContent}`);
    if (addedInBatch) onAdded();
    addedInBatch = 0;
  }

  list.addEventListener("click", (event) => {
    const view = event.target.closest("[data-id]");
    if (view) onOpen(view.dataset.id);
  });
  $("[data-close]", tray).addEventListener("click", () => {
    tray.hidden = true;
    for (const entry of entries.filter((one) => one.state === "done" || one.state === "refused")) {
      entry.item.remove();
      entries.splice(entries.indexOf(entry), 1);
    }
  });

  return {
    add(files) {
      if (!files.length) return;
      tray.hidden = false;
      waiting.push(...[...files].map(entryFor));
      announce(`Uploading ${plural(files.length, "photo")}`);
      pump();
    },
  };
}
