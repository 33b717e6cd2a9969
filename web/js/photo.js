/** Photos from the user: chosen with the button, pasted, or dropped anywhere on the page. A
 * drop shows two targets, "find similar photos" (reverse search, also what a drop anywhere
 * else does) and "add to the collection" (upload). */

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
