// The request form shows the endpoints, logins and operation classes of the selected asset
// only: one <fieldset data-asset> per offered asset, the others hidden and disabled (so they
// are not submitted). A static file because the CSP forbids inline scripts.
"use strict";
(function () {
  function show() {
    var pick = document.getElementById("asset");
    if (!pick) {
      return;
    }
    document.querySelectorAll("fieldset.asset-scope").forEach(function (set) {
      var here = set.getAttribute("data-asset") === pick.value;
      set.hidden = !here;
      set.disabled = !here;
      // The selected asset's class select is #operation_class (label follows it).
      var id = here ? "operation_class" : "operation_class-" + set.getAttribute("data-asset");
      var op = set.querySelector("select.op-class");
      var label = set.querySelector("label.op-class");
      if (op) {
        op.id = id;
      }
      if (label) {
        label.htmlFor = id;
      }
    });
  }
  function start() {
    var pick = document.getElementById("asset");
    if (pick) {
      pick.addEventListener("change", show);
      show();
    }
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
