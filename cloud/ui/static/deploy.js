// A create form's live count (the new deployment's, the new rollout's): asks the form's data-count URL
// (same origin, JSON) how many devices the target matches and how many of them would get the order, when
// a field changes and every 5 s. The form names what to send: data-count-fields (text fields and
// selects), data-count-checks (check boxes, sent as "on" when ticked); the answer goes to the element
// whose id is data-count-out. Stages in the answer (a rollout's) are listed after the count.
(function () {
  "use strict";
  var form = document.querySelector("form[data-count]");
  if (!form) return;
  var out = document.getElementById(form.getAttribute("data-count-out"));
  if (!out) return;
  function names(attribute) { return (form.getAttribute(attribute) || "").split(" ").filter(Boolean); }
  var fields = names("data-count-fields");
  var checks = names("data-count-checks");
  var timer = null;
  function stagesText(stages) {
    if (!stages || !stages.length) return "";
    return "; stages: " + stages.map(function (s) {
      return s.name + " " + (s.exact ? "" : "about ") + s.devices;
    }).join(", ");
  }
  function ask() {
    var params = new URLSearchParams();
    fields.forEach(function (name) { params.set(name, form.elements[name].value); });
    checks.forEach(function (name) { if (form.elements[name].checked) params.set(name, "on"); });
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
            " compatible (would get the order)" + stagesText(c.stages);
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
