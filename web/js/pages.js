/** Where results come from. A source is `(first, signal) => async generator` of batches
 * `{results, last, ...}`, best first; `first` is how many results the first request asks for
 * (more than one page when the grid is refreshed in place), later requests ask for a page. */

import * as api from "./api.js";

export const PAGE = 48;
const MOST = 200; // the API's largest `limit`

/** Pages by limit and offset until a short page, or until `total` when the API gives one. */
async function* byOffset(fetchPage, first) {
  for (let offset = 0, limit = Math.min(first, MOST); ; offset += limit, limit = PAGE) {
    const batch = await fetchPage(limit, offset);
    const end = batch.total ?? Infinity;
    const last = batch.results.length < limit || offset + batch.results.length >= end;
    yield { ...batch, last };
    if (last) return;
  }
}

export const browse = () => (first, signal) =>
  byOffset((limit, offset) => api.browse(limit, offset, signal), first);

export const similar = (id) => (first, signal) =>
  byOffset((limit, offset) => api.similar(id, limit, offset, signal), first);

/** Results for words. When the words mean nothing yet (level "none"), the search goes on
 * through the whole collection so there are photos to teach the new word with: voting for
 * one pins it to the word. `votedDown()` is the set of ids this session voted against. */
export function search({ q, exclude, session, votedDown }) {
  return async function* (first, signal) {
    let teach = false;
    const fetchPage = (limit, offset) =>
      api.searchText({ q, limit, offset, session, exclude: [...exclude] }, signal);
    for await (const batch of byOffset(fetchPage, first)) {
      teach = batch.interpretation.level === "none";
      yield { ...batch, last: batch.last && !teach };
    }
    if (!teach) return;
    for await (const batch of browse()(PAGE, signal)) {
      const down = votedDown();
      yield { ...batch, results: batch.results.filter((result) => !down.has(result.id)) };
    }
  };
}

/** Reverse image search; with `example` ({query, session}) the photo is an example of words
 * being taught, and the batches carry the words as votes must name them (`query`). The photo
 * is not stored, so each page sends it again. */
export const photo = (file, example = {}) => (first, signal) =>
  byOffset((limit, offset) => api.searchPhoto(file, { limit, offset, ...example }, signal), first);
