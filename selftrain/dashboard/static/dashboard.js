// Live refresh for tables marked data-refresh="URL" (the job queue): every data-every
// milliseconds, fetch the server-rendered rows and swap them in. Paused while the tab is
// hidden; a failed fetch leaves the last rows in place and says so.
(function () {
  function watch(body) {
    var url = body.getAttribute("data-refresh");
    var every = parseInt(body.getAttribute("data-every") || "3000", 10);
    var live = document.getElementById("live");
    function tick() {
      if (document.hidden) { return; }
      fetch(url, {credentials: "same-origin", headers: {"Accept": "text/html"}})
        .then(function (response) {
          if (!response.ok || response.redirected) { throw new Error("HTTP " + response.status); }
          return response.text();
        })
        .then(function (html) {
          body.innerHTML = html;
          if (live) { live.textContent = "live: updated " + new Date().toLocaleTimeString(); }
        })
        .catch(function () {
          if (live) { live.textContent = "live refresh paused (reload the page)"; }
        });
    }
    setInterval(tick, every);
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-refresh]").forEach(watch);
  });
})();
