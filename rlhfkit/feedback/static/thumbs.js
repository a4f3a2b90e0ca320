// Thumbs mode: one response at a time, 👍 (↑ or Y) or 👎 (↓ or N); each press saves at once.
"use strict";

MODES.thumbs = (() => {
  function render(view) {
    $("instructions").textContent = "Is this a good response to the prompt? 👍 ↑ or Y, 👎 ↓ or N.";
    $("thumbs-response").textContent = view.response;
    update();
  }

  function update() {
    $("thumb-up").disabled = state.busy;
    $("thumb-down").disabled = state.busy;
  }

  function vote(up) {
    if (!state.view || !state.view.item || state.busy) return;
    return judge({ label: up }, up ? "Saved 👍" : "Saved 👎");
  }

  $("thumb-up").addEventListener("click", () => vote(true));
  $("thumb-down").addEventListener("click", () => vote(false));

  function key(e) {
    switch (e.key) {
      case "ArrowUp": case "y": case "Y": vote(true); return true;
      case "ArrowDown": case "n": case "N": vote(false); return true;
      default: return false;
    }
  }

  return { render, update, key };
})();
