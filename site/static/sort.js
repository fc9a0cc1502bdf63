// Sortable tables: click a header of a table.sortable to sort by that column; click again to
// reverse. Cells sort by their data-v attribute (numbers) when present, else by their text.
// Missing values (empty data-v or "—") always go last.
(function () {
  "use strict";
  function key(cell) {
    if (!cell) return null;
    var v = cell.hasAttribute("data-v") ? cell.getAttribute("data-v") : cell.textContent.trim();
    if (v === "" || v === "—") return null;
    var f = Number(v);
    return isNaN(f) ? v.toLowerCase() : f;
  }
  function compare(a, b, dir) {
    if (a === null && b === null) return 0;
    if (a === null) return 1;
    if (b === null) return -1;
    if (typeof a === "number" && typeof b === "number") return dir * (a - b);
    return dir * String(a).localeCompare(String(b), undefined, {numeric: true});
  }
  function sortBy(table, th) {
    var idx = Array.prototype.indexOf.call(th.parentNode.children, th);
    var dir = th.getAttribute("aria-sort") === "descending" ? 1 : -1;
    if (!th.hasAttribute("aria-sort") && !th.classList.contains("num")) dir = 1;
    Array.prototype.forEach.call(th.parentNode.children, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows = rows.map(function (r, i) { return {r: r, k: key(r.cells[idx]), i: i}; });
    rows.sort(function (x, y) { return compare(x.k, y.k, dir) || x.i - y.i; });
    rows.forEach(function (x) { body.appendChild(x.r); });
  }
  function init() {
    var tables = document.querySelectorAll("table.sortable");
    Array.prototype.forEach.call(tables, function (table) {
      if (!table.tHead) return;
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
        th.tabIndex = 0;
        th.title = th.title || "click to sort";
        th.addEventListener("click", function (e) {
          if (e.target.tagName === "A") return;
          sortBy(table, th);
        });
        th.addEventListener("keydown", function (e) {
          if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(table, th); }
        });
      });
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
