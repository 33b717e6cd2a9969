/** Views: what the page can show, what each is called, how it sits in the address (so Back,
 * reload and shared links work) and what it says when it has nothing to show. The user's own
 * photo cannot go in an address: views of it name it by id in the history entry, while the
 * page holds it in memory.
 * The photo open in the image view goes in the address too, beside the view. */

import { quoted } from "./dom.js";

const IMAGE_ID = /^[0-9a-f]{16}$/;

const HEADINGS = {
  browse: () => "All photos",
  search: (view) => `Results for ${quoted(view.q)}`,
  similar: () => "More like this photo",
  photo: () => "Photos like yours",
  example: (view) => `Teaching ${quoted(view.q)} by example`,
  duplicates: () => "Near-duplicates",
};

export const heading = (view) => HEADINGS[view.kind](view);

/** Views whose results are voted on for words. */
export const voting = (view) => view.kind === "search" || view.kind === "example";

/** Views of the user's own photo: photos like it, or like an example of words. */
export const ofPhoto = (view) => view.kind === "photo" || view.kind === "example";

/** The view the address and this history entry name. `photos` holds the user's photos by
 * id: a view of one that is gone (the page was reloaded) becomes the collection. */
export function fromAddress(photos) {
  const params = new URLSearchParams(location.search);
  const q = params.get("q")?.trim();
  if (q) {
    const exclude = params.getAll("exclude").map(Number).filter(Number.isInteger);
    return { kind: "search", q, exclude: new Set(exclude) };
  }
  if (params.get("view") === "duplicates") return { kind: "duplicates" };
  const similar = params.get("similar");
  if (similar && IMAGE_ID.test(similar)) return { kind: "similar", id: similar };
  const state = history.state;
  if (state?.photo && photos.has(state.photo)) {
    const photo = state.photo;
    return state.example ? { kind: "example", q: state.example, photo } : { kind: "photo", photo };
  }
  return { kind: "browse" };
}

/** The photo the image view shows, as the address names it (`image=ID`), or null. */
export function imageInAddress() {
  const id = new URLSearchParams(location.search).get("image");
  return id && IMAGE_ID.test(id) ? id : null;
}

/** Whether two views show the same thing (a photo open in the image view aside). */
export function same(a, b) {
  if (a.kind !== b.kind || a.q !== b.q || a.id !== b.id || a.photo !== b.photo) return false;
  const excluded = (view) => [...(view.exclude ?? [])].sort().join();
  return excluded(a) === excluded(b);
}

/** A new history entry for the photo opened in the image view: Back closes the view. */
export function pushImage(id) {
  const url = new URL(location.href);
  url.searchParams.set("image", id);
  history.pushState({ ...history.state, viewer: true }, "", url);
}

/** Name the photo the image view shows in the address (null: none), in place: reload and
 * shared links open it again, and Back to this entry from a view opened in it shows it. */
export function rememberImage(id) {
  const url = new URL(location.href);
  if (url.searchParams.get("image") === id || (!id && !url.searchParams.has("image"))) return;
  if (id) url.searchParams.set("image", id);
  else url.searchParams.delete("image");
  history.replaceState(history.state, "", url);
}

/** Put `view` in the address: a new history entry, or (`replace`) in place of this one. */
export function remember(view, { replace = false } = {}) {
  const params = new URLSearchParams();
  if (view.kind === "search") {
    params.set("q", view.q);
    for (const id of view.exclude) params.append("exclude", id);
  }
  if (view.kind === "similar") params.set("similar", view.id);
  if (view.kind === "duplicates") params.set("view", "duplicates");
  const state = { photo: ofPhoto(view) && view.photo, example: view.kind === "example" && view.q };
  const url = params.size ? `?${params}` : location.pathname;
  history[replace ? "replaceState" : "pushState"](state, "", url);
}

/** What an empty view says: `{title, text, action?}`; `actions` offers `addPhotos` and
 * `putBack` (the classes struck out of a search). */
export function emptyNotice(view, actions) {
  if (view.kind === "browse") {
    return {
      title: "No photos yet",
      text:
        "add some with \u201cAdd photos\u201d or by dropping them on this page, or a whole " +
        "folder with the command imgsearch ingest FOLDER.",
      action: { label: "Add photos", run: actions.addPhotos },
    };
  }
  if (view.kind === "search") {
    const struck = view.exclude.size > 0;
    return {
      title: `No photos match ${quoted(view.q)}`,
      text: struck
        ? "every class it means was left out."
        : "try other words, or search with a photo.",
      action: struck ? { label: "Put back the classes left out", run: actions.putBack } : null,
    };
  }
  if (view.kind === "similar") {
    return {
      title: "Nothing similar yet",
      text: "this photo is still being indexed. Try again in a moment.",
    };
  }
  if (view.kind === "duplicates") {
    return {
      title: "No near-duplicates",
      text: "no two photos here are copies of one another (resized, re-encoded or cropped).",
    };
  }
  return { title: "No similar photos", text: "the collection is empty, or still being indexed." };
}
