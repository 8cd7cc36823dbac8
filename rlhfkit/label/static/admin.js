// The admin page of `rlhfkit label serve`: progress, agreement, annotators (create, disable),
// the leaderboard of the models, export. Annotator and model names and every other stored
// string are put into the page as text only.
"use strict";

(() => {
  const TOKEN_KEY = "rlhfkit.admin_token";
  const $ = (id) => document.getElementById(id);

  const token = tokenFromLink(TOKEN_KEY);  // login.js

  // Columns of the annotator table: summary key → [header, tooltip, format]. Keys the server
  // adds beyond these get a column of their own after them.
  const num = (digits) => (v) => (typeof v !== "number" ? (v == null ? "–" : String(v))
    : Number.isInteger(v) ? String(v) : v.toFixed(digits));
  const pct = (v) => (typeof v === "number" ? `${(100 * v).toFixed(0)}%` : v == null ? "–" : String(v));
  const COLUMNS = {
    judgments: ["judgments", "judgments given", num(0)],
    median_seconds: ["median s", "median seconds per task (measured by the page)", num(1)],
    agreement_with_majority: ["vs majority", "agreement with the other annotators' majority", pct],
    agreement_with_rm: ["vs RM", "agreement with the reward model's scores", pct],
    first_shown_best_share: ["1st shown best", "share of tasks where the first response shown was ranked best (position bias)", pct],
    first_shown_best_chance: ["by chance", "the same share if ranks were random", pct],
    all_bad: ["all bad", "tasks flagged all bad", num(0)],
  };
  const AGREEMENT = {
    overlapping_tasks: "tasks judged by ≥ 2 annotators",
    pairwise: "pairwise agreement",
    krippendorff_alpha_ordinal: "Krippendorff's α (ordinal)",
  };

  async function api(method, path, body) {
    const init = { method, headers: { Authorization: "Bearer " + token } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(path, init);
  }

  async function detail(resp) {
    try {
      const data = await resp.json();
      return typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail ?? data);
    } catch (_) {
      return resp.statusText;
    }
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function say(text, kind = "") {
    $("msg").textContent = text;
    $("msg").className = "msg " + kind;
  }

  function loggedOut(text) {
    $("dash").hidden = true;
    $("progress").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = text;
  }

  // The summary reloads every 15 s; the leaderboard (a Bradley–Terry fit and a bootstrap: up
  // to seconds on a big store) only when the page opens, on Refresh and on a new tag filter.
  async function load({ leaderboard = false } = {}) {
    if (!token) return loggedOut("");
    let resp;
    try {
      resp = await api("GET", "/api/admin/summary");
    } catch (_) {
      return loggedOut("The server does not answer. Is `rlhfkit label serve` running?");
    }
    if (resp.status === 401) return loggedOut("This admin token is not valid.");
    if (resp.status === 403) return loggedOut("This token is an annotator's, not the admin token (403).");
    if (!resp.ok) return loggedOut(`The server answered ${resp.status}: ${await detail(resp)}`);
    render(await resp.json());
    if (leaderboard) await loadLeaderboard();
  }

  function render(s) {
    $("login").hidden = true;
    $("dash").hidden = false;
    $("progress").hidden = false;
    $("s-tasks").textContent = s.tasks;
    $("s-tasks-note").textContent = s.overlap ? `tasks · ${s.overlap} annotator${s.overlap > 1 ? "s" : ""} each` : "tasks";
    $("s-complete").textContent = s.complete;
    $("s-judgments").textContent = s.judgments;
    $("s-annotators").textContent = s.annotators.filter((a) => a.active).length;
    $("complete").textContent = s.complete;
    $("tasks-total").textContent = s.tasks;
    $("bar-fill").style.width = s.tasks ? `${(100 * s.complete) / s.tasks}%` : "0%";
    renderAnnotators(s.annotators);
    renderAgreement(s.agreement || {});
  }

  function renderAnnotators(rows) {
    const extra = [];
    for (const a of rows) {
      for (const k of Object.keys(a)) {
        if (!(k in COLUMNS) && !["name", "active", "token"].includes(k) && !extra.includes(k)) extra.push(k);
      }
    }
    const keys = [...Object.keys(COLUMNS), ...extra];
    const head = el("tr");
    head.append(el("th", "", "name"), el("th", "", "status"));
    for (const k of keys) {
      const th = el("th", "num", k in COLUMNS ? COLUMNS[k][0] : k.replace(/_/g, " "));
      if (k in COLUMNS) th.title = COLUMNS[k][1];
      head.append(th);
    }
    head.append(el("th"));
    const table = $("annotators");
    table.tHead.replaceChildren(head);
    const body = table.tBodies[0];
    body.replaceChildren();
    if (!rows.length) {
      const tr = el("tr");
      const td = el("td", "", "No annotators yet: create one below.");
      td.colSpan = keys.length + 3;
      tr.append(td);
      body.append(tr);
    }
    for (const a of rows) {
      const tr = el("tr");
      tr.dataset.name = a.name;
      tr.append(el("td", "", a.name));
      const st = el("td");
      st.append(el("span", a.active ? "pill" : "pill off", a.active ? "active" : "disabled"));
      tr.append(st);
      for (const k of keys) {
        tr.append(el("td", "num", (k in COLUMNS ? COLUMNS[k][2] : num(3))(a[k])));
      }
      const act = el("td");
      const b = el("button", a.active ? "disable" : "enable", a.active ? "Disable" : "Enable");
      b.type = "button";
      b.addEventListener("click", () => setActive(a.name, !a.active));
      act.append(b);
      tr.append(act);
      body.append(tr);
    }
  }

  // The agreement object is nested as the server likes; show it flat: "pairwise.tasks" → 12.
  function renderAgreement(obj) {
    const dl = $("agreement");
    dl.replaceChildren();
    const walk = (o, prefix) => {
      for (const [k, v] of Object.entries(o)) {
        const name = prefix + (AGREEMENT[k] || k.replace(/_/g, " "));
        if (v && typeof v === "object" && !Array.isArray(v)) walk(v, name + " · ");
        else {
          dl.append(el("dt", "", name),
            el("dd", "", typeof v === "number" && !Number.isInteger(v) ? v.toFixed(3) : v == null ? "–" : String(v)));
        }
      }
    };
    walk(obj, "");
    if (!dl.children.length) dl.append(el("dt", "", "no overlapping judgments yet"), el("dd"));
  }

  const fixed1 = (v) => (typeof v === "number" ? v.toFixed(1) : "–");
  let leaderboardCall = 0;  // a slower, older answer never overwrites a newer one

  async function loadLeaderboard() {
    const call = ++leaderboardCall;
    const tag = $("lb-tag").value;
    let resp;
    try {
      resp = await api("GET", "/api/admin/leaderboard" + (tag ? `?tag=${encodeURIComponent(tag)}` : ""));
    } catch (_) {
      return renderLeaderboard([], "The server does not answer.");
    }
    if (call !== leaderboardCall) return;
    if (!resp.ok) return renderLeaderboard([], `The server answered ${resp.status}: ${await detail(resp)}`);
    const rows = await resp.json();
    if (call !== leaderboardCall) return;
    renderLeaderboard(rows, tag ? `No judgment of a task tagged ${tag}… compares candidates of two different models.`
      : "No judgment compares candidates of two different models yet.");
  }

  // Rows {model, elo, lo, hi, comparisons}, best first, as `rlhfkit label leaderboard --json`.
  function renderLeaderboard(rows, emptyText) {
    const body = $("leaderboard").tBodies[0];
    body.replaceChildren();
    if (!rows.length) {
      const tr = el("tr");
      const td = el("td", "", emptyText);
      td.colSpan = 5;
      tr.append(td);
      body.append(tr);
    }
    rows.forEach((row, i) => {
      const tr = el("tr");
      tr.dataset.model = row.model;
      tr.append(el("td", "num", String(i + 1)), el("td", "", row.model), el("td", "num", fixed1(row.elo)),
        el("td", "num", row.lo == null ? "–" : `${fixed1(row.lo)} – ${fixed1(row.hi)}`),
        el("td", "num", String(row.comparisons)));
      body.append(tr);
    });
  }

  $("lb-filter").addEventListener("submit", (ev) => {
    ev.preventDefault();
    loadLeaderboard();
  });

  // Disabling keeps the annotator's judgments; their link answers 403 until enabled again.
  async function setActive(name, active) {
    const verb = active ? "enable" : "disable";
    const resp = await api("POST", `/api/admin/annotators/${encodeURIComponent(name)}/${verb}`);
    if (!resp.ok) return say(`Could not ${verb} ${name} (${resp.status}): ${await detail(resp)}`, "error");
    say(active ? `${name} is active again.` : `${name} is disabled: their link no longer works.`, "ok");
    await load();
  }

  $("create").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const name = $("new-name").value.trim();
    if (!name) return;
    const resp = await api("POST", "/api/admin/annotators", { name });
    if (resp.status !== 201 && resp.status !== 200) {
      return say(`Could not create ${name} (${resp.status}): ${await detail(resp)}`, "error");
    }
    const made = await resp.json();
    $("new-name").value = "";
    $("new-link-name").textContent = made.name;
    $("new-link-url").textContent = made.link || `${location.origin}/?token=${made.token}`;
    $("new-link").hidden = false;
    say("");
    await load();
  });

  $("copy").addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText($("new-link-url").textContent);
      say("Link copied.", "ok");
    } catch (_) {
      getSelection().selectAllChildren($("new-link-url"));
      say("Press Ctrl+C to copy the selected link.");
    }
  });

  // Export needs the admin token in a header, so fetch the file and hand it over as a download.
  for (const b of document.querySelectorAll("[data-export]")) {
    b.addEventListener("click", async () => {
      const format = b.dataset.export;
      const keep = $("keep-all-bad").checked ? "&keep_all_bad=true" : "";
      const resp = await api("GET", `/api/admin/export?format=${format}${keep}`);
      if (!resp.ok) return say(`Export failed (${resp.status}): ${await detail(resp)}`, "error");
      const url = URL.createObjectURL(await resp.blob());
      const a = el("a");
      a.href = url;
      a.download = format === "pairs" ? "pairs.jsonl" : "rankings.jsonl";
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    });
  }

  $("refresh").addEventListener("click", () => load({ leaderboard: true }));
  setInterval(() => { if (!document.hidden && !$("dash").hidden) load(); }, 15000);
  load({ leaderboard: true });
})();
