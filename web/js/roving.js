/** Keyboard movement in the photo grid: the grid is one stop in the Tab order (the active
 * tile's buttons), arrow keys move between tiles, Home and End go to the first and last. */

const tileOf = (node) => node?.closest?.(".tile");

export function roving(grid) {
  let active = null;

  function setTabbable(tile, on) {
    for (const button of tile.querySelectorAll("button")) button.tabIndex = on ? 0 : -1;
  }

  function activate(tile) {
    if (tile === active) return;
    if (active?.isConnected) setTabbable(active, false);
    active = tile;
    if (tile) setTabbable(tile, true);
  }

  const columns = () => getComputedStyle(grid).gridTemplateColumns.split(" ").length;

  const steps = {
    ArrowLeft: () => -1,
    ArrowRight: () => 1,
    ArrowUp: () => -columns(),
    ArrowDown: () => columns(),
    Home: () => -Infinity,
    End: () => Infinity,
  };

  grid.addEventListener("focusin", (event) => activate(tileOf(event.target)));

  grid.addEventListener("keydown", (event) => {
    const step = steps[event.key];
    const tile = tileOf(event.target);
    if (!step || !tile || event.altKey || event.ctrlKey || event.metaKey) return;
    const tiles = [...grid.querySelectorAll(":scope > .tile")];
    const index = Math.max(0, Math.min(tiles.length - 1, tiles.indexOf(tile) + step()));
    event.preventDefault();
    tiles[index].querySelector(".tile-open").focus();
  });

  return {
    /** After tiles were added or removed: keep exactly one tile in the Tab order. */
    update() {
      if (!active?.isConnected) {
        active = null;
        activate(grid.querySelector(":scope > .tile"));
      }
    },
  };
}
