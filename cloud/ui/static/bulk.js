// Bulk selection on /ui/devices (operators): a box per row, "select this page", "all N matching", the count
// of what is selected, and the tag field only for the tag actions. The live refresh (ui.js) swaps <main>'s
// content: the selection and the bulk form's fields are kept here and put back after each swap.
// Without this script the form still works (the server refuses an empty selection).
(function () {
  "use strict";
  var main = document.getElementById("live");
  if (!main) return;
  var chosen = {};
  var saved = { all: false, action: null, tags: null };

  function rows() { return main.querySelectorAll("input[type=checkbox][name=id][form=bulk]"); }
  function q(id) { return document.getElementById(id); }

  function render() {
    var boxes = rows();
    var all = q("all-matching");
    var every = all && all.checked;
    var ticked = 0;
    boxes.forEach(function (b) { if (chosen[b.value]) ticked++; b.checked = every || !!chosen[b.value]; });
    var count = q("selected-count");
    var table = q("devices");
    if (count) {
      var total = table ? table.getAttribute("data-total") : "0";
      count.textContent = every ? "All " + total + " matching selected" : Object.keys(chosen).length + " selected";
    }
    var page = q("select-page");
    if (page) {
      page.hidden = false;
      page.checked = every || (boxes.length > 0 && ticked === boxes.length);
      page.indeterminate = !page.checked && ticked > 0;
    }
    var go = q("bulk-go");
    if (go) go.disabled = !every && Object.keys(chosen).length === 0;
    var action = q("bulk-action");
    var tags = q("bulk-tags");
    if (action && tags) {
      var label = tags.closest("label");
      if (label) label.hidden = action.value === "deploy";
      tags.required = action.value !== "deploy";
    }
  }

  function restore() {
    var all = q("all-matching");
    if (all) all.checked = saved.all;
    var action = q("bulk-action");
    if (action && saved.action !== null) action.value = saved.action;
    var tags = q("bulk-tags");
    if (tags && saved.tags !== null) tags.value = saved.tags;
    render();
  }

  document.addEventListener("change", function (e) {
    var t = e.target;
    if (!(t instanceof HTMLInputElement || t instanceof HTMLSelectElement) || !main.contains(t)) return;
    if (t.name === "id" && t.getAttribute("form") === "bulk") {
      if (t.checked) chosen[t.value] = true; else delete chosen[t.value];
      if (!t.checked && q("all-matching")) { q("all-matching").checked = false; saved.all = false; }
    } else if (t.id === "select-page") {
      rows().forEach(function (b) { if (t.checked) chosen[b.value] = true; else delete chosen[b.value]; });
      if (!t.checked && q("all-matching")) { q("all-matching").checked = false; saved.all = false; }
    } else if (t.id === "all-matching") {
      saved.all = t.checked;
    } else if (t.id === "bulk-action") {
      saved.action = t.value;
    }
    render();
  });
  document.addEventListener("input", function (e) {
    if (e.target && e.target.id === "bulk-tags") saved.tags = e.target.value;
  });

  new MutationObserver(restore).observe(main, { childList: true });
  render();
})();
