/** The page: it shows one view at a time (views.js) and wires what the user does to the
 * modules that do it. */

import * as api from "./api.js";
import { $, el, icon, plural, quoted } from "./dom.js";
import { renderExplore } from "./explore.js";
import { renderInterpretation } from "./interpretation.js";
import { askForKey } from "./keyprompt.js";
import { renderLearned } from "./learned.js";
import { announce, describe, hideNotice, hideToast, showNotice, toast } from "./messages.js";
import * as pages from "./pages.js";
import { photoInputs, shrink } from "./photo.js";
import { ResultList } from "./results.js";
import { duplicates, loadStacks, stacked } from "./stacks.js";
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
let lastVote = null; // what Undo puts back: {id, value, view}
let refreshWhenClosed = false; // a vote came while the viewer was open: the order waits
// Per term, the photos votes moved in this session: only they carry the "learned" mark.
const moved = new Map();
let toldShared = false;

/** What votes mean here: null unless there are words to vote for. */
function voteContext() {
  if (!views.voting(view) || !term) return null;
  const words = term;
  return {
    query: view.q,
    vote: (id) => votes.of(words)[id],
    moved: (id) => moved.get(words)?.has(id) ?? false,
  };
}

const list = new ResultList({
  grid: $("#grid"),
  more: $("#more"),
  end: $("#end"),
  sentinel: $("#sentinel"),
  tile: (result, first) => createTile(result, voteContext(), { first }),
  update: (tile, result) => updateTile(tile, result, voteContext()),
  keep: (id) => voteContext()?.vote(id) === -1, // voted down: stays in place, dimmed
  onBusy: (busy) => document.body.classList.toggle("busy", busy),
  onError: (error) => toast(`More photos could not be loaded: ${describe(error)}`),
});

const viewer = createViewer($("#viewer"), {
  results: () => list.results,
  context: voteContext,
  opener: (id) => list.opener(id),
  describe,
  onShown: (id) => shownInViewer(id),
  onSimilar: (id) => go({ kind: "similar", id }, { focus: true }),
  onVote: (id, value) => vote(id, value),
  onSearch: (words) => go({ kind: "search", q: words, exclude: new Set() }, { focus: true }),
});

const uploads = createUploads($("#uploads"), {
  askKey: (why) => askForKey($("#key-dialog"), why),
  describe,
  announce,
  onOpen: (id) => openViewer(id),
  onAdded: () => {
    if (view.kind !== "browse") return;
    list
      .refresh()
      .then((first) => {
        loadStacks({ again: true });
        summariseBrowse(first);
      }, (error) =>
        toast(`The new photos could not be shown: ${describe(error)}`),
      );
  },
});

// Views ----------------------------------------------------------------------------------

function go(next, { replace = false, focus = false } = {}) {
  leavingViewer = viewer.isOpen;
  viewer.close();
  if (!replace) rememberScroll();
  views.remember(next, { replace });
  return show(next, { focus });
}

