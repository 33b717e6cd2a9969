/* Starts the start view's API requests while the modules are still loading (a plain script,
 * run before them): api.js takes these answers instead of asking again. Only for the start
 * view, whose requests do not depend on anything the modules know. */
(function () {
  if (location.search) return;
  var config = window.IMGSEARCH_CONFIG || {};
  var api = (config.api || "").replace(/\/+$/, "") + "/api";
  var started = (window.IMGSEARCH_STARTED = {});
  // As pages.js (PAGE) and stacks.js ask for them.
  ["/images?limit=48&offset=0", "/explore", "/duplicates?limit=200&offset=0"].forEach(
    function (path) {
      started[path] = fetch(api + path);
      started[path].catch(function () {}); // api.js reports failures when it asks
    },
  );
})();
