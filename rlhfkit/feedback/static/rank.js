// Rank mode: K responses in a per-annotator order; the annotator picks them best first (clicks,
// keys 1..9, drag in the ranking list) and submits. K = 2: one click or key (←/→) decides.
"use strict";

MODES.rank = (() => {
  let picks = [];  // original response indices, best first

  const pairwise = () => state.view && state.view.k === 2;
  const labelOf = (pos) => (pairwise() ? "AB"[pos] : String(pos + 1));

  function render(view) {
    picks = [];
    $("instructions").textContent = pairwise()
      ? "Which response is better? Click it, or press 1 / ← for A and 2 / → for B."
      : `Click the responses in order of preference, best first (or press their numbers 1–${view.k}). Ties are not allowed.`;
    const box = $("responses");
    box.classList.toggle("pairwise", pairwise());
    $("ranking-panel").classList.toggle("pairwise", pairwise());
    $("actions").classList.toggle("pairwise", pairwise());  // one click decides: no submit/clear
    box.replaceChildren(...view.responses.map((r, pos) => {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "response";
      b.id = `response-${pos}`;
      b.dataset.index = r.index;
      const label = document.createElement("span");
      label.className = "label";
      label.textContent = labelOf(pos);
      const rank = document.createElement("span");
      rank.className = "rank";
      rank.hidden = true;
      const text = document.createElement("span");
      text.className = "text";
      text.textContent = r.text;
      b.append(label, rank, text);
      b.addEventListener("click", () => pick(pos));
      return b;
    }));
    update();
  }

  function update() {
    const v = state.view;
    v.responses.forEach((r, pos) => {
      const b = $(`response-${pos}`);
      const place = picks.indexOf(r.index);
      b.classList.toggle("ranked", place >= 0);
      const badge = b.querySelector(".rank");
      badge.hidden = place < 0;
      badge.textContent = place >= 0 ? `#${place + 1}` : "";
    });
    const list = $("ranking");
    list.replaceChildren(...picks.map((idx, place) => {
      const pos = v.responses.findIndex((r) => r.index === idx);
      const li = document.createElement("li");
      li.draggable = true;
      li.dataset.index = idx;
      li.textContent = `${labelOf(pos)}: ${v.responses[pos].text}`;
      li.addEventListener("dragstart", (e) => { li.classList.add("dragging"); e.dataTransfer.setData("text/plain", String(place)); });
      li.addEventListener("dragend", () => li.classList.remove("dragging"));
      li.addEventListener("dragover", (e) => { e.preventDefault(); li.classList.add("over"); });
      li.addEventListener("dragleave", () => li.classList.remove("over"));
      li.addEventListener("drop", (e) => {
        e.preventDefault();
        moveRank(Number(e.dataTransfer.getData("text/plain")), place);
      });
      return li;
    }));
    $("submit").disabled = state.busy || picks.length !== v.k;
  }

  function moveRank(from, to) {
    if (from === to || Number.isNaN(from)) return update();
    const [idx] = picks.splice(from, 1);
    picks.splice(to, 0, idx);
    update();
  }

  function pick(pos) {
    const v = state.view;
    if (!v || !v.item || state.busy || pos < 0 || pos >= v.k) return;
    const idx = v.responses[pos].index;
    if (pairwise()) {
      picks = [idx, v.responses[1 - pos].index];
      update();
      return submit();
    }
    const at = picks.indexOf(idx);
    if (at >= 0) {
      picks.splice(at, 1);  // clicking a ranked response takes it back
    } else {
      picks.push(idx);
      if (picks.length === v.k - 1) {  // the last one is implied
        picks.push(v.responses.find((r) => !picks.includes(r.index)).index);
      }
    }
    update();
  }

  function submit() {
    const v = state.view;
    if (v && v.item && picks.length === v.k) return judge({ ranking: picks });
  }

  function clear() {
    if (state.view && state.view.item) { picks = []; update(); }
  }

  $("submit").addEventListener("click", submit);
  $("clear").addEventListener("click", clear);

  function key(e) {
    if (e.key >= "1" && e.key <= "9") { pick(Number(e.key) - 1); return true; }
    switch (e.key) {
      case "ArrowLeft": if (pairwise()) pick(0); return true;
      case "ArrowRight": if (pairwise()) pick(1); return true;
      case "Backspace": if (state.view && state.view.item) { picks.pop(); update(); } return true;
      case "Escape": clear(); return true;
      case "Enter": submit(); return true;
      default: return false;
    }
  }

  return { render, update, key };
})();
