/** Sending one file to the collection, with progress: straight to the API (local), or through
 * an S3 presigned POST (cloud) and then waiting until the file is indexed or refused. Both
 * resolve with `{id, status}` and reject with an ApiError whose message is the reason. */

import * as api from "./api.js";
import { ApiError } from "./api.js";

const POLL_FIRST = 500; // ms between status checks at first, growing to POLL_MOST
const POLL_MOST = 4000;
const POLL_GIVE_UP = 3 * 60 * 1000;

/** POST a form with XMLHttpRequest, the one browser API that reports upload progress. */
function post(url, form, { headers = {}, onProgress }) {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("POST", url);
    for (const [name, value] of Object.entries(headers)) request.setRequestHeader(name, value);
    request.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    });
    request.addEventListener("load", () =>
      resolve({ status: request.status, text: request.responseText }),
    );
    request.addEventListener("error", () => reject(api.unreachable()));
    request.send(form);
  });
}

export async function direct(file, apiKey, { onProgress }) {
  const form = new FormData();
  form.append("file", file);
  const { status, text } = await post(`${api.API}/images`, form, {
    headers: api.keyHeader(apiKey),
    onProgress,
  });
  const body = api.parseJson(text);
  if (status !== 201) {
    throw new ApiError(status, api.detailOf(body, `the server answered ${status}`));
  }
  return { id: body.id, status: body.status };
}

/** S3 answers errors in XML: <Error><Code>EntityTooLarge</Code><Message>...</Message></Error> */
function storageError(status, text) {
  const xml = new DOMParser().parseFromString(text || "<none/>", "application/xml");
  const message = xml.querySelector("Message")?.textContent;
  return new ApiError(
    status,
    `the storage refused the file${message ? `: ${message}` : ` (${status})`}`,
  );
}

const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export async function presigned(file, apiKey, { onProgress }) {
  if (file.type && !file.type.startsWith("image/")) {
    throw new ApiError(415, `not an image: the file is ${file.type}`);
  }
  const ticket = await api.createUpload(file, apiKey);
  const form = new FormData();
  for (const [name, value] of Object.entries(ticket.fields)) form.append(name, value);
  form.append("file", file); // S3 reads the fields before the file, so the file goes last
  const { status, text } = await post(ticket.url, form, { onProgress });
  if (status < 200 || status >= 300) throw storageError(status, text);
  const started = Date.now();
  for (let wait = POLL_FIRST; ; wait = Math.min(wait * 2, POLL_MOST)) {
    const state = await api.uploadStatus(ticket.key);
    if (state.status === "present") return { id: state.image_id, status: "added" };
    if (state.status === "refused" || state.status === "failed") {
      throw new ApiError(422, state.reason || `the file was ${state.status}`);
    }
    if (state.status === "removed") {
      throw new ApiError(410, state.reason || "the file was removed before it was added");
    }
    if (Date.now() - started > POLL_GIVE_UP) return { id: null, status: "pending" };
    await pause(wait);
  }
}
