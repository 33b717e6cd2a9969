/** Photos from the user: chosen with the button, pasted, or dropped anywhere on the page. A
 * drop shows two targets, "find similar photos" (reverse search, also what a drop anywhere
 * else does) and "add to the collection" (upload). */

// A photo larger than this is sent shrunk: the model sees 260 pixels, and in the cloud a
// request must stay under API Gateway and Lambda's 6 MB (a phone's photo often does not).
const SEND_AS_IS_BYTES = 1024 * 1024;
const LONGEST_SIDE = 1024;

/** The photo to search with: as it is when small, else at most LONGEST_SIDE pixels as JPEG.
 * A file the browser cannot decode goes as it is, so that the server says why it refuses it. */
export async function shrink(file) {
  if (file.size <= SEND_AS_IS_BYTES) return file;
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch {
    return file;
  }
  const scale = Math.min(1, LONGEST_SIDE / Math.max(bitmap.width, bitmap.height));
  const canvas = new OffscreenCanvas(
    Math.max(1, Math.round(bitmap.width * scale)),
    Math.max(1, Math.round(bitmap.height * scale)),
  );
  const context = canvas.getContext("2d");
  context.fillStyle = "#fff"; // transparency on white, as the server decodes it
  context.fillRect(0, 0, canvas.width, canvas.height);
  context.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  bitmap.close();
  const blob = await canvas.convertToBlob({ type: "image/jpeg", quality: 0.9 });
  return new File([blob], file.name, { type: "image/jpeg" });
}

const hasFiles = (event) => event.dataTransfer?.types.includes("Files");
const images = (files) => [...files].filter((file) => file.type.startsWith("image/") || !file.type);

export function photoInputs({ button, input, overlay, onPhoto, onAdd }) {
  button.addEventListener("click", () => input.click());
  input.addEventListener("change", () => {
    if (input.files.length) onPhoto(input.files[0]);
    input.value = "";
  });

  document.addEventListener("paste", (event) => {
    if (event.target.closest?.("input, textarea")) return;
    const [file] = images(event.clipboardData?.files ?? []);
    if (file) onPhoto(file);
  });

  let depth = 0; // dragenter/dragleave pairs: the overlay stays while the pointer is inside
  const zoneAt = (event) => event.target.closest?.(".drop-zone");
  const hide = () => {
    depth = 0;
    overlay.hidden = true;
  };
  window.addEventListener("dragenter", (event) => {
    if (!hasFiles(event)) return;
    depth += 1;
    overlay.hidden = false;
  });
  window.addEventListener("dragleave", () => {
    depth -= 1;
    if (depth <= 0) hide();
  });
  window.addEventListener("dragover", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    const target = zoneAt(event);
    for (const zone of overlay.querySelectorAll(".drop-zone")) {
      zone.classList.toggle("over", zone === target);
    }
  });
  window.addEventListener("drop", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    const add = zoneAt(event)?.dataset.zone === "add";
    hide();
    const files = [...event.dataTransfer.files];
    if (add) onAdd(files);
    else if (files.length) onPhoto(files[0]);
  });
}
