// Starts the asciinema-player (served from /static/vendor) on every element with a
// data-cast-url attribute. A static file because the CSP forbids inline scripts.
"use strict";
(function () {
  function start() {
    if (typeof AsciinemaPlayer === "undefined") {
      return;
    }
    document.querySelectorAll("[data-cast-url]").forEach(function (el) {
      AsciinemaPlayer.create(el.getAttribute("data-cast-url"), el, {
        fit: "width",
        idleTimeLimit: 2,
        preload: true,
      });
    });
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
