/** The page: it shows one view at a time (views.js) and wires what the user does to the
 * modules that do it. */

import * as api from "./api.js";
import { $, el, icon, plural, quoted } from "./dom.js";
import { renderInterpretation } from "./interpretation.js";
import { askForKey } from "./keyprompt.js";
import { renderLearned } from "./learned.js";
import { announce, describe, hideNotice, showNotice, toast } from "./messages.js";
import * as pages from "./pages.js";
import { photoInputs, shrink } from "./photo.js";
import { ResultList } from "./results.js";
import { sessionId, votes } from "./store.js";
import { createTile, updateTile } from "./tile.js";
import { createUploads } from "./uploads.js";
import { createViewer } from "./viewer.js";
import * as views from "./views.js";

const input = $("#q");
const heading = $("#results-heading");
const summary = $("#summary");
const interpretation = $("#interpretation");
const preview = $("#query-photo");

let view = { kind: "browse" };
let term = null; // the words as the server normalised them: votes are kept under them
// The user's photos searched with, by id (views name them), each {file, url}: the last few.
const photos = new Map();
const KEPT_PHOTOS = 10;
let photoCount = 0;

/** What votes mean here: null unless there are words to vote for. */
function voteContext() {
  if (!views.voting(view) || !term) return null;
  const words = term;
  return { query: view.q, vote: (id) => votes.of(words)[id] };
}

const list = new ResultList({
  grid: $("#grid"),
  more: $("#more"),
  end: $("#end"),
  sentinel: $("#sentinel"),
  tile: (result) => createTile(result, voteContext()),
  update: (tile, result) => updateTile(tile, result, voteContext()),
  onBusy: (busy) => document.body.classList.toggle("busy", busy),
  onError: (error) => toast(`More photos could not be loaded: ${describe(error)}`),
});

const viewer = createViewer($("#viewer"), {
  results: () => list.results,
  context: voteContext,
  opener: (id) => list.opener(id),
  describe,
  onShown: (id) => views.rememberImage(id),
  onSimilar: (id) => go({ kind: "similar", id }, { focus: true }),
  onVote: (id, value) => vote(id, value),
  onSearch: (words) => go({ kind: "search", q: words, exclude: new Set() }, { focus: true }),
});

const uploads = createUploads($("#uploads"), {
  askKey: (why) => askForKey($("#key-dialog"), why),
  describe,
  announce,
  onOpen: (id) => viewer.open(id),
  onAdded: () => {
    if (view.kind !== "browse") return;
    list
      .refresh()
      .then(summariseBrowse, (error) =>
        toast(`The new photos could not be shown: ${describe(error)}`),
      );
  },
});

// Views ----------------------------------------------------------------------------------

function go(next, { replace = false, focus = false } = {}) {
  viewer.close();
  views.remember(next, { replace });
  return show(next, { focus });
}

function sourceFor(next) {
  if (next.kind === "search") {
    const votedDown = () =>
      new Set(Object.keys(votes.of(term)).filter((id) => votes.of(term)[id] < 0));
    return pages.search({ q: next.q, exclude: next.exclude, session: sessionId(), votedDown });
  }
  if (next.kind === "similar") return pages.similar(next.id);
  const { file } = photos.get(next.photo) ?? {};
  if (next.kind === "photo") return pages.photo(file);
  if (next.kind === "example") return pages.photo(file, { query: next.q, session: sessionId() });
  return pages.browse();
}

/** The heading, the photo searched with, the words in the box: before any result is in. */
function showContext(next, previous) {
  const sameWords = previous.kind === "search" && next.kind === "search" && previous.q === next.q;
  if (!sameWords) renderInterpretation(interpretation, null);
  input.value = next.kind === "search" ? next.q : "";
  heading.textContent = views.heading(next);
  const photo = photos.get(next.photo);
  summary.textContent = next.kind === "photo" ? photo.file.name : "";
  if (next.kind === "example") {
    const check = el("button", {
      class: "link-button",
      type: "button",
      text: "See what I learned",
    });
    check.addEventListener("click", () =>
      go({ kind: "search", q: next.q, exclude: new Set() }, { focus: true }),
    );
    summary.append(`Give a thumbs up to the photos that show ${quoted(next.q)}. `, check);
  }
  document.title = next.kind === "search" ? `${next.q} \u2013 imgsearch` : "imgsearch";
  $("#clear").hidden = next.kind === "browse";
  preview.hidden = next.kind !== "similar" && !views.ofPhoto(next);
  preview.classList.remove("broken");
  const image = $("img", preview);
  if (next.kind === "similar") {
    image.src = api.thumbnailUrl(next.id);
    image.alt = "The photo these are like";
  } else if (views.ofPhoto(next)) {
    image.src = photo.url;
    image.alt = `Your photo, ${photo.file.name}`;
  }
}

async function show(next, { focus = false } = {}) {
  const previous = view;
  view = next;
  term = null; // until the new words are back: a vote on a tile still shown is not for them
  hideNotice();
  showContext(next, previous);
  if (focus) heading.focus();
  scrollTo({ top: 0 });
  try {
    const first = await list.show(sourceFor(next), (batch) => {
      term = (next.kind === "search" ? batch?.interpretation.query : batch?.query) ?? null;
    });
    if (view === next && first) shown(next, first);
  } catch (error) {
    if (view === next) failed(next, error);
  }
}

function summariseBrowse(first) {
  if (view.kind === "browse" && first) {
    summary.textContent = `${plural(first.total, "photo")}, newest first`;
  }
}

