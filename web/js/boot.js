/* Starts the start view's API requests while the page's script is still loading (a plain
 * script, run before it): api.js takes these answers instead of asking again. Only for the
 * start view, whose requests do not depend on anything the page knows. Where the server put
 * the answers in the page (#start-data, `imgsearch serve`), they are taken from there, and
 * the first screen's photos are asked for at once. */
(function () {
  // The tile thumbnail (a 256 px WebP) where it is enough for a tile drawn at up to 2 device
  // pixels per CSS pixel (phones and 1x screens), else the 384 px thumbnail. Tiles are about
  // a third of a phone's width, else 190 CSS px (style.css; TILE_SIZES in tile.js).
  var enough = null; // known once per page: reading the window's size may cost a layout
  window.IMGSEARCH_TILE_SOURCE = function (result) {
    if (enough === null) {
      var width = innerWidth <= 640 ? innerWidth * 0.34 : 190;
      enough = width * Math.min(devicePixelRatio || 1, 2) <= 256 * 1.2;
    }
    return result.tile && enough ? result.tile : result.thumbnail;
  };
  if (location.search) return;
  var started = (window.IMGSEARCH_STARTED = {});
  var inline = document.getElementById("start-data");
  var answers = inline ? JSON.parse(inline.textContent) : {};
  // Where the answers come in the page, config.js comes after this (api.js asks for what the
  // server left out); else before it, and the requests leave now.
  var config = window.IMGSEARCH_CONFIG || {};
  var api = (config.api || "").replace(/\/+$/, "") + "/api";
  var browse = "/images?limit=48&offset=0"; // as pages.js (PAGE) asks for it
  // As pages.js and stacks.js ask for them.
  [browse, "/explore", "/duplicates?limit=200&offset=0"].forEach(function (path) {
    if (answers[path]) {
      var body = JSON.stringify(answers[path]);
      started[path] = Promise.resolve(new Response(body, { status: 200 }));
    } else if (!inline) {
      started[path] = fetch(api + path);
      started[path].catch(function () {}); // api.js reports failures when it asks
    }
  });
  // The first screen's photos (results.js, FIRST_SCREEN), kept so the tiles find them loaded.
  var first = answers[browse] ? answers[browse].results.slice(0, 12) : [];
  window.IMGSEARCH_PRELOADED = first.map(function (result) {
    var image = new Image();
    image.fetchPriority = "high";
    image.src = new URL(window.IMGSEARCH_TILE_SOURCE(result), location.href).href;
    return image;
  });
})();
