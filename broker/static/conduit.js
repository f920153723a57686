// Layout helpers for every page (a static file: the CSP forbids inline scripts).
// Wide tables scroll inside their own box instead of the page (phones): each table is wrapped
// in a <div class="table-scroll">, which joins the tab order only while it does scroll, so a
// keyboard user can scroll it too. Without this script the page itself scrolls sideways.
"use strict";
(function () {
  function label(table) {
    var caption = table.querySelector("caption");
    if (caption && caption.textContent.trim()) {
      return caption.textContent.trim();
    }
    var heading = table.closest("section, main");
    heading = heading && heading.querySelector("h1, h2, h3");
    return heading ? heading.textContent.trim() + " (table)" : "table";
  }
  function wrap() {
    document.querySelectorAll("main table").forEach(function (table) {
      if (table.parentElement.classList.contains("table-scroll")) {
        return;
      }
      var box = document.createElement("div");
      box.className = "table-scroll";
      box.setAttribute("role", "region");
      box.setAttribute("aria-label", label(table));
      table.parentNode.insertBefore(box, table);
      box.appendChild(table);
    });
    focusable();
  }
  function focusable() {
    document.querySelectorAll(".table-scroll").forEach(function (box) {
      if (box.scrollWidth > box.clientWidth) {
        box.tabIndex = 0;
      } else {
        box.removeAttribute("tabindex");
      }
    });
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", wrap);
  } else {
    wrap();
  }
  window.addEventListener("resize", focusable);
})();
