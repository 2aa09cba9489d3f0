// Live updates for batch-history's page: each server-sent event carries the
// HTML of one row or one batch's detail, rendered by the server exactly as a
// reload would show it. Without this script, the page still works; it just
// does not move until reloaded.
"use strict";
(function () {
  const status = document.getElementById("live-status");
  if (!status || !window.EventSource) return;
  const rows = document.getElementById("batch-rows");
  const table = rows && rows.closest("table");
  const firstPage = table && table.dataset.firstPage === "true";
  const pageSize = rows ? Math.max(rows.children.length, 50) : 0;
  let source = null;
  let delay = 1000;

  function show(text, connected) {
    status.textContent = text;
    status.dataset.connected = String(connected);
  }

  function element(html) {
    const template = document.createElement("template");
    template.innerHTML = html.trim();
    return template.content.firstElementChild;
  }

  function onBatch(event) {
    const update = JSON.parse(event.data);
    const current = document.getElementById(update.target);
    if (current) {
      current.replaceWith(element(update.html));
    } else if (update.add && rows && firstPage) {
      rows.prepend(element(update.html));
      const empty = document.querySelector(".empty");
      if (empty) empty.remove();
      while (rows.children.length > pageSize) rows.lastElementChild.remove();
    }
  }

  function onDeleted(event) {
    const gone = document.getElementById(JSON.parse(event.data).target);
    if (!gone) return;
    gone.classList.add("deleted");
    if (gone.tagName === "SECTION") {
      gone.insertAdjacentHTML("afterbegin", '<p class="error" role="alert">This batch was deleted.</p>');
    }
  }

  function connect() {
    source = new EventSource(status.dataset.live);
    source.addEventListener("open", function () {
      delay = 1000;
      show("Live", true);
    });
    source.addEventListener("batch", onBatch);
    source.addEventListener("deleted", onDeleted);
    // Nothing more will change (the batch finished): stop following.
    source.addEventListener("end", function () {
      source.close();
      show("Up to date", false);
    });
    source.addEventListener("error", function () {
      if (source.readyState === EventSource.CLOSED) {
        // Refused (signed out, database down): try again, backing off.
        show("Live updates paused; retrying", false);
        setTimeout(connect, delay);
        delay = Math.min(delay * 2, 30000);
      } else {
        show("Reconnecting…", false);
      }
    });
  }

  connect();
})();
