// Live logs on a service page: the server renders the latest lines, and this follows the
// service's log as server-sent events from where the page left off. The page is complete
// without it; only the live lines need JavaScript.
"use strict";
(function () {
  var pre = document.getElementById("logs");
  if (!pre || typeof EventSource === "undefined") {
    return;
  }
  var keep = 2000;
  var cursor = pre.getAttribute("data-cursor");
  // Lines of a new deployment start after a marker naming it, as on the page.
  var deployment = Number(pre.getAttribute("data-deployment")) || null;
  var url = pre.getAttribute("data-events") + (cursor ? "?cursor=" + encodeURIComponent(cursor) : "");
  var events = new EventSource(url);
  var live = document.getElementById("live");
  events.onopen = function () {
    if (live) {
      live.textContent = "Following the log live.";
    }
  };
  events.onmessage = function (message) {
    var line;
    try {
      line = JSON.parse(message.data);
    } catch (e) {
      return;
    }
    var atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    var append = function (text) {
      var span = document.createElement("span");
      span.textContent = text + "\n";
      pre.appendChild(span);
    };
    if (line.deployment_id !== null && line.deployment_id !== deployment) {
      deployment = line.deployment_id;
      append("[meshploy] deployment " + deployment + ":");
    }
    append((line.replica === null ? "" : "[replica " + line.replica + "] ") + line.line);
    while (pre.childNodes.length > keep) {
      pre.removeChild(pre.firstChild);
    }
    if (atBottom) {
      pre.scrollTop = pre.scrollHeight;
    }
  };
})();
