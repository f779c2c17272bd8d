// The progress of a reconcile run (#run) or of a preview being computed (#preview), refreshed while it
// lasts: polls the page's JSON (same origin, same session) and updates the figures; a preview's page is
// loaded again when it is done, to show the preview. The pages work without it ("reload" link).
(function () {
  "use strict";
  var run = document.getElementById("run") || document.getElementById("preview");
  if (!run || run.getAttribute("data-done") === "yes") { return; }
  var url = run.getAttribute("data-progress");
  var bar = document.getElementById("run-progress");
  var reloads = run.hasAttribute("data-reload-when-done");
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
        // A preview that is gone (expired, another node): its page says so and how to start again.
        if (response.status === 404 && reloads) { window.location.reload(); return null; }
        if (!response.ok) { throw new Error(String(response.status)); }
        return response.json();
      })
      .then(function (state) {
        if (state === null) { return; }
        failures = 0;
        show(state);
        if (state.done && reloads) { window.location.reload(); return; }
        if (!state.done) { window.setTimeout(poll, reloads ? 500 : 1000); }
      })
      .catch(function () {
        // A lost session or a restarting gateway: try a few more times, then leave the reload link.
        failures += 1;
        if (failures < 5) { window.setTimeout(poll, 3000); }
      });
  }
  window.setTimeout(poll, reloads ? 250 : 500);
}());