function sourceFor(next) {
  if (next.kind === "search") {
    const votedDown = () =>
      new Set(Object.keys(votes.of(term)).filter((id) => votes.of(term)[id] < 0));
    return stacked(
      pages.search({ q: next.q, exclude: next.exclude, session: sessionId(), votedDown }),
    );
  }
  if (next.kind === "similar") return stacked(pages.similar(next.id));
  if (next.kind === "duplicates") return duplicates();
  const { file } = photos.get(next.photo) ?? {};
  if (next.kind === "photo") return pages.photo(file);
  if (next.kind === "example") return pages.photo(file, { query: next.q, session: sessionId() });
  return stacked(pages.browse());
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

async function show(next, { focus = false, restore = null } = {}) {
  const previous = view;
  view = next;
  term = null; // until the new words are back: a vote on a tile still shown is not for them
  lastVote = null;
  refreshWhenClosed = false;
  hideNotice();
  showContext(next, previous);
  const exploring = showExplore(next);
  if (focus) heading.focus();
  scrollTo({ top: 0 });
  try {
    const first = await list.show(
      sourceFor(next),
      (batch) => {
        term = (next.kind === "search" ? batch?.interpretation.query : batch?.query) ?? null;
      },
      restore?.count,
    );
    if (view === next && restore?.scroll) {
      await exploring; // what is above the grid first, or the grid would land lower
      if (view === next) restoreScroll(restore);
    }
    if (view === next) settled = next; // where it is now is worth remembering
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
  if (!list.grid.querySelector(".tile.learned")) return;
  const mark = el(
    "span",
    { class: "mark" },
    icon("learned"),
    el("span", { class: "visually-hidden", text: "Learned" }),
  );
  summary.append("Photos marked ", mark, " were moved by votes.");
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

/** How the words were read, with what votes taught so far. */
function showInterpretation(next, first) {
  const toggle = (id) => {
    const exclude = new Set(next.exclude);
    if (!exclude.delete(id)) exclude.add(id);
    go({ ...next, exclude }, { replace: true });
  };
  renderInterpretation(interpretation, first.interpretation, next.exclude, {
    onToggle: toggle,
    onTeach: () => $("#example-input").click(),
  });
}

/** The first page is in: the interpretation, the counts, or why there is nothing. */
function shown(next, first) {
  const more = list.done ? "" : " or more";
  if (next.kind === "search") {
    showInterpretation(next, first);
    summariseSearch();
    showLearned(next);
  } else {
    $("#learned").hidden = true;
  }
  if (next.kind === "browse") summariseBrowse(first);
  if (next.kind === "duplicates") {
    summary.textContent = `${plural(first.total, "stack")} of near-copies of one photo`;
  }
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

/** Vote on a photo for the words searched. Pressing the same vote again takes it back;
 * `undo` puts back the vote the photo had (`value`, 0 for none). */
async function vote(id, value, { undo = false } = {}) {
  if (!views.voting(view) || !term) return;
  const { q } = view;
  const shownIn = view;
  const words = term;
  const before = votes.of(words)[id] ?? 0;
  const next = !undo && before === value ? 0 : value;
  votes.set(words, id, next);
  list.redraw(id);
  try {
    await api.vote({ query: q, imageId: id, value: next, session: sessionId() });
  } catch (error) {
    votes.set(words, id, before);
    list.redraw(id);
    toast(`Your vote was not saved: ${describe(error)}`);
    return;
  }
  lastVote = undo ? null : { id, value: before, view: shownIn };
  toast(voteNews(q, next, undo), undo ? null : { label: "Undo", run: undoVote });
  if (viewer.isOpen) {
    refreshWhenClosed = true; // stepping through the photos must not skip or repeat any
    return;
  }
  await refreshAfterVotes();
}

function voteNews(q, value, undo) {
  if (undo) return "Undone: your vote is as it was.";
  if (value === 0) return `Your vote is taken back: ${quoted(q)} is as before it.`;
  let news =
    value > 0
      ? `Thanks: it comes first for ${quoted(q)} now.`
      : `Thanks: it is left out of ${quoted(q)} now.`;
  if (!toldShared) news += " Votes change others' results once several people agree.";
  toldShared = true;
  return news;
}

/** Take back the last vote (the toast's Undo, or Ctrl+Z). */
function undoVote() {
  const last = lastVote;
  if (!last || last.view !== view) return;
  lastVote = null;
  hideToast();
  vote(last.id, last.value, { undo: true });
}

/** Fetch the results again after votes; mark the photos the votes moved. */
async function refreshAfterVotes() {
  const words = term;
  const was = new Map(list.results.map((result, at) => [result.id, at]));
  try {
    const first = await list.refresh();
    if (!first || term !== words) return;
    const movedNow = moved.get(words) ?? new Set();
    list.results.forEach((result, at) => {
      if (was.has(result.id) && was.get(result.id) !== at && result.learned) movedNow.add(result.id);
      if (!result.learned) movedNow.delete(result.id);
    });
    moved.set(words, movedNow);
    for (const result of list.results) list.redraw(result.id);
    if (view.kind === "search") {
      showInterpretation(view, first);
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
  if (action === "open") openViewer(id);
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

// The image view and the history: opening a photo adds a history entry, so that Back (the
// phone's back gesture) closes it rather than leaving the view.
let leavingViewer = false; // the viewer closes because the page goes elsewhere

function openViewer(id) {
  if (!viewer.isOpen) views.pushImage(id);
  viewer.open(id);
}

function shownInViewer(id) {
  if (id) return views.rememberImage(id);
  if (refreshWhenClosed) {
    refreshWhenClosed = false;
    refreshAfterVotes();
  }
  if (leavingViewer) leavingViewer = false;
  else if (history.state?.viewer) history.back();
  else views.rememberImage(null);
}

// The view whose photos are in and in place (scrolled back to where they were). Until then
// the grid holds the last view's photos, or the page is at the top on its way back down:
// remembered, that would overwrite where the user was in this entry (a scroll's timer runs
// on after Back or a new view).
let settled = null;

/** Keep where the user is in this view (scroll, photos loaded) in its history entry. */
function rememberScroll() {
  if (!list.size || view !== settled) return;
  // The photo in the middle of the screen, and where it is: Back puts it there again, even if
  // what is above the grid came out taller or shorter.
  const tile = document.elementFromPoint(innerWidth / 2, innerHeight / 2)?.closest(".tile");
  const anchor = tile ? { id: tile.dataset.id, top: tile.getBoundingClientRect().top } : null;
  history.replaceState({ ...history.state, scroll: scrollY, count: list.size, anchor }, "");
}

function restoreScroll({ scroll, anchor }) {
  scrollTo({ top: scroll });
  const tile = anchor && list.grid.querySelector(`.tile[data-id="${CSS.escape(anchor.id)}"]`);
  if (tile) scrollBy({ top: tile.getBoundingClientRect().top - anchor.top });
}

let scrollTimer = 0;
addEventListener("scroll", () => {
  clearTimeout(scrollTimer);
  scrollTimer = setTimeout(rememberScroll, 200);
});

/** On the start view: things in the photos, each a search, and the near-duplicates. */
function showExplore(next) {
  const root = $("#explore");
  if (next.kind !== "browse") {
    root.hidden = true;
    return Promise.resolve();
  }
  root.hidden = false; // its room is kept from the start: the grid must not jump down later
  return Promise.all([api.explore(), loadStacks()]).then(
    ([{ topics }, stacks]) => {
      if (view !== next) return;
      renderExplore(root, topics, stacks, {
        onSearch: (q) => go({ kind: "search", q, exclude: new Set() }, { focus: true }),
        onDuplicates: () => go({ kind: "duplicates" }, { focus: true }),
      });
    },
    () => {
      root.hidden = true; // the start view works without it
    },
  );
}

/** Show the view the address names, and the photo it names in the image view, if any. */
async function showAddress() {
  const image = views.imageInAddress();
  const next = views.fromAddress(photos);
  const state = history.state;
  leavingViewer = viewer.isOpen;
  viewer.close();
  await show(next, { restore: state?.scroll ? state : null });
  if (image) viewer.open(image);
}

history.scrollRestoration = "manual"; // each view starts at the top, or where it was left
addEventListener("popstate", () => {
  // The same view with or without a photo open: only the image view opens or closes.
  if (views.same(view, views.fromAddress(photos))) {
    const image = views.imageInAddress();
    if (image) viewer.open(image);
    else if (viewer.isOpen) {
      leavingViewer = true;
      viewer.close();
    }
    return;
  }
  showAddress();
});

addEventListener("keydown", (event) => {
  const typing = event.target.closest?.("input, textarea, [contenteditable]");
  if ((event.ctrlKey || event.metaKey) && event.key === "z" && !typing && lastVote) {
    event.preventDefault();
    undoVote();
  }
});

loadStacks();
showAddress();
