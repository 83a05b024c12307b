// Live refresh for EdgeFleet pages: <main data-refresh="N"> is re-fetched every N seconds and
// swapped in place (no full reload, scroll position kept). Pauses while the tab is hidden.
(function () {
  "use strict";
  var main = document.getElementById("live");
  if (!main || !main.dataset.refresh) return;
  var every = Math.max(2, parseInt(main.dataset.refresh, 10) || 10) * 1000;
  var busy = false;

  function tick() {
    if (busy || document.hidden) return;
    var focused = document.activeElement;
    if (focused && main.contains(focused) && /^(INPUT|SELECT|TEXTAREA)$/.test(focused.tagName)) return;
    if (main.querySelector("details[open]")) return;  // the operator is about to act: keep the page still
    busy = true;
    fetch(window.location.href, { credentials: "same-origin", headers: { "X-Requested-With": "edgefleet-refresh" } })
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
        var foot = doc.querySelector("footer.foot");
        var old = document.querySelector("footer.foot");
        if (foot && old) old.innerHTML = foot.innerHTML;
        if (!fresh.dataset.refresh) { clearInterval(timer); main.removeAttribute("data-refresh"); }
        document.title = doc.title;
      })
      .catch(function () {
        var dot = document.querySelector(".live-dot");
        if (dot) dot.classList.add("paused");
      })
      .finally(function () { busy = false; });
  }

  var timer = setInterval(tick, every);
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
