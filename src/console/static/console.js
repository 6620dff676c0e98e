// tuma console: the little script it needs (served by tuma; no inline script).
(function () {
  "use strict";
  // The overview reloads itself.
  var refresh = document.body.getAttribute("data-refresh");
  if (refresh) {
    var seconds = parseInt(refresh, 10);
    if (seconds > 0) {
      window.setTimeout(function () { window.location.reload(); }, seconds * 1000);
    }
  }
  // "Select all" on the failures list.
  var all = document.getElementById("select-all");
  if (all) {
    all.addEventListener("change", function () {
      var boxes = document.querySelectorAll("input[type=checkbox][name=id]");
      for (var i = 0; i < boxes.length; i++) { boxes[i].checked = all.checked; }
    });
  }
})();
