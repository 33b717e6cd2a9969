/** The start view's "Things in your photos": the words votes taught and the classes most
 * photos show (GET /api/explore), each a card with a cover photo and a count that searches
 * for it; and a card for the near-duplicates when there are any. */

import { el, plural } from "./dom.js";
import { afterFirstScreen, showIn } from "./tile.js";

function card({ href, label, count, cover, kind }) {
  const image = cover
    ? el("img", {
        alt: "",
        width: 120,
        height: 120,
        loading: "lazy",
        decoding: "async",
        fetchpriority: "low", // after the grid's first photos
      })
    : el("span", { class: "topic-stack", "aria-hidden": "true" });
  // After the grid's first photos (tile.js): the covers are not what the user came for.
  if (cover) afterFirstScreen(() => showIn(image, cover));
  return el(
    "li",
    {},
    el(
      "a",
      { class: `topic topic-${kind}`, href },
      image,
      el("span", { class: "topic-label", text: label }),
      el("span", { class: "topic-count", text: count }),
    ),
  );
}

/** Show `topics` (and `stacks`: {total, cover} of the near-duplicate stacks) in `root`;
 * `onSearch(words)` and `onDuplicates()` follow a card. */
export function renderExplore(root, topics, stacks, { onSearch, onDuplicates }) {
  const list = root.querySelector(".topics");
  const cards = topics.map((topic) =>
    card({
      href: `?q=${encodeURIComponent(topic.query)}`,
      label: topic.label,
      count: `${plural(topic.count, "photo")}${topic.kind === "word" ? " \u00b7 taught" : ""}`,
      cover: topic.cover,
      kind: topic.kind,
    }),
  );
  if (stacks.total) {
    cards.push(
      card({
        href: "?view=duplicates",
        label: "Near-duplicates",
        count: plural(stacks.total, "stack"),
        cover: stacks.cover,
        kind: "duplicates",
      }),
    );
  }
  list.replaceChildren(...cards);
  root.hidden = cards.length === 0;
  list.onclick = (event) => {
    const link = event.target.closest("a.topic");
    if (!link || event.ctrlKey || event.metaKey || event.shiftKey) return;
    event.preventDefault();
    if (link.classList.contains("topic-duplicates")) onDuplicates();
    else onSearch(new URLSearchParams(link.search).get("q"));
  };
}
