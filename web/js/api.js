/** The imgsearch HTTP API (README, "HTTP API"); where it is comes from config.js. */

const config = window.IMGSEARCH_CONFIG || {};

export const API = `${(config.api || "").replace(/\/+$/, "")}/api`;

// Image URLs in answers are paths from the API's root (unless the server sets a public URL):
// they are resolved against where the API is, which may not be this page's origin.
const API_ROOT = new URL(config.api || "/", location.href);
export const resolve = (url) => new URL(url, API_ROOT).href;
export const UPLOAD_MODE = config.upload === "presigned" ? "presigned" : "direct";

/** A request that failed; `status` 0 means the server could not be reached. */
export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.name = "ApiError";
    this.status = status;
  }
}

export const unreachable = () => new ApiError(0, "the server could not be reached");

/** The reason in an error body: FastAPI sends `detail` as a string, or a list for bad input. */
export function detailOf(body, fallback) {
  const detail = body?.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((problem) => problem.msg).join("; ");
  return fallback;
}

export function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

// Requests boot.js started before the modules loaded, by path: each is taken once. Answers
// the server put in the page are its own: not taken where config.js names another API.
const inPage = document.getElementById("start-data") && config.api;
const started = (!inPage && window.IMGSEARCH_STARTED) || {};

async function call(path, { signal, ...init } = {}) {
  let response;
  try {
    const early = !init.method && started[path];
    delete started[path];
    response = await (early || fetch(API + path, { ...init, signal }));
  } catch (error) {
    if (signal?.aborted) throw error;
    throw unreachable();
  }
  const body = parseJson(await response.text());
  if (!response.ok) {
    throw new ApiError(
      response.status,
      detailOf(body, `${response.status} ${response.statusText}`),
    );
  }
  return body;
}

/** Query string from params; arrays repeat the name, empty values are left out. */
function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    for (const one of [value].flat()) if (one != null && one !== "") search.append(name, one);
  }
  return search;
}

const json = (body, headers = {}) => ({
  method: "POST",
  headers: { "Content-Type": "application/json", ...headers },
  body: JSON.stringify(body),
});

export const keyHeader = (apiKey) => (apiKey ? { "X-API-Key": apiKey } : {});

export const searchText = ({ q, limit, offset, session, exclude }, signal) =>
  call(`/search?${query({ q, limit, offset, session, exclude })}`, { signal });

export const browse = (limit, offset, signal) =>
  call(`/images?${query({ limit, offset })}`, { signal });

export const similar = (id, limit, offset, signal) =>
  call(`/images/${encodeURIComponent(id)}/similar?${query({ limit, offset })}`, { signal });

export const image = (id, signal) => call(`/images/${encodeURIComponent(id)}`, { signal });

export const explore = (signal) => call("/explore", { signal });

export const duplicates = (limit, offset, signal) =>
  call(`/duplicates?${query({ limit, offset })}`, { signal });

export const thumbnailUrl = (id) => `${API}/images/${encodeURIComponent(id)}/thumbnail`;

/** Photos like `file`. `fields` are `limit` and `offset`, and to teach words by example
 * `query` and `session`. */
export function searchPhoto(file, fields, signal) {
  const form = new FormData();
  form.append("file", file);
  for (const [name, value] of Object.entries(fields)) if (value != null) form.append(name, value);
  return call("/search/image", { method: "POST", body: form, signal });
}

export const vote = ({ query: words, imageId, value, session }) =>
  call("/feedback", json({ query: words, image_id: imageId, vote: value, session }));

/** The owner's view of what votes taught a word, and its reset (the API key is needed). */
export const learnedTerm = (term, apiKey) =>
  call(`/terms/${encodeURIComponent(term)}`, { headers: keyHeader(apiKey) });

export const resetTerm = (term, apiKey) =>
  call(`/terms/${encodeURIComponent(term)}`, { method: "DELETE", headers: keyHeader(apiKey) });

/** A file's type, or one guessed from its name where the browser did not know it. */
function imageType(file) {
  const extension = file.name.split(".").pop().toLowerCase();
  return file.type || `image/${extension === "jpg" ? "jpeg" : extension}`;
}

/** Cloud uploads: a presigned S3 POST for one file, then its status until it is indexed. */
export const createUpload = (file, apiKey) =>
  call("/uploads", json({ filename: file.name, content_type: imageType(file) }, keyHeader(apiKey)));

export const uploadStatus = (key) => call(`/uploads/status?${query({ key })}`);
