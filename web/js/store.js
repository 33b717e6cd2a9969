/** What the page remembers: a session id and its votes for this browser session
 * (sessionStorage), and the API key on this device (localStorage). */

/** A storage that falls back to memory where the browser refuses storage (privacy modes). */
function box(storage) {
  const memory = new Map();
  const attempt = (action, fallback) => {
    try {
      return action(storage());
    } catch {
      return fallback();
    }
  };
  return {
    get: (name) =>
      attempt(
        (s) => s.getItem(name),
        () => memory.get(name) ?? null,
      ),
    set: (name, value) =>
      attempt(
        (s) => s.setItem(name, value),
        () => memory.set(name, value),
      ),
    remove: (name) =>
      attempt(
        (s) => s.removeItem(name),
        () => memory.delete(name),
      ),
  };
}

const session = box(() => window.sessionStorage);
const device = box(() => window.localStorage);

/** This browser session's id: votes are counted per session. */
export function sessionId() {
  let id = session.get("imgsearch.session");
  if (!id) {
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    id = Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
    session.set("imgsearch.session", id);
  }
  return id;
}

/** The votes cast in this session, by normalised search term and image id: 1 or -1. */
export const votes = {
  all() {
    try {
      return JSON.parse(session.get("imgsearch.votes")) || {};
    } catch {
      return {};
    }
  },
  of(term) {
    return this.all()[term] || {};
  },
  set(term, imageId, value) {
    const all = this.all();
    const forTerm = (all[term] ||= {});
    if (value) forTerm[imageId] = value;
    else delete forTerm[imageId];
    session.set("imgsearch.votes", JSON.stringify(all));
  },
};

export const apiKey = {
  get: () => device.get("imgsearch.api-key"),
  set: (key) => device.set("imgsearch.api-key", key),
};
