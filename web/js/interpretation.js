/** How the words were understood, as chips: "Showing: tabby cat, Egyptian cat, ...". Each class
 * is a toggle: pressing it strikes the class out and the search runs again without it. Words
 * the vocabulary does not know, or only guesses at, invite the user to teach them: by voting,
 * or by giving an example photo. What votes already taught is said too. */

import { el, icon, plural, quoted, upTo200 } from "./dom.js";

const MINOR = 0.25; // classes weighing less than this share of the heaviest are folded away

/** A class as a toggle, with how many photos it stands for in this collection (counted on
 * the first page of results; none for a class struck out). */
function chip(cls, excluded) {
  const counted = typeof cls.photos === "number" && !excluded;
  return el(
    "li",
    { class: cls.minor && !excluded ? "minor" : null },
    el(
      "button",
      {
        class: "chip",
        type: "button",
        "data-class": cls.id,
        "aria-pressed": String(!excluded),
        title: `${excluded ? "Put back" : "Leave out"} ${cls.label}${
          counted ? ` (${upTo200(cls.photos)} ${cls.photos === 1 ? "photo" : "photos"})` : ""
        }`,
      },
      el("span", { text: cls.label }),
      counted ? el("span", { class: "chip-count", text: upTo200(cls.photos) }) : null,
      icon(excluded ? "plus" : "close"),
    ),
  );
}

function chips(interpretation, excluded, expanded) {
  const heaviest = Math.max(0, ...interpretation.classes.map((cls) => cls.weight));
  const classes = interpretation.classes.map((cls) => ({
    ...cls,
    minor: cls.weight < heaviest * MINOR,
  }));
  const folded = classes.filter((cls) => cls.minor && !excluded.has(cls.id)).length;
  const list = el(
    "ul",
    {
      class: `chips${expanded ? " expanded" : ""}`,
      id: "chips",
      "aria-labelledby": "chips-label",
      "aria-describedby": "chips-help",
    },
    ...classes.map((cls) => chip(cls, excluded.has(cls.id))),
  );
  const more = el("button", {
    class: "chip-more",
    type: "button",
    "aria-controls": "chips",
    "aria-expanded": String(expanded),
    "data-focus-key": "more",
    text: expanded ? "Fewer" : `+${folded} more`,
  });
  more.addEventListener("click", () => {
    const open = list.classList.toggle("expanded");
    more.setAttribute("aria-expanded", String(open));
    more.textContent = open ? "Fewer" : `+${folded} more`;
  });
  const label =
    interpretation.level === "high" ? "Showing" : interpretation.learned ? "Also guessing" : "Guessing";
  return [
    el(
      "div",
      { class: "chips-row" },
      el("span", { class: "chips-label", id: "chips-label", text: label }),
      list,
      folded ? more : "",
    ),
    el("p", {
      class: "visually-hidden",
      id: "chips-help",
      text: "Press a class to leave it out of the search; press it again to put it back.",
    }),
  ];
}

/** Sentences about words that are new, guessed, or taught by votes. */
function notes(interpretation) {
  const taught = interpretation.learned;
  const learnedWords = new Set(
    interpretation.terms.filter((term) => term.source === "learned").map((term) => term.phrase),
  );
  const said = [];
  if (taught) {
    // Once votes taught the words, they are no longer new: say what was learned, not that.
    const guesses = interpretation.level === "high" ? "" : " The photos after those are guesses.";
    return [
      `Votes taught me about ${quoted(interpretation.query)}: ` +
        `${plural(taught.votes, "vote")} from ${plural(taught.sessions, "session")}.${guesses}`,
    ];
  }
  if (interpretation.level === "none") {
    said.push(
      `New word ${quoted(interpretation.query)}: teach me by voting. Give a thumbs up to the ` +
        "photos below that show it, or start from a photo of your own.",
    );
  } else {
    for (const term of interpretation.terms) {
      if (term.source === "unknown" && !learnedWords.has(term.phrase)) {
        said.push(`New word ${quoted(term.phrase)}: teach me by voting.`);
      } else if (term.source === "related") {
        said.push(
          `${quoted(term.phrase)} is new to me: these are guesses from related words. Vote to teach me.`,
        );
      }
    }
  }
  return said;
}

/** Show `interpretation` in `root`. `onToggle(classId)` strikes a class out or puts it back;
 * `onTeach()` asks for an example photo of words that are not understood well. */
export function renderInterpretation(
  root,
  interpretation,
  excluded = new Set(),
  { onToggle, onTeach } = {},
) {
  const active = document.activeElement;
  const refocus = root.contains(active) ? (active.dataset.class ?? active.dataset.focusKey) : null;
  const expanded =
    root.dataset.query === interpretation?.query && root.querySelector(".chips.expanded") !== null;
  root.replaceChildren();
  root.dataset.query = interpretation?.query ?? "";
  if (!interpretation) return;

  if (interpretation.classes.length) root.append(...chips(interpretation, excluded, expanded));
  const said = notes(interpretation);
  if (said.length) {
    const teach =
      interpretation.level === "high"
        ? ""
        : el("button", {
            class: "link-button",
            type: "button",
            "data-focus-key": "teach",
            text: "Teach with an example photo",
          });
    root.append(
      el("div", { class: "hint" }, icon("learned"), el("p", {}, said.join(" "), " ", teach)),
    );
  }
  root.onclick = (event) => {
    const button = event.target.closest("button");
    if (button?.dataset.class) onToggle(Number(button.dataset.class));
    else if (button?.dataset.focusKey === "teach") onTeach();
  };
  const row = root.querySelector(".chips-row");
  if (row) {
    // On a narrow screen the row scrolls sideways: its edge fades while there is more.
    const edge = () => {
      row.classList.toggle("scrolls", row.scrollWidth > row.clientWidth + 1);
      row.classList.toggle("at-end", row.scrollLeft + row.clientWidth >= row.scrollWidth - 1);
    };
    requestAnimationFrame(edge);
    row.addEventListener("scroll", edge, { passive: true });
  }
  if (refocus) {
    root.querySelector(`[data-class="${refocus}"], [data-focus-key="${refocus}"]`)?.focus();
  }
}
