// While a run is going, the part of the page marked data-live is fetched again every two
// seconds and swapped in (the server renders it, escaped); it stops once the run is done.
(function () {
  function poll() {
    var live = document.querySelector("[data-live][data-running='1']");
    if (!live) return;
    fetch(live.getAttribute("data-live"), {cache: "no-store"})
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) { live.outerHTML = html; })
      .catch(function () {})
      .finally(function () { setTimeout(poll, 2000); });
  }
  setTimeout(poll, 2000);
})();
