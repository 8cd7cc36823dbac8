// Login by link, shared by the annotator page (app.js) and the admin page (admin.js): keep
// ?token= for this tab in sessionStorage under `key`, then drop it from the address bar and the
// history. Returns the tab's token (null when there is none).
"use strict";

function tokenFromLink(key) {
  const params = new URLSearchParams(location.search);
  if (params.has("token")) {
    sessionStorage.setItem(key, params.get("token"));
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
  }
  return sessionStorage.getItem(key);
}
