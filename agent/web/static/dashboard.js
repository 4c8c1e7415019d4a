// spine-agent dashboard: in-place refresh and authenticated actions. No dependencies.
"use strict";
(function () {
  const TOKEN_KEY = "spine-agent.admin-token"; // sessionStorage only: gone when the tab closes
  const PAUSE_KEY = "spine-agent.refresh-paused";
  const refreshS = Number(document.body.dataset.refreshS) || 0;
  let busy = false;

  function flash(text, kind) {
    const box = document.getElementById("flash");
    box.textContent = text;
    box.className = "flash " + kind;
    box.hidden = false;
  }

  function stamp(text) {
    const el = document.getElementById("updated");
    if (el) el.textContent = text;
  }

  // Fetch this page again and swap its <main>; the server escaped every value, and DOMParser never
  // runs scripts.
  async function reload() {
    const response = await fetch(window.location.href, {cache: "no-store", headers: {Accept: "text/html"}});
    if (!response.ok) throw new Error("HTTP " + response.status);
    const doc = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = doc.getElementById("content");
    const current = document.getElementById("content");
    if (fresh && current) current.replaceWith(document.adoptNode(fresh));
    stamp("updated " + new Date().toLocaleTimeString());
  }

  async function tick() {
    if (busy || document.hidden || sessionStorage.getItem(PAUSE_KEY) === "1") return;
    try {
      await reload();
    } catch (err) {
      stamp("refresh failed: " + err.message);
    }
  }

  async function act(button) {
    const question = button.dataset.confirm;
    if (question && !window.confirm(question)) return;
    let token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) {
      token = (window.prompt("Admin token (kept in this browser tab only):") || "").trim();
      if (!token) return;
    }
    busy = true;
    button.disabled = true;
    try {
      const response = await fetch(button.dataset.action, {
        method: "POST",
        cache: "no-store",
        headers: {Authorization: "Bearer " + token},
      });
      let data = {};
      try {
        data = await response.json();
      } catch (err) {
        data = {};
      }
      if (response.ok) {
        sessionStorage.setItem(TOKEN_KEY, token);
        // An action that ran but did not succeed (a C-ECHO that failed) answers 200 with ok false.
        flash(data.message || "done", data.ok === false ? "error" : "ok");
      } else {
        if (response.status === 401) sessionStorage.removeItem(TOKEN_KEY);
        flash(data.error || "HTTP " + response.status, "error");
      }
    } catch (err) {
      flash("request failed: " + err.message, "error");
    } finally {
      busy = false;
      button.disabled = false;
    }
    try {
      await reload();
    } catch (err) {
      stamp("refresh failed: " + err.message);
    }
  }

  document.addEventListener("click", function (event) {
    const button = event.target.closest("button[data-action]");
    if (button) {
      event.preventDefault();
      act(button);
    }
  });
  const auto = document.getElementById("auto-refresh");
  if (auto) {
    auto.checked = sessionStorage.getItem(PAUSE_KEY) !== "1";
    auto.addEventListener("change", function () {
      sessionStorage.setItem(PAUSE_KEY, auto.checked ? "0" : "1");
    });
  }
  const forget = document.getElementById("forget-token");
  if (forget) {
    forget.addEventListener("click", function () {
      sessionStorage.removeItem(TOKEN_KEY);
      flash("admin token forgotten", "ok");
    });
  }
  if (refreshS > 0) window.setInterval(tick, refreshS * 1000);
})();
