/* mrq dashboard: live refresh, action buttons, bulk actions, log tail. No framework, no inline
 * script (the Content-Security-Policy forbids it). Data is never turned into HTML here: the live
 * region comes rendered (and escaped) by the server, everything else is set with textContent. */
(function () {
  "use strict";

  var csrfMeta = document.querySelector('meta[name="csrf-token"]');
  var csrf = csrfMeta ? csrfMeta.getAttribute("content") : "";
  var refreshSelect = document.getElementById("refresh");
  var timer = null;
  var refreshing = false;
  var again = false;

  function liveRegion() { return document.querySelector("[data-live]"); }

  function flash(text, isError) {
    var box = document.getElementById("flash");
    if (!box) { return; }
    box.textContent = text;
    box.className = isError ? "flash error" : "flash";
    box.hidden = false;
    clearTimeout(box.hideTimer);
    box.hideTimer = setTimeout(function () { box.hidden = true; }, isError ? 8000 : 3500);
  }

  /* --- live refresh: fetch the page's live region again and swap it in --------------------------- */

  function refresh() {
    var live = liveRegion();
    if (!live) { return Promise.resolve(); }
    if (refreshing) { again = true; return Promise.resolve(); }  /* an action happened meanwhile */
    if (live.querySelector("button.armed")) { return Promise.resolve(); }  /* waiting for the second click */
    refreshing = true;
    return fetch(window.location.href, { headers: { "X-Mrq-Partial": "1" }, credentials: "same-origin" })
      .then(function (response) { return response.text(); })
      .then(function (text) {
        var doc = new DOMParser().parseFromString(text, "text/html");
        var fresh = doc.querySelector("[data-live]");
        var current = liveRegion();
        if (fresh && current) {
          current.replaceWith(document.adoptNode(fresh));
          document.dispatchEvent(new CustomEvent("mrq:refreshed"));
        }
      })
      .catch(function () { /* the server is unreachable: try again at the next tick */ })
      .then(function () {
        refreshing = false;
        if (again) { again = false; return refresh(); }
      });
  }

  function interval() {
    var stored = window.localStorage ? window.localStorage.getItem("mrq-refresh") : null;
    if (stored !== null && stored !== "") { return parseInt(stored, 10) || 0; }
    var live = liveRegion();
    return live ? parseInt(live.getAttribute("data-refresh") || "5", 10) : 0;
  }

  function schedule() {
    if (timer) { clearInterval(timer); timer = null; }
    var seconds = interval();
    if (refreshSelect) { refreshSelect.value = String(seconds); }
    if (seconds > 0) {
      timer = setInterval(function () { if (!document.hidden) { refresh(); } }, seconds * 1000);
    }
  }

  if (refreshSelect) {
    refreshSelect.addEventListener("change", function () {
      if (window.localStorage) { window.localStorage.setItem("mrq-refresh", refreshSelect.value); }
      schedule();
    });
  }

  /* --- actions ----------------------------------------------------------------------------------- */

  function post(url, body) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body || {})
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (data) {
        return { ok: response.ok, status: response.status, data: data };
      });
    });
  }

  function describe(result) {
    var d = result.data || {};
    if (!result.ok) { return d.error || ("request failed (" + result.status + ")"); }
    if (d.queue !== undefined && d.paused !== undefined) { return "queue " + d.queue + (d.paused ? " paused" : " resumed"); }
    if (d.requested) { return "abort requested for job " + d.id; }
    if (d.cancelled !== undefined) { return "group " + d.id + ": " + d.cancelled + " job" + (d.cancelled === 1 ? "" : "s") + " cancelled"; }
    if (d.id && d.status) { return "job " + d.id + ": " + d.status; }
    return "done";
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("button[data-action]") : null;
    if (!button) { return; }
    event.preventDefault();
    if (button.hasAttribute("data-confirm") && !button.classList.contains("armed")) {
      /* two clicks for what cannot be undone: no modal dialog */
      button.classList.add("armed");
      button.dataset.label = button.textContent;
      button.textContent = button.getAttribute("data-confirm") + " Click again";
      setTimeout(function () {
        button.classList.remove("armed");
        if (button.dataset.label) { button.textContent = button.dataset.label; }
      }, 4000);
      return;
    }
    if (button.classList.contains("armed")) {  /* the second click: the live refresh may resume */
      button.classList.remove("armed");
      if (button.dataset.label) { button.textContent = button.dataset.label; }
    }
    button.disabled = true;
    post(button.getAttribute("data-action"), {}).then(function (result) {
      flash(describe(result), !result.ok);
      return refresh();
    }).catch(function () {
      flash("the dashboard cannot be reached", true);
    }).then(function () { button.disabled = false; });
  });

  /* --- bulk actions: preview the count, then apply ------------------------------------------------ */

  var bulk = document.getElementById("bulk");
  if (bulk) {
    var output = bulk.querySelector("output");
    var runButton = bulk.querySelector('[data-bulk="run"]');
    var filter = JSON.parse(bulk.getAttribute("data-filter") || "{}");
    var confirmAll = bulk.querySelector('input[name="confirm_all"]');
    var action = bulk.querySelector('select[name="action"]');
    var reset = function () { runButton.disabled = true; output.textContent = ""; };
    action.addEventListener("change", reset);
    if (confirmAll) { confirmAll.addEventListener("change", reset); }

    bulk.addEventListener("click", function (event) {
      var button = event.target.closest ? event.target.closest("button[data-bulk]") : null;
      if (!button) { return; }
      event.preventDefault();
      var body = { filter: filter, confirm_all: !!(confirmAll && confirmAll.checked) };
      var url = "/api/bulk/" + encodeURIComponent(action.value);
      if (button.getAttribute("data-bulk") === "preview") {
        body.dry_run = true;
        post(url, body).then(function (result) {
          if (!result.ok) { output.textContent = describe(result); return; }
          var count = result.data.count;
          var n = count.value.toLocaleString() + (count.capped ? "+" : "");
          if (result.data.needs_confirm_all && !body.confirm_all) {
            output.textContent = n + " jobs: there is no filter; tick the box to apply to every job";
            return;
          }
          output.textContent = action.value + " " + n + " job" + (count.value === 1 ? "" : "s") + "?";
          runButton.disabled = count.value === 0;
        });
      } else {
        runButton.disabled = true;
        post(url, body).then(function (result) {
          output.textContent = result.ok ? (action.value + ": " + result.data.changed + " of " +
            result.data.matched + " jobs changed") : describe(result);
          flash(output.textContent, !result.ok);
          return refresh();
        });
      }
    });
  }

  /* --- job logs: append new lines while the job runs ---------------------------------------------- */

  /* What the log panel says once a job is final (dashboard/formatting.py ENDED_WORDS says the same). */
  var ENDED = {
    success: "The job has finished.", failed: "The job failed.", cancel: "The job was cancelled.",
    abort: "The job was aborted.", timeout: "The job timed out.", maxretries: "The job failed: no retries left.",
    interrupt: "The job was interrupted: its worker stopped."
  };
  var logs = document.getElementById("logs");
  if (logs) {
    var after = logs.getAttribute("data-after") || "";
    var url = logs.getAttribute("data-logs-url");
    var finished = function () {
      var head = document.querySelector("[data-job-final]");
      return head && head.getAttribute("data-job-final") === "1";
    };
    var lastRound = false;
    var poll = function () {
      var wasFinished = finished();
      fetch(url + (after ? "?after=" + encodeURIComponent(after) : ""), { credentials: "same-origin" })
        .then(function (response) { return response.ok ? response.json() : null; })
        .then(function (data) {
          if (data && data.text) {
            logs.appendChild(document.createTextNode((logs.textContent ? "\n" : "") + data.text));
            logs.scrollTop = logs.scrollHeight;
          }
          if (data && data.last) { after = data.last; }
        })
        .catch(function () { /* retry at the next tick */ })
        .then(function () {
          if (wasFinished) {
            if (lastRound) {
              var state = document.getElementById("logs-state");
              var head = document.querySelector("[data-job-status]");
              var status = head ? head.getAttribute("data-job-status") : "";
              if (state) { state.textContent = ENDED[status] || "The job has ended."; }
              return;
            }
            lastRound = true; /* one more read: the worker flushes its last lines as the job ends */
          }
          setTimeout(poll, 1000);
        });
    };
    setTimeout(poll, finished() ? 0 : 1000);
  }

  schedule();
})();
