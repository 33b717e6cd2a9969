/** For the collection's owner (someone holding the API key): what votes taught the searched
 * word, from how many independent clients, with "Reset this word". Others never see it: the
 * panel stays hidden without a key, and when the server refuses the key. */

import * as api from "./api.js";
import { el, plural, quoted } from "./dom.js";
import { apiKey } from "./store.js";

const SHOWN_IMAGES = 8;
let drawing = 0; // the latest call: an answer for an earlier search is not drawn

/** Draws the panel for `term` into `container` (hidden when there is nothing to show);
 * `onReset(message)` runs once the word was reset. */
export async function renderLearned(container, term, { onReset, describe }) {
  const mine = ++drawing;
  container.replaceChildren();
  container.hidden = true;
  const key = apiKey.get();
  if (!key || !term) return;
  let learned;
  try {
    learned = await api.learnedTerm(term, key);
  } catch {
    return; // a wrong key, or an API without the owner's routes: nothing for this visitor
  }
  if (mine !== drawing || !learned.votes) return;
  const list = el("ul", { class: "learned-images" });
  for (const image of learned.images.slice(0, SHOWN_IMAGES)) {
    const weight = image.weight > 0 ? `+${image.weight}` : String(image.weight);
    list.append(
      el(
        "li",
        {},
        el("img", {
          src: api.thumbnailUrl(image.id),
          alt: image.key || image.id,
          width: 48,
          height: 48,
        }),
        el("span", {
          text: `${image.up_clients} up, ${image.down_clients} down; weight for others ${weight}`,
        }),
      ),
    );
  }
  const reset = el("button", { class: "button", type: "button", text: "Reset this word" });
  const status = el("p", { class: "learned-status", role: "status" });
  reset.addEventListener("click", async () => {
    reset.disabled = true;
    try {
      const done = await api.resetTerm(learned.term, key);
      onReset(`${quoted(done.term)} was reset: ${plural(done.votes_removed, "vote")} removed.`);
    } catch (error) {
      reset.disabled = false;
      status.textContent = `The word could not be reset: ${describe(error)}`;
    }
  });
  const summary =
    `What votes taught ${quoted(learned.term)}: ${plural(learned.votes, "vote")} from ` +
    `${plural(learned.sessions, "session")} and ${plural(learned.clients, "client")}`;
  container.append(
    el(
      "details",
      {},
      el("summary", { text: summary }),
      el("p", {
        class: "learned-help",
        text: "Photos teach other visitors only when at least three clients agree on them.",
      }),
      list,
      reset,
      status,
    ),
  );
  container.hidden = false;
}
