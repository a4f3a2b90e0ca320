// rlhfkit labelling page: plain JS, no build step, nothing loaded from elsewhere.
// State lives on the server (the JSONL file); this page only holds what is on screen.
// Every change is a POST with a JSON body and the X-CSRF-Token of GET /api/session (see label_server.py).
// This file is what every mode shares (session, login, progress, skip, undo, keys S/U); the
// modes (rank.js, thumbs.js) register themselves in MODES and draw the item.
"use strict";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const state = {
  token: params.get("token") || sessionStorage.getItem("label-token") || "",
  annotator: params.get("annotator") || localStorage.getItem("label-annotator") || "",
  csrf: "",     // from GET /api/session; a restarted server has a new one
  view: null,   // the item on screen as /api/next gave it: {mode, item, prompt, progress, ...}
  busy: false,
};
if (state.token) sessionStorage.setItem("label-token", state.token);

// mode name -> {render(view): draw the item, update(): redraw controls, key(e): true if handled}
const MODES = {};
const mode = () => (state.view ? MODES[state.view.mode] : null);

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

function render(view) {
  state.view = view;
  document.body.dataset.mode = view.mode;  // the CSS shows this mode's controls only
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
  mode().render(view);
}

async function run(action) {
  if (state.busy) return;
  state.busy = true;
  document.body.dataset.busy = "1";  // for tests and styling: a request is in flight
  showError("");
  try { await action(); } catch (e) { showError(e.message); } finally {
    state.busy = false;
    document.body.dataset.busy = "";
    if (state.view && state.view.item) mode().update();
  }
}

const loadNext = () => run(async () => {
  render(await nextItem());
});

// Send the judgement of the item on screen ({ranking} or {label}) and show the next item.
function judge(answer, saved) {
  const v = state.view;
  if (!v || !v.item) return;
  return run(async () => {
    const res = await api("POST", "/api/judge", { annotator: state.annotator, item: v.item, ...answer });
    setStatus(`${saved || "Saved judgement"} of item ${res.saved.item}.`);
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
$("skip").addEventListener("click", skip);
$("undo").addEventListener("click", undo);
$("undo-done").addEventListener("click", undo);

document.addEventListener("keydown", (e) => {
  if (e.target instanceof HTMLInputElement || e.ctrlKey || e.metaKey || e.altKey || !state.annotator) return;
  if (mode() && mode().key(e)) { e.preventDefault(); return; }
  switch (e.key) {
    case "s": case "S": skip(); break;
    case "u": case "U": undo(); break;
    default: return;
  }
  e.preventDefault();
});

// Start once the mode scripts (loaded after this one) have registered.
document.addEventListener("DOMContentLoaded", () => {
  if (state.annotator) login(state.annotator);
  else $("annotator-input").focus();
});
