/** Near-duplicates: stacks of near-copies of one photo (GET /api/duplicates). Results show
 * one photo of a stack, marked with how many copies there are; the duplicates view lists
 * every stack. */

import * as api from "./api.js";
import { PAGE } from "./pages.js";

const MOST = 200; // stacks asked for at once (the API's largest `limit`)
const WAIT_MS = 1500; // the longest results wait for the stacks
let loaded = null; // a promise of {total, byId: id -> stack ids, cover: a stack's photo}

/** The collection's stacks, fetched once per page (`again` after photos were added). */
export function loadStacks({ again = false } = {}) {
  if (!loaded || again) {
    loaded = api.duplicates(MOST, 0).then(
      ({ stacks, total }) => {
        const byId = new Map();
        for (const stack of stacks) {
          const ids = stack.results.map((result) => result.id);
          for (const id of ids) byId.set(id, ids);
        }
        return { total, byId, cover: stacks[0]?.results[0] ?? null };
      },
      () => ({ total: 0, byId: new Map(), cover: null }), // without stacks, every photo shows on its own
    );
  }
  return loaded;
}

/** `source` (see pages.js) with each stack shown once: the first of its photos to come,
 * marked with the stack's size (`result.stack`); the others are left out. */
export function stacked(source) {
  return async function* (first, signal) {
    // Results never wait long for the stacks: without them, each photo shows on its own.
    const late = new Promise((resolve) => setTimeout(() => resolve({ byId: new Map() }), WAIT_MS));
    const { byId } = await Promise.race([loadStacks(), late]);
    const seen = new Set();
    for await (const batch of source(first, signal)) {
      const results = [];
      for (const result of batch.results) {
        const stack = byId.get(result.id);
        if (stack?.some((id) => seen.has(id))) continue;
        seen.add(result.id);
        results.push(stack ? { ...result, stack: stack.length } : result);
      }
      yield { ...batch, results };
    }
  };
}

/** The duplicates view: every stack's photos in turn, each marked with its stack's size. */
export const duplicates = () =>
  async function* (first, signal) {
    for (let offset = 0, limit = Math.max(1, Math.ceil(first / 2)); ; offset += limit) {
      const batch = await api.duplicates(Math.min(limit, MOST), offset, signal);
      const results = batch.stacks.flatMap((stack, n) =>
        stack.results.map((result, at) => ({
          ...result,
          stack: stack.count,
          stackStart: at === 0,
          stackIndex: offset + n,
        })),
      );
      const last = offset + batch.stacks.length >= batch.total || batch.stacks.length < limit;
      yield { ...batch, results, last };
      if (last) return;
      limit = Math.ceil(PAGE / 2);
    }
  };
