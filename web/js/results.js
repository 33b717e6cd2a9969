/** The result grid. It pages results in from a source (see pages.js) when the end of the grid
 * comes near (IntersectionObserver) or on "Load more", and after a vote it fetches the results
 * again and moves the tiles to their new places, animated, keeping focus where it was.
 *
 * A search by words is cut into sections where its results say how sure they are (`tier`):
 * "Best matches (N)", a divider, "Other photos"; with no match, a plain note that no photo
 * looks like the words, offering to teach them; "Did you mean" for words the vocabulary
 * does not know. */

import { el, icon, quoted, reducedMotion, upTo200 } from "./dom.js";
import { PAGE } from "./pages.js";
import { roving } from "./roving.js";

const SKELETONS = 12;
const FIRST_SCREEN = 12; // tiles whose photos are asked for before any other image

export class ResultList {
  #tiles = new Map(); // id -> tile element, in grid order
  #results = new Map(); // id -> result
  #source = null;
  #pages = null; // the source's live generator, null to start it afresh
  #abort = new AbortController();
  #queue = Promise.resolve(); // loads and refreshes run one at a time
  #loading = false;
  #done = true;
  #words = null; // a search by words: {query, matches, didYouMean}; null for other views

  /** `tile(result)` makes a tile, `update(tile, result)` brings one up to date;
   * `keep(id)` says a tile stays in its place when a refresh leaves its result out (a photo
   * voted down stays, dimmed, rather than the next one sliding under the pointer);
   * `onBusy(busy)` and `onError(error)` (a further page failed) report to the page;
   * `onTeach()` offers to teach words no photo looks like (by an example photo). */
  constructor({ grid, more, end, sentinel, tile, update, keep, onBusy, onError, onTeach }) {
    onTeach ??= () => document.getElementById("example-input")?.click();
    Object.assign(this, { grid, more, end, tile, update, keep, onBusy, onError, onTeach });
    this.keys = roving(grid);
    more.addEventListener("click", () => this.loadMore());
    this.observer = new IntersectionObserver(
      (entries) => entries.some((entry) => entry.isIntersecting) && this.loadMore(),
      { rootMargin: "0px 0px 600px 0px" },
    );
    this.sentinel = sentinel;
    this.observer.observe(sentinel);
  }

  get size() {
    return this.#tiles.size;
  }

  get done() {
    return this.#done;
  }

