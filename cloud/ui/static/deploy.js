// The new-deployment form's live count: asks /ui/deploy/count (same origin, JSON) how many devices the
// target matches and how many of them can run the bundle, when a field changes and every 5 s.
(function () {
  "use strict";
  var form = document.getElementById("deploy-form");
  var out = document.getElementById("deploy-count");
  if (!form || !out) return;
  var timer = null;
  function ask() {
    var params = new URLSearchParams();
    ["bundle", "device_ids", "tag"].forEach(function (name) { params.set(name, form.elements[name].value); });
    if (form.elements.all.checked) params.set("all", "on");
    fetch(form.getAttribute("data-count") + "?" + params.toString(), { credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(function (c) {
        out.setAttribute("data-matching", String(c.matching || 0));
        out.setAttribute("data-compatible", String(c.compatible || 0));
        if (c.problem) {
          out.textContent = (c.where ? c.where + ": " : "") + c.problem;
          out.className = "count bad";
        } else {
          out.textContent = c.matching + " device" + (c.matching === 1 ? "" : "s") + " match, " + c.compatible +
            " compatible (would get the order)";
          out.className = "count ok";
        }
      })
      .catch(function () { out.textContent = "could not ask the controller for the count"; });
  }
  function soon() { clearTimeout(timer); timer = setTimeout(ask, 250); }
  form.addEventListener("input", soon);
  form.addEventListener("change", soon);
  setInterval(ask, 5000);
  ask();
})();