function summariseSearch() {
  summary.replaceChildren();
  if (!list.results.some((result) => result.learned)) return;
  const mark = el(
    "span",
    { class: "mark" },
    icon("learned"),
    el("span", { class: "visually-hidden", text: "Learned" }),
  );
  summary.append("Photos marked ", mark, " are placed by what votes taught.");
}

/** For the owner (who holds the key): what votes taught the searched words. */
function showLearned(next) {
  renderLearned($("#learned"), term, {
    onReset: (message) => {
      toast(message);
      go({ ...next }, { replace: true });
    },
    describe,
  });
}

/** The first page is in: the interpretation, the counts, or why there is nothing. */
function shown(next, first) {
  const more = list.done ? "" : " or more";
  if (next.kind === "search") {
    const toggle = (id) => {
      const exclude = new Set(next.exclude);
      if (!exclude.delete(id)) exclude.add(id);
      go({ ...next, exclude }, { replace: true });
    };
    renderInterpretation(interpretation, first.interpretation, next.exclude, {
      onToggle: toggle,
      onTeach: () => $("#example-input").click(),
    });
    summariseSearch();
    showLearned(next);
  } else {
    $("#learned").hidden = true;
  }
  if (next.kind === "browse") summariseBrowse(first);
  if (list.size) {
    announce(`${plural(list.size, "photo")}${more}: ${heading.textContent}`);
    return;
  }
  const empty = views.emptyNotice(next, {
    addPhotos: () => $("#add-input").click(),
    putBack: () => go({ ...next, exclude: new Set() }, { replace: true }),
  });
  showNotice({ kind: "empty", ...empty });
}

function failed(next, error) {
  const refused = views.ofPhoto(next) && error.status >= 400 && error.status < 500;
  showNotice({
    kind: "error",
    title: refused ? "This file cannot be searched with" : "The photos could not be loaded",
    text: describe(error),
    action: refused ? null : { label: "Try again", run: () => show(next, { focus: true }) },
  });
}

// What the user does ---------------------------------------------------------------------

async function vote(id, value) {
  if (!views.voting(view) || !term) return;
  const { q } = view;
  const words = term;
  const before = votes.of(words)[id];
  votes.set(words, id, value);
  list.redraw(id);
  try {
    await api.vote({ query: q, imageId: id, value, session: sessionId() });
  } catch (error) {
    votes.set(words, id, before);
    list.redraw(id);
    toast(`Your vote was not saved: ${describe(error)}`);
    return;
  }
  toast(
    value > 0
      ? `Thanks: it comes first for ${quoted(q)} now.`
      : `Thanks: it is left out of ${quoted(q)} now.`,
  );
  try {
    await list.refresh();
    if (view.kind === "search") {
      summariseSearch();
      showLearned(view);
    }
  } catch (error) {
    toast(`The results could not be updated: ${describe(error)}`);
  }
}

/** Search with the user's photo: for photos like it, or (`words`) as an example of words. */
async function searchWithPhoto(file, words = null) {
  const sent = await shrink(file);
  const id = `p${++photoCount}`;
  photos.set(id, { file: sent, url: URL.createObjectURL(sent) });
  for (const [old, { url }] of photos) {
    if (photos.size <= KEPT_PHOTOS) break;
    URL.revokeObjectURL(url);
    photos.delete(old);
  }
  go(words ? { kind: "example", q: words, photo: id } : { kind: "photo", photo: id }, {
    focus: true,
  });
}

$("#search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const q = input.value.trim();
  if (matchMedia("(pointer: coarse)").matches) input.blur(); // let the results past the keyboard
  go(q ? { kind: "search", q, exclude: new Set() } : { kind: "browse" });
});

$("#clear").addEventListener("click", () => go({ kind: "browse" }, { focus: true }));

$("#grid").addEventListener("click", (event) => {
  const button = event.target.closest("button");
  const id = button?.closest(".tile")?.dataset.id;
  if (!id) return;
  const action = button.classList.contains("tile-open") ? "open" : button.dataset.action;
  if (action === "open") viewer.open(id);
  else if (action === "similar") go({ kind: "similar", id }, { focus: true });
  else if (action === "up" || action === "down") vote(id, action === "up" ? 1 : -1);
});

$(".brand").addEventListener("click", (event) => {
  if (event.ctrlKey || event.metaKey || event.shiftKey) return; // a new tab or window
  event.preventDefault();
  go({ kind: "browse" }, { focus: true });
});

$("#example-input").addEventListener("change", (event) => {
  const [file] = event.target.files;
  if (file && view.kind === "search") searchWithPhoto(file, view.q);
  event.target.value = "";
});

$("#add-button").addEventListener("click", () => $("#add-input").click());
$("#add-input").addEventListener("change", (event) => {
  uploads.add([...event.target.files]);
  event.target.value = "";
});

photoInputs({
  button: $("#photo-button"),
  input: $("#photo-input"),
  overlay: $("#drop"),
  onPhoto: searchWithPhoto,
  onAdd: (files) => uploads.add(files),
});

$("img", preview).addEventListener("error", () => preview.classList.add("broken"));

/** Show the view the address names, and the photo it names in the image view, if any. */
async function showAddress() {
  const image = views.imageInAddress();
  viewer.close();
  await show(views.fromAddress(photos));
  if (image) viewer.open(image);
}

history.scrollRestoration = "manual"; // each view starts at the top
addEventListener("popstate", () => showAddress());

showAddress();