  /** The results shown, in order. */
  get results() {
    return [...this.#tiles.keys()].map((id) => this.#results.get(id));
  }

  /** The button that opens a result's tile, if it is shown. */
  opener(id) {
    return this.#tiles.get(id)?.querySelector(".tile-open") ?? null;
  }

  /** Show a new source. `prepare(batch)` sees its first batch before any tile is made.
   * Resolves with that batch once the first page is shown, or with null if another `show`
   * came first; rejects with the error (an ApiError) otherwise. `count`: how many results
   * to show at once (as many as were shown, when Back returns to a view). */
  async show(source, prepare = () => {}, count = PAGE) {
    this.#abort.abort();
    const abort = (this.#abort = new AbortController());
    this.#queue = Promise.resolve();
    this.#source = source;
    this.#pages = null;
    this.#done = false;
    this.#loading = true;
    this.#controls();
    this.#busy(true);
    try {
      const { found, first } = await this.#fetch(count, new Set(), abort.signal);
      if (abort.signal.aborted) return null;
      prepare(first);
      this.#words = wordsOf(first);
      this.#replace(found);
      return first;
    } catch (error) {
      if (abort.signal.aborted) return null;
      this.#done = true;
      this.#words = null;
      this.#replace([]);
      throw error;
    } finally {
      if (!abort.signal.aborted) {
        this.#loading = false;
        this.#busy(false);
        this.#controls();
      }
    }
  }

  /** The next page, if there is one and none is on its way. */
  loadMore() {
    if (this.#loading || this.#done || !this.#source) return this.#queue;
    this.#loading = true;
    this.#controls();
    const signal = this.#abort.signal;
    return this.#serial(async () => {
      try {
        const { found } = await this.#fetch(PAGE, new Set(this.#tiles.keys()), signal);
        if (!signal.aborted) this.#append(found);
      } catch (error) {
        if (signal.aborted) return;
        this.#pages = null; // a failed generator is finished: the next try starts afresh
        this.onError(error);
      } finally {
        if (!signal.aborted) {
          this.#loading = false;
          this.#controls();
        }
      }
    });
  }

  /** Fetch the results shown again (after a vote) and move the tiles to their new order.
   * Resolves with the first batch, or null if another view came first; rejects with an
   * ApiError. */
  refresh() {
    const signal = this.#abort.signal;
    return this.#serial(async () => {
      this.#pages = null;
      this.#done = false;
      this.onBusy(true);
      try {
        const { found, first } = await this.#fetch(Math.max(this.size, PAGE), new Set(), signal);
        if (signal.aborted) return null;
        this.#words = wordsOf(first) ?? this.#words;
        this.#sync(found);
        return first;
      } catch (error) {
        if (signal.aborted) return null; // another view came: nothing to refresh
        throw error;
      } finally {
        if (!signal.aborted) {
          this.onBusy(false);
          this.#controls();
        }
      }
    });
  }

  /** Update the tile of one result in place (its vote changed). */
  redraw(id) {
    const tile = this.#tiles.get(id);
    if (tile) this.update(tile, this.#results.get(id));
  }

  #serial(task) {
    const run = this.#queue.then(task);
    this.#queue = run.catch(() => {});
    return run;
  }

  /** `count` results not in `known` (which it extends), continuing the live generator or
   * starting one that asks for everything known plus `count` at once. */
  async #fetch(count, known, signal) {
    this.#pages ??= this.#source(known.size + count, signal);
    const pages = this.#pages;
    const found = [];
    let first = null;
    while (found.length < count && !this.#done) {
      const { value, done } = await pages.next();
      if (done || signal.aborted) break;
      first ??= value;
      for (const result of value.results) {
        if (known.has(result.id)) continue;
        known.add(result.id);
        found.push(result);
      }
      this.#done = value.last;
    }
    return { found, first };
  }

  #busy(busy) {
    this.grid.setAttribute("aria-busy", String(busy));
    this.grid.classList.toggle("stale", busy && this.size > 0);
    if (busy && this.size === 0) {
      const skeleton = () => {
        const item = document.createElement("li");
        item.className = "skeleton";
        item.setAttribute("aria-hidden", "true");
        return item;
      };
      this.grid.replaceChildren(...Array.from({ length: SKELETONS }, skeleton));
    }
    this.onBusy(busy);
  }

  #controls() {
    const more = !this.#done && this.size > 0;
    this.more.hidden = !more;
    this.more.textContent = this.#loading ? "Loading more photos\u2026" : "Load more photos";
    this.end.hidden = !(this.#done && this.size > 0);
    // Observing afresh reports the sentinel's current state: if it is still in view after a
    // page came in (a short page, a tall screen), the next page is loaded too.
    if (more && !this.#loading) {
      this.observer.unobserve(this.sentinel);
      this.observer.observe(this.sentinel);
    }
  }

  #replace(results) {
    this.#tiles.clear();
    this.#results.clear();
    this.grid.replaceChildren();
    this.#append(results);
  }

  #append(results) {
    const later = this.#tiles.size > 0; // a page after the first: its tiles come in gently
    const tiles = results.map((result) => {
      const tile = this.tile(result, this.#tiles.size < FIRST_SCREEN);
      if (later) tile.classList.add("later");
      this.#tiles.set(result.id, tile);
      this.#results.set(result.id, result);
      return tile;
    });
    this.grid.append(...tiles);
    this.#sections();
    this.keys.update();
  }

  /** Headings and notes between the tiles of a search by words (see the module comment). */
  #sections() {
    for (const node of this.grid.querySelectorAll(":scope > .results-section")) node.remove();
    const words = this.#words;
    if (!words || this.#tiles.size === 0) return;
    const tiles = [...this.#tiles];
    const other = tiles.find(([id]) => this.#results.get(id)?.tier !== "match")?.[1];
    const matched = other !== tiles[0][1];
    const top = [];
    if (words.didYouMean) top.push(suggestion(words.didYouMean));
    if (matched) {
      top.push(section("results-heading-matches", `Best matches (${upTo200(words.matches)})`));
    } else {
      top.push(nothingLike(words.query, this.onTeach));
    }
    this.grid.prepend(...top);
    if (other && matched) {
      other.before(section("results-divider", "Other photos"));
    } else if (other) {
      other.before(section("results-heading-other", "Other photos"));
    }
  }

  /** Make the grid show `results` in order, reusing tiles, animating the ones that move. */
  #sync(results) {
    for (const node of this.grid.querySelectorAll(":scope > .results-section")) node.remove();
    const focused = this.grid.contains(document.activeElement) ? document.activeElement : null;
    const focusedAt = [...this.#tiles.values()].indexOf(focused?.closest(".tile"));
    const before = new Map(
      [...this.#tiles.values()].map((tile) => [tile, tile.getBoundingClientRect()]),
    );

    const kept = new Map(); // tiles that stay where they are though their result is gone
    [...this.#tiles.keys()].forEach((id, at) => {
      if (this.keep(id) && !results.some((result) => result.id === id)) kept.set(at, id);
    });
    const shown = [...results];
    for (const [at, id] of kept) shown.splice(Math.min(at, shown.length), 0, this.#results.get(id));
    const tiles = new Map();
    this.#results.clear();
    for (const result of shown) {
      let tile = this.#tiles.get(result.id);
      if (tile) this.update(tile, result);
      else tile = this.tile(result);
      tiles.set(result.id, tile);
      this.#results.set(result.id, result);
    }
    for (const [id, tile] of this.#tiles) if (!tiles.has(id)) tile.remove();
    let at = this.grid.firstElementChild;
    for (const tile of tiles.values()) {
      if (tile === at) at = at.nextElementSibling;
      else if (tile.isConnected && this.grid.moveBefore) this.grid.moveBefore(tile, at);
      else this.grid.insertBefore(tile, at);
    }
    this.#tiles = tiles;
    this.#sections();
    this.keys.update();

    if (focused && document.activeElement !== focused) {
      const tile = focused.isConnected
        ? null
        : [...tiles.values()][Math.min(focusedAt, tiles.size - 1)];
      (tile ? tile.querySelector(".tile-open") : focused).focus({ preventScroll: true });
    }
    if (!reducedMotion()) glide(before);
  }
}

/** What the sections of a search by words need from its first batch; null for other views. */
function wordsOf(batch) {
  if (!batch || typeof batch.matches !== "number") return null;
  return { query: batch.query, matches: batch.matches, didYouMean: batch.did_you_mean ?? null };
}

/** A row of the grid that is no photo: a heading, a divider or a note across every column. */
function section(kind, text) {
  return el(
    "li",
    { class: `results-section ${kind}` },
    el("h3", { class: "results-section-title", text }),
  );
}

function suggestion(words) {
  const link = el("a", { href: `?${new URLSearchParams({ q: words })}`, text: words });
  return el(
    "li",
    { class: "results-section results-suggestion" },
    el("p", {}, "Did you mean ", link, "?"),
  );
}

/** No confident match: say so plainly and offer to teach the words. */
function nothingLike(query, onTeach) {
  const teach = el("button", {
    class: "button",
    type: "button",
    text: `Teach ${quoted(query)} with an example photo`,
  });
  teach.addEventListener("click", () => onTeach());
  return el(
    "li",
    { class: "results-section results-empty" },
    icon("learned"),
    el(
      "p",
      {},
      `No photo looks like ${quoted(query)}. Give a thumbs up to any that does, or `,
      teach,
    ),
  );
}

/** Animate elements from where they were (`before`: element -> rect) to where they are. */
function glide(before) {
  const seen = (rect) => rect.bottom > 0 && rect.top < innerHeight;
  for (const [element, was] of before) {
    if (!element.isConnected) continue;
    const now = element.getBoundingClientRect();
    const dx = was.left - now.left;
    const dy = was.top - now.top;
    if ((!dx && !dy) || !(seen(was) || seen(now))) continue;
    element.animate([{ transform: `translate(${dx}px, ${dy}px)` }, { transform: "none" }], {
      duration: 350,
      easing: "cubic-bezier(.2, 0, 0, 1)",
    });
  }
}
