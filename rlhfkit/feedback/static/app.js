// rlhfkit labelling page: plain JS, no build step, nothing loaded from elsewhere.
// State lives on the server (the JSONL file); this page only holds the picks of the item on screen.
// Every change is a POST with a JSON body and the X-CSRF-Token of GET /api/session (see label_server.py).
"use strict";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const state = {
  token: params.get("token") || sessionStorage.getItem("label-token") || "",
  annotator: params.get("annotator") || localStorage.getItem("label-annotator") || "",
  csrf: "",     // from GET /api/session; a restarted server has a new one
  view: null,   // {item, prompt, k, responses: [{index, text}] in display order, progress}
  picks: [],    // original response indices, best first
  busy: false,
};
if (state.token) sessionStorage.setItem("label-token", state.token);

async function request(method, path, body) {
  const headers = { "X-Label-Token": state.token };
  const opts = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    headers["X-CSRF-Token"] = state.csrf;
    opts.body = JSON.stringify(body);
  }
  const res = await fetch(path, opts);
  let data = {};
  try { data = await res.json(); } catch (e) { /* non-JSON error page */ }
  return { res, data };
}

async function refreshSession() {
  const { res, data } = await request("GET", "/api/session");
  if (!res.ok) throw new Error(data.error || `${res.status} ${res.statusText}`);
  state.csrf = data.csrf;
}

// GET reads; POST (body given) writes, with the session's CSRF token. A 403 on a write may be a
// token from before a server restart: fetch a fresh one and try once more (a 403 wrote nothing).
async function api(method, path, body) {
  if (body !== undefined && !state.csrf) await refreshSession();
  let { res, data } = await request(method, path, body);
  if (res.status === 403 && body !== undefined) {
    await refreshSession();
    ({ res, data } = await request(method, path, body));
  }
  if (!res.ok) throw new Error(data.error || `${res.status} ${res.statusText}`);
  return data;
}

const nextItem = () => api("POST", "/api/next", { annotator: state.annotator });

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function setStatus(message) { $("status").textContent = message; }

function showProgress(p) {
  if (!p) return;
  let text = `${p.done} / ${p.total} judgements done · you: ${p.mine}`;
  if (p.skipped) text += ` · skipped: ${p.skipped}`;
  $("progress").textContent = text;
}

const pairwise = () => state.view && state.view.k === 2;
const labelOf = (pos) => (pairwise() ? "AB"[pos] : String(pos + 1));

function render(view) {
  state.view = view;
  state.picks = [];
  showProgress(view.progress);
  if (!view.item) {
    $("task").hidden = true;
    $("finished").hidden = false;
    return;
  }
  $("finished").hidden = true;
  $("task").hidden = false;
  $("task").dataset.item = view.item;
  $("prompt").textContent = view.prompt;
  $("instructions").textContent = pairwise()
    ? "Which response is better? Click it, or press 1 / ← for A and 2 / → for B."
    : `Click the responses in order of preference, best first (or press their numbers 1–${view.k}). Ties are not allowed.`;
  const box = $("responses");
  box.className = pairwise() ? "pairwise" : "";
  $("ranking-panel").className = pairwise() ? "pairwise" : "";
  $("actions").className = pairwise() ? "pairwise" : "";  // one click decides: no submit/clear
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
    const place = state.picks.indexOf(r.index);
    b.classList.toggle("ranked", place >= 0);
    const badge = b.querySelector(".rank");
    badge.hidden = place < 0;
    badge.textContent = place >= 0 ? `#${place + 1}` : "";
  });
  const list = $("ranking");
  list.replaceChildren(...state.picks.map((idx, place) => {
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
      const from = Number(e.dataTransfer.getData("text/plain"));
      moveRank(from, place);
    });
    return li;
  }));
  $("submit").disabled = state.busy || state.picks.length !== v.k;
}

function moveRank(from, to) {
  if (from === to || Number.isNaN(from)) return update();
  const [idx] = state.picks.splice(from, 1);
  state.picks.splice(to, 0, idx);
  update();
}

function pick(pos) {
  const v = state.view;
  if (!v || !v.item || state.busy || pos < 0 || pos >= v.k) return;
  const idx = v.responses[pos].index;
  if (pairwise()) {
    state.picks = [idx, v.responses[1 - pos].index];
    update();
    return submit();
  }
  const at = state.picks.indexOf(idx);
  if (at >= 0) {
    state.picks.splice(at, 1);  // clicking a ranked response takes it back
  } else {
    state.picks.push(idx);
    if (state.picks.length === v.k - 1) {  // the last one is implied
      state.picks.push(v.responses.find((r) => !state.picks.includes(r.index)).index);
    }
  }
  update();
}

async function run(action) {
  if (state.busy) return;
  state.busy = true;
  document.body.dataset.busy = "1";  // for tests and styling: a request is in flight
  showError("");
  try { await action(); } catch (e) { showError(e.message); } finally {
    state.busy = false;
    document.body.dataset.busy = "";
    if (state.view) update();
  }
}

const loadNext = () => run(async () => {
  render(await nextItem());
});

function submit() {
  const v = state.view;
  if (!v || !v.item || state.picks.length !== v.k) return;
  return run(async () => {
    const res = await api("POST", "/api/judge", { annotator: state.annotator, item: v.item, ranking: state.picks });
    setStatus(`Saved judgement of item ${res.saved.item}.`);
    render(await nextItem());
  });
}

function skip() {
  const v = state.view;
  if (!v || !v.item) return;
  return run(async () => {
    await api("POST", "/api/skip", { annotator: state.annotator, item: v.item });
    setStatus(`Skipped item ${v.item}.`);
    render(await nextItem());
  });
}

const undo = () => run(async () => {
  const res = await api("POST", "/api/undo", { annotator: state.annotator });
  setStatus(`Undid your judgement of item ${res.undone.item}.`);
  render(res.item ? res : await nextItem());
});

function login(name) {
  state.annotator = name;
  localStorage.setItem("label-annotator", name);
  $("login").hidden = true;
  $("identity").hidden = false;
  $("annotator-name").textContent = name;
  loadNext();
}

$("login").addEventListener("submit", (e) => { e.preventDefault(); login($("annotator-input").value.trim()); });
$("switch").addEventListener("click", () => {
  localStorage.removeItem("label-annotator");
  state.annotator = "";
  state.view = null;
  $("identity").hidden = true;
  $("login").hidden = false;
  $("task").hidden = true;
  $("finished").hidden = true;
  $("annotator-input").focus();
});
$("submit").addEventListener("click", submit);
$("clear").addEventListener("click", () => { state.picks = []; update(); });
$("skip").addEventListener("click", skip);
$("undo").addEventListener("click", undo);
$("undo-done").addEventListener("click", undo);

document.addEventListener("keydown", (e) => {
  if (e.target instanceof HTMLInputElement || e.ctrlKey || e.metaKey || e.altKey || !state.annotator) return;
  const v = state.view;
  if (e.key >= "1" && e.key <= "9") { pick(Number(e.key) - 1); e.preventDefault(); return; }
  switch (e.key) {
    case "ArrowLeft": if (pairwise()) pick(0); break;
    case "ArrowRight": if (pairwise()) pick(1); break;
    case "Backspace": if (v && v.item) { state.picks.pop(); update(); } break;
    case "Escape": if (v && v.item) { state.picks = []; update(); } break;
    case "Enter": submit(); break;
    case "s": case "S": skip(); break;
    case "u": case "U": undo(); break;
    default: return;
  }
  e.preventDefault();
});

if (state.annotator) login(state.annotator);
else $("annotator-input").focus();
