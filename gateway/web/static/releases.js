// The progress of a reconcile run, refreshed while it is open: polls the run's JSON (same origin, same
// session) and updates the figures; the page works without it (its "reload" link shows the latest).
(function () {
  "use strict";
  var run = document.getElementById("run");
  if (!run || run.getAttribute("data-done") === "yes") { return; }
  var url = run.getAttribute("data-progress");
  var bar = document.getElementById("run-progress");
  var failures = 0;

  function show(state) {
    Object.keys(state).forEach(function (key) {
      var field = run.querySelector('[data-field="' + key + '"]');
      if (field) { field.textContent = String(state[key]); }
    });
    var trouble = run.querySelector('[data-show="troubled"]');
    if (trouble) { trouble.hidden = !state.troubled; }
    if (bar) {
      var total = Math.max(state.total, 1);
      bar.max = total;
      bar.value = state.done ? total : Math.min(state.processed, total);
    }
    run.setAttribute("data-done", state.done ? "yes" : "no");
  }

  function poll() {
    fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (response) {
        if (!response.ok) { throw new Error(String(response.status)); }
        return response.json();
      })
      .then(function (state) {
        failures = 0;
        show(state);
        if (!state.done) { window.setTimeout(poll, 1000); }
      })
      .catch(function () {
        // A lost session or a restarting gateway: try a few more times, then leave the reload link.
        failures += 1;
        if (failures < 5) { window.setTimeout(poll, 3000); }
      });
  }
  window.setTimeout(poll, 500);
}());
