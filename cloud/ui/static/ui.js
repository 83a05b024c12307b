// Live pages: <main data-refresh="N" data-live-url="..." data-live-version="V">. Every few seconds (N, at
// most 5) the page asks data-live-url for the fingerprint of what it shows (/ui/live.json: a few indexed
// aggregates, services/live_marks.py) and re-fetches itself only when that changed, swapping <main> in place
// (no reload, scroll position kept). The footer says "live · updated N s ago", or why it is paused: the tab
// is hidden, the operator is typing or has a form open, or the controller cannot be reached. Without this
// script the page is simply static.
(function () {
  "use strict";
  var main = document.getElementById("live");
  if (!main || !main.dataset.refresh || !main.dataset.liveUrl) return;
  var every = Math.min(5, Math.max(2, parseInt(main.dataset.refresh, 10) || 5)) * 1000;
  var state = document.getElementById("live-state");
  var text = state && state.querySelector(".live-text");
  var dot = state && state.querySelector(".live-dot");
  var known = main.dataset.liveVersion || null;   // none: the first answer re-fetches the page once
  var updated = Date.now();                       // when the page was last known to show what is current
  var busy = false;
  var lost = false;
  var stopped = false;

  function pausedBecause() {
    if (lost) return "cannot reach the controller";
    if (document.hidden) return "tab hidden";
    var focused = document.activeElement;
    if (focused && main.contains(focused) && /^(INPUT|SELECT|TEXTAREA)$/.test(focused.tagName)) return "you are typing";
    if (main.querySelector("details[open]")) return "a form is open";   // the operator is about to act
    return null;
  }

  function age(ms) {
    var s = Math.max(0, Math.round(ms / 1000));
    if (s < 90) return s + " s";
    var m = Math.round(s / 60);
    return m < 90 ? m + " min" : Math.round(m / 60) + " h";
  }

  function show() {
    if (!state || !text) return;
    var reason = stopped ? "not live" : pausedBecause();
    state.hidden = false;
    state.dataset.state = reason ? "paused" : "live";
    text.textContent = (reason ? "paused (" + reason + ")" : "live") + " · updated " + age(Date.now() - updated) + " ago";
    if (dot) dot.classList.toggle("paused", !!reason);
  }

  function refetch(version) {
    return fetch(window.location.href, { credentials: "same-origin", headers: { "X-Requested-With": "edgefleet-refresh" } })
      .then(function (r) {
        if (r.redirected || !r.ok) { window.location.reload(); return null; }
        return r.text();
      })
      .then(function (html) {
        if (html === null) return;
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("live");
        if (!fresh) return;
        if (fresh.innerHTML !== main.innerHTML) main.innerHTML = fresh.innerHTML;
        var rendered = doc.querySelector("footer.foot .rendered");
        var old = document.querySelector("footer.foot .rendered");
        if (rendered && old) old.textContent = rendered.textContent;
        document.title = doc.title;
        known = fresh.dataset.liveVersion || version;   // the page's own mark, taken before it was read
        main.dataset.liveVersion = known;
        updated = Date.now();
        if (!fresh.dataset.refresh) { stopped = true; main.removeAttribute("data-refresh"); }
      });
  }

  function tick() {
    if (busy || stopped || (pausedBecause() && !lost)) { show(); return; }
    busy = true;
    fetch(main.dataset.liveUrl, { credentials: "same-origin", cache: "no-store", headers: { "Accept": "application/json" } })
      .then(function (r) {
        if (r.status === 401) { window.location.reload(); return null; }
        if (!r.ok) throw new Error("live.json answered " + r.status);
        return r.json();
      })
      .then(function (answer) {
        lost = false;
        if (!answer) return null;
        if (answer.version === known) { updated = Date.now(); return null; }
        return refetch(answer.version);
      })
      .catch(function () { lost = true; })
      .finally(function () { busy = false; show(); });
  }

  show();
  setInterval(tick, every);
  setInterval(show, 1000);
  document.addEventListener("visibilitychange", function () { if (!document.hidden) tick(); });
})();

// The top bar's navigation collapses behind a "Menu" button on narrow screens (ui.css decides when);
// without this script the links simply wrap.
(function () {
  "use strict";
  var header = document.querySelector("header.top");
  var button = header && header.querySelector(".nav-toggle");
  var nav = header && header.querySelector("nav");
  if (!button || !nav) return;
  header.classList.add("js-nav");
  button.hidden = false;
  button.addEventListener("click", function () {
    var open = button.getAttribute("aria-expanded") !== "true";
    button.setAttribute("aria-expanded", open ? "true" : "false");
    header.classList.toggle("nav-open", open);
  });
  document.addEventListener("keydown", function (e) {
    if (e.key === "Escape" && header.classList.contains("nav-open")) {
      header.classList.remove("nav-open");
      button.setAttribute("aria-expanded", "false");
      button.focus();
    }
  });
})();
