// The annotator page of `rlhfkit label serve`: one task at a time, ranked by drag-and-drop or
// by keyboard, posted to the API of rlhfkit/label/app.py (see the contract in its docstring).
// Model text is only ever put into the page with textContent: a prompt or response holding
// HTML or <script> shows as text (tests/label/test_browser.py probes this in Chromium).
"use strict";

(() => {
  const TOKEN_KEY = "rlhfkit.token";
  const $ = (id) => document.getElementById(id);

  const token = tokenFromLink(TOKEN_KEY);  // login.js

  // --- state of the task on screen ---------------------------------------------------------
  let task = null;       // {task_id, prompt, candidates: [{id, text}]} as served
  let tiers = [];        // ranking, best first: tiers[r] = served positions sharing rank r + 1
  let tieNext = false;   // the next placement joins the last rank ("same rank")
  let allBad = false;
  let choice = null;     // K = 2: "a" | "b" | "tie" | "bad"
  let undoStack = [];    // snapshots of the four fields above
  let busy = false;
  let spent = 0;         // seconds on this task while the page was visible
  let shownAt = null;    // performance.now() when the page last became visible on this task

  const pairwise = () => task !== null && task.candidates.length === 2;
  const labelOf = (i) => (pairwise() ? "AB"[i] : String(i + 1));

  // --- API ----------------------------------------------------------------------------------
  async function api(method, path, body, retries = 0) {
    const init = { method, headers: { Authorization: "Bearer " + token } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    for (let attempt = 0; ; attempt++) {
      try {
        return await fetch(path, init);
      } catch (err) {  // network error: a judgment POST is idempotent, so retrying is safe
        if (attempt >= retries) throw err;
        await new Promise((r) => setTimeout(r, 500 * (attempt + 1)));
      }
    }
  }

  async function detail(resp) {
    try {
      const data = await resp.json();
      if (typeof data.detail === "string") return data.detail;
      if (Array.isArray(data.detail)) {
        return data.detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
      }
      return JSON.stringify(data);
    } catch (_) {
      return resp.statusText;
    }
  }

  function show(section) {
    for (const id of ["login", "empty", "task"]) $(id).hidden = id !== section;
  }

  function say(text, kind = "") {
    const msg = $("msg");
    msg.textContent = text;
    msg.className = "msg " + kind;
  }

  // `left` counts the task on screen too: the API's queue excludes a task already leased to us.
  function setCounts(done, left) {
    $("progress").hidden = false;
    $("done").textContent = done;
    $("left").textContent = left;
    $("empty-done").textContent = `${done} judgment${done === 1 ? "" : "s"}`;
    const total = done + left;
    $("bar-fill").style.width = total ? `${(100 * done) / total}%` : "0%";
  }

  function loggedOut(text) {
    show("login");
    $("login-error").textContent = text;
  }

  // --- timer: seconds spent on the task while the tab is visible -----------------------------
  function timerStart(already = 0) {
    spent = already;
    shownAt = document.hidden ? null : performance.now();
  }
  function timerSeconds() {
    const now = shownAt === null ? 0 : (performance.now() - shownAt) / 1000;
    return Math.round((spent + now) * 10) / 10;
  }
  document.addEventListener("visibilitychange", () => {
    if (document.hidden && shownAt !== null) {
      spent += (performance.now() - shownAt) / 1000;
      shownAt = null;
    } else if (!document.hidden && shownAt === null && task) {
      shownAt = performance.now();
    }
  });

  // --- loading -------------------------------------------------------------------------------
  async function start() {
    if (!token) return loggedOut("");
    let resp;
    try {
      resp = await api("GET", "/api/me");
    } catch (_) {
      return loggedOut("The server does not answer. Is `rlhfkit label serve` running?");
    }
    if (resp.status === 401 || resp.status === 403) {
      return loggedOut("This link is not valid (or was disabled). Ask for a new one.");
    }
    if (!resp.ok) return loggedOut(`The server answered ${resp.status}: ${await detail(resp)}`);
    const me = await resp.json();
    $("who").textContent = me.name;
    setCounts(me.done, me.queue);
    await next();
  }

  async function next() {
    busy = true;
    try {
      const resp = await api("GET", "/api/tasks/next", undefined, 2);
      if (resp.status === 204) {
        task = null;
        const me = await (await api("GET", "/api/me")).json();
        setCounts(me.done, me.queue);
        show("empty");
        return;
      }
      if (resp.status === 401 || resp.status === 403) {
        return loggedOut("This link is not valid (or was disabled). Ask for a new one.");
      }
      if (!resp.ok) {
        show("task");
        say(`Could not load a task (${resp.status}): ${await detail(resp)}`, "error");
        return;
      }
      const data = await resp.json();
      setCounts(data.done, data.queue + 1);
      open(data);
    } catch (_) {
      say("The server does not answer; try again in a moment.", "error");
    } finally {
      busy = false;
    }
  }

  function open(data) {
    task = data;
    const draft = loadDraft(task.task_id, task.candidates.length);
    tiers = draft ? draft.tiers : [];
    tieNext = false;
    allBad = draft ? draft.allBad : false;
    choice = draft ? draft.choice : null;
    undoStack = [];
    $("comment").value = draft ? draft.comment : "";
    timerStart(draft ? draft.seconds : 0);
    $("prompt").textContent = task.prompt;
    $("rank-form").hidden = pairwise();
    $("pair-form").hidden = !pairwise();
    $("cands").classList.toggle("pair", pairwise());
    buildCards();
    render();
    say("");
    show("task");
    window.scrollTo(0, 0);
  }

  // A reload keeps the work on the open task (the server hands the same task back, in the same
  // order, while the lease is ours): ranking, flag, comment and seconds so far live in this
  // tab's sessionStorage under the task's id.
  const DRAFT_KEY = "rlhfkit.draft";
  function saveDraft() {
    if (!task) return;
    sessionStorage.setItem(DRAFT_KEY, JSON.stringify({
      task_id: task.task_id, tiers, allBad, choice, comment: $("comment").value,
      seconds: timerSeconds(),
    }));
  }
  function loadDraft(taskId, k) {
    let d = null;
    try {
      d = JSON.parse(sessionStorage.getItem(DRAFT_KEY));
    } catch (_) {
      return null;
    }
    if (!d || d.task_id !== taskId || !Array.isArray(d.tiers)) return null;
    const seen = d.tiers.flat();
    const ok = d.tiers.every((t) => Array.isArray(t) && t.length > 0) &&
      seen.every((i) => Number.isInteger(i) && i >= 0 && i < k) && new Set(seen).size === seen.length;
    if (!ok) return null;
    return { tiers: d.tiers, allBad: d.allBad === true, comment: String(d.comment || ""),
      choice: ["a", "b", "tie", "bad"].includes(d.choice) ? d.choice : null,
      seconds: Number.isFinite(d.seconds) ? d.seconds : 0 };
  }
  $("comment").addEventListener("input", saveDraft);
  window.addEventListener("pagehide", saveDraft);

  // --- ranking model -------------------------------------------------------------------------
  function snapshot() {
    return { tiers: tiers.map((t) => t.slice()), tieNext, allBad, choice };
  }
  function change(mutate) {
    const before = JSON.stringify(snapshot());
    const saved = snapshot();
    mutate();
    if (JSON.stringify(snapshot()) !== before) undoStack.push(saved);
    render();
  }
  function undo() {
    const prev = undoStack.pop();
    if (!prev) return say("Nothing to undo.");
    ({ tiers, tieNext, allBad, choice } = prev);
    say("");
    render();
  }

  function rankOf(i) {
    const r = tiers.findIndex((t) => t.includes(i));
    return r < 0 ? null : r + 1;
  }

  // Move response i to `target`: "tier:r" joins rank r + 1 (a tie), "gap:r" makes it a rank of
  // its own before the current rank r + 1 ("gap:<number of ranks>" = a new last rank), "pool"
  // takes it out of the ranking. Emptied ranks close up afterwards, so r stays valid here.
  function place(i, target) {
    const [where, r] = target.split(":");
    const moved = tiers.map((t) => t.filter((x) => x !== i));
    if (where === "tier") moved[Number(r)].push(i);
    else if (where === "gap") moved.splice(Number(r), 0, [i]);
    tiers = moved.filter((t) => t.length > 0);
  }

  // Keyboard and "Place" button: the next rank, or the last rank when "same rank" is armed
  // (T, the button, or Shift+digit, which passes tie = true).
  function placeNext(i, tie = tieNext) {
    if (i >= task.candidates.length) return;
    change(() => {
      const last = tiers.length - 1;
      const aloneLast = last >= 0 && tiers[last].length === 1 && tiers[last][0] === i;
      place(i, tie && last >= 0 && !aloneLast ? `tier:${last}` : `gap:${tiers.length}`);
      tieNext = false;
    });
  }

  function ranks() {
    const k = task.candidates.length;
    if (pairwise()) {
      return { a: [1, 2], b: [2, 1], tie: [1, 1], bad: [1, 1] }[choice] || null;
    }
    const placed = tiers.reduce((n, t) => n + t.length, 0);
    if (placed === k) return task.candidates.map((_, i) => rankOf(i));
    if (placed === 0 && allBad) return new Array(k).fill(1);  // all bad, no order: all tied
    return null;
  }

  // --- rendering -----------------------------------------------------------------------------
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;  // text only: model text never becomes HTML
    return e;
  }

  function snippet(i) {
    const t = task.candidates[i].text.replace(/\s+/g, " ").trim();
    return t.length > 48 ? t.slice(0, 47) + "…" : t || "(empty)";
  }

  function buildCards() {
    const box = $("cands");
    box.replaceChildren();
    task.candidates.forEach((cand, i) => {
      const card = el("article", "card");
      card.dataset.idx = i;
      const head = el("div", "card-head");
      const key = el("kbd", "key", labelOf(i));
      const name = el("span", "name", `Response ${labelOf(i)}`);
      const badge = el("span", "badge");
      head.append(key, name, badge);
      if (!pairwise()) {
        const grip = el("span", "grip", "⠿");
        grip.title = "Drag to rank";
        head.prepend(grip);
        const btn = el("button", "place", "Place next");
        btn.type = "button";
        btn.addEventListener("click", () => {
          if (rankOf(i) === null) placeNext(i);
          else change(() => { place(i, "pool"); tieNext = false; });
        });
        head.append(btn);
        head.classList.add("drag");
        head.addEventListener("pointerdown", (ev) => {
          if (ev.target.closest("button")) return;
          dragStart(ev, i);
        });
      }
      const body = el("div", "text", cand.text);
      card.append(head, body);
      box.append(card);
    });
  }

  function chip(i) {
    const c = el("span", "chip");
    c.dataset.idx = i;
    c.append(el("b", "", labelOf(i)), el("span", "", snippet(i)));
    c.addEventListener("pointerdown", (ev) => dragStart(ev, i));
    return c;
  }

  function render() {
    if (!task) return;
    if (pairwise()) {
      for (const b of document.querySelectorAll("#pair-form [data-choice]")) {
        b.classList.toggle("chosen", b.dataset.choice === choice);
        b.setAttribute("aria-pressed", String(b.dataset.choice === choice));
      }
      document.querySelectorAll("#cands .card").forEach((card, i) => {
        const win = (choice === "a" && i === 0) || (choice === "b" && i === 1);
        const lose = (choice === "a" && i === 1) || (choice === "b" && i === 0);
        card.classList.toggle("best", win);
        card.classList.toggle("worse", lose);
        card.classList.toggle("bad", choice === "bad");
        card.querySelector(".badge").textContent =
          win ? "better" : lose ? "" : choice === "tie" ? "tie" : choice === "bad" ? "bad" : "";
      });
    } else {
      renderTiers();
      document.querySelectorAll("#cands .card").forEach((card, i) => {
        const r = rankOf(i);
        const tied = r !== null && tiers[r - 1].length > 1;
        card.classList.toggle("ranked", r !== null);
        card.classList.toggle("best", r === 1);
        card.querySelector(".badge").textContent =
          r === null ? "not ranked" : `rank ${r}${tied ? " · tie" : ""}`;
        card.querySelector(".place").textContent =
          r === null ? (tieNext && tiers.length ? "Same rank" : "Place next") : "Remove";
      });
      $("tie").setAttribute("aria-pressed", String(tieNext));
      $("tie").disabled = tiers.length === 0;
      $("tie").classList.toggle("on", tieNext);
      $("all-bad").checked = allBad;
    }
    const ok = ranks() !== null;
    $("submit").disabled = !ok;
    $("pb-submit").disabled = !ok;
    $("undo").disabled = undoStack.length === 0;
    $("pb-undo").disabled = undoStack.length === 0;
    $("pb-status").textContent = status();
    saveDraft();
    $("keys").textContent = hints();
  }

  function renderTiers() {
    const list = $("tiers");
    list.replaceChildren();
    const gap = (r) => {
      const g = el("li", "gap");
      g.dataset.drop = `gap:${r}`;
      return g;
    };
    tiers.forEach((t, r) => {
      list.append(gap(r));
      const row = el("li", "tier" + (r === 0 ? " first" : "") +
        (tieNext && r === tiers.length - 1 ? " armed" : ""));
      row.dataset.drop = `tier:${r}`;
      row.append(el("span", "num", String(r + 1)));
      const chips = el("span", "chips");
      t.forEach((i) => chips.append(chip(i)));
      row.append(chips);
      if (t.length > 1) row.append(el("span", "tag", "tie"));
      list.append(row);
    });
    const end = el("li", "gap end");
    end.dataset.drop = `gap:${tiers.length}`;
    end.textContent = tiers.length === 0
      ? "Press a response's number, or drag it here"
      : `Drop here for rank ${tiers.length + 1} · on a rank for a tie`;
    list.append(end);
    const pool = $("pool");
    pool.replaceChildren();
    task.candidates.forEach((_, i) => {
      if (rankOf(i) === null) pool.append(chip(i));
    });
    if (!pool.children.length) pool.append(el("span", "none", "all ranked"));
  }

  function status() {
    if (pairwise()) {
      return { a: "A is better", b: "B is better", tie: "tie", bad: "both bad" }[choice] || "A or B?";
    }
    const placed = tiers.reduce((n, t) => n + t.length, 0);
    return `${placed} of ${task.candidates.length} ranked` + (allBad ? " · all bad" : "");
  }

  function hints() {
    if (pairwise()) return "Keys: 1 A better · 2 B better · T tie · X both bad · Enter submit · Z undo · S skip";
    const k = task.candidates.length;
    return `Keys: 1–${k} place a response at the next rank · T then a number: same rank as the ` +
      "last · B all bad · Enter submit · Z undo · S skip";
  }

  // --- drag and drop (pointer events: mouse, pen and touch alike) ----------------------------
  let drag = null;

  function dragStart(ev, i) {
    if (ev.button !== 0 || busy) return;
    drag = { i, x: ev.clientX, y: ev.clientY, ghost: null, over: null, scroll: 0, timer: null };
    window.addEventListener("pointermove", dragMove);
    window.addEventListener("pointerup", dragEnd);
    window.addEventListener("pointercancel", dragCancel);
  }

  function dropTarget(x, y) {
    const hit = document.elementFromPoint(x, y);
    return hit ? hit.closest("[data-drop]") : null;
  }

  function dragMove(ev) {
    if (!drag) return;
    if (!drag.ghost) {
      if (Math.hypot(ev.clientX - drag.x, ev.clientY - drag.y) < 6) return;  // a click, not a drag
      drag.ghost = el("div", "ghost");
      drag.ghost.append(el("b", "", labelOf(drag.i)), el("span", "", snippet(drag.i)));
      document.body.append(drag.ghost);
      document.body.classList.add("dragging");
      drag.timer = setInterval(() => drag && drag.scroll && window.scrollBy(0, drag.scroll), 16);
    }
    ev.preventDefault();
    drag.ghost.style.transform = `translate(${ev.clientX + 12}px, ${ev.clientY + 8}px)`;
    // Scroll when the pointer nears the top or bottom edge (on a phone the ranking is below).
    const edge = 56;
    drag.scroll = ev.clientY < edge ? -12 : ev.clientY > window.innerHeight - edge ? 12 : 0;
    const over = dropTarget(ev.clientX, ev.clientY);
    if (over !== drag.over) {
      if (drag.over) drag.over.classList.remove("over");
      if (over) over.classList.add("over");
      drag.over = over;
    }
  }

  function dragStop() {
    window.removeEventListener("pointermove", dragMove);
    window.removeEventListener("pointerup", dragEnd);
    window.removeEventListener("pointercancel", dragCancel);
    if (drag.ghost) drag.ghost.remove();
    if (drag.over) drag.over.classList.remove("over");
    if (drag.timer) clearInterval(drag.timer);
    document.body.classList.remove("dragging");
  }

  function dragEnd(ev) {
    if (!drag) return;
    const { i, ghost } = drag;
    dragStop();
    drag = null;
    if (!ghost) return;
    const target = dropTarget(ev.clientX, ev.clientY);
    if (target) change(() => { place(i, target.dataset.drop); tieNext = false; });
  }

  function dragCancel() {
    if (!drag) return;
    dragStop();
    drag = null;
  }

  // --- actions -------------------------------------------------------------------------------
  async function submit() {
    if (!task || busy) return;
    const r = ranks();
    if (r === null) {
      const left = task.candidates.length - tiers.reduce((n, t) => n + t.length, 0);
      return say(pairwise() ? "Choose one of the four answers first."
        : `Rank every response first (${left} left), or tick "all bad" with none ranked.`, "error");
    }
    const flags = (pairwise() ? choice === "bad" : allBad) ? ["all_bad"] : [];
    const body = {
      task_id: task.task_id, ranks: r, flags, comment: $("comment").value.trim(),
      seconds: timerSeconds(),
    };
    busy = true;
    $("submit").disabled = true;
    say("Saving…");
    let resp;
    try {
      resp = await api("POST", "/api/judgments", body, 3);
    } catch (_) {
      busy = false;
      render();
      return say("Not saved: the server does not answer. Press Enter to try again.", "error");
    }
    busy = false;
    if (resp.status === 200 || resp.status === 201) {
      say("");
      await next();
      say("Saved.", "ok");
    } else if (resp.status === 409 || resp.status === 403) {
      say(`This task is no longer yours (${await detail(resp)}). Loading the next one.`, "error");
      await next();
    } else if (resp.status === 401) {
      loggedOut("This link is not valid (or was disabled). Ask for a new one.");
    } else {
      render();
      say(`Not saved (${resp.status}): ${await detail(resp)}`, "error");
    }
  }

  async function skip() {
    if (!task || busy) return;
    busy = true;
    let resp;
    try {
      resp = await api("POST", `/api/tasks/${task.task_id}/skip`, undefined, 2);
    } catch (_) {
      busy = false;
      return say("The server does not answer; try again in a moment.", "error");
    }
    busy = false;
    if (!resp.ok && resp.status !== 409) {
      return say(`Could not skip (${resp.status}): ${await detail(resp)}`, "error");
    }
    await next();
    say("Skipped.", "ok");
  }

  function choose(c) {
    change(() => { choice = c; });
  }

  // --- wiring --------------------------------------------------------------------------------
  $("submit").addEventListener("click", submit);
  $("undo").addEventListener("click", undo);
  $("pb-submit").addEventListener("click", submit);
  $("pb-undo").addEventListener("click", undo);
  $("skip").addEventListener("click", skip);
  $("again").addEventListener("click", next);
  $("tie").addEventListener("click", () => change(() => { tieNext = !tieNext; }));
  $("all-bad").addEventListener("change", (ev) => {
    const on = ev.target.checked;
    change(() => { allBad = on; });
  });
  for (const b of document.querySelectorAll("#pair-form [data-choice]")) {
    b.addEventListener("click", () => choose(b.dataset.choice));
  }

  document.addEventListener("keydown", (ev) => {
    if (ev.target.matches && ev.target.matches("textarea, input[type=text]")) {
      if (ev.key === "Escape") ev.target.blur();
      if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); submit(); }
      return;
    }
    if (!task || ev.ctrlKey || ev.metaKey || ev.altKey || ev.repeat) return;
    const key = ev.key.toLowerCase();
    let handled = true;
    if (key === "enter") submit();
    else if (key === "z") undo();
    else if (key === "s") skip();
    else if (pairwise()) {
      const c = { 1: "a", a: "a", 2: "b", b: "b", t: "tie", "=": "tie", x: "bad" }[key];
      if (c) choose(c);
      else handled = false;
    } else if (/^[1-9]$/.test(key)) {
      placeNext(Number(key) - 1);
    } else if (ev.shiftKey && /^Digit[1-9]$/.test(ev.code)) {  // Shift+digit: same rank as last
      placeNext(Number(ev.code.slice(5)) - 1, true);
    } else if (key === "t" || key === "=") {
      change(() => { tieNext = !tieNext && tiers.length > 0; });
    } else if (key === "b") {
      change(() => { allBad = !allBad; });
    } else handled = false;
    if (handled) ev.preventDefault();
  });

  start();
})();
