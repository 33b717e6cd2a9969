"use strict";
const api = (window.IMGSEARCH_API || "") + "/api";
const grid = document.getElementById("results");
const status = document.getElementById("status");

function show(results) {
  grid.replaceChildren(...results.map((r) => {
    const figure = document.createElement("figure");
    const img = document.createElement("img");
    img.src = r.thumbnail; img.alt = r.key; img.loading = "lazy";
    const caption = document.createElement("figcaption");
    caption.textContent = r.key;
    figure.append(img, caption);
    return figure;
  }));
}

async function search(q) {
  status.textContent = "Searching…";
  const response = await fetch(`${api}/search?q=${encodeURIComponent(q)}&limit=40`);
  const body = await response.json();
  if (!response.ok) { status.textContent = body.detail; return; }
  const classes = (body.interpretation.classes || []).map((c) => c.label).slice(0, 5);
  status.textContent = classes.length ? `Showing: ${classes.join(", ")}` : `No meaning found for "${q}"`;
  show(body.results);
}

async function browse() {
  const response = await fetch(`${api}/images?limit=60`);
  const body = await response.json();
  status.textContent = `${body.total} images`;
  show(body.results);
}

document.getElementById("search").addEventListener("submit", (event) => {
  event.preventDefault();
  const q = document.getElementById("q").value.trim();
  if (q) search(q); else browse();
});
browse();
