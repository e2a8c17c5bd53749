/* Results site: sort a table by a column, pick the metric, filter rows and dataset columns. No dependencies. */
(function () {
  "use strict";

  function key(cell) {
    var v = cell.getAttribute("data-sort");
    return v === null ? cell.textContent.trim() : v;
  }

  function compare(a, b, numeric) {
    if (a === "" || b === "") { return a === b ? 0 : (a === "" ? 1 : -1); }  /* no value: always last */
    if (numeric) { return parseFloat(a) - parseFloat(b); }
    return a.localeCompare(b);
  }

  function sortBy(table, th) {
    var col = Array.prototype.indexOf.call(th.parentNode.children, th);
    var numeric = th.getAttribute("data-type") === "num";
    var now = th.getAttribute("aria-sort");
    var dir = now === "none" ? (th.getAttribute("data-first") || (numeric ? "descending" : "ascending"))
      : (now === "ascending" ? "descending" : "ascending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var ranked = rows.filter(function (r) { return r.getAttribute("data-kind") !== "published"; });
    var fixed = rows.filter(function (r) { return r.getAttribute("data-kind") === "published"; });
    ranked.sort(function (ra, rb) {
      var a = key(ra.cells[col]), b = key(rb.cells[col]);
      var c = compare(a, b, numeric);
      if (c !== 0 && a !== "" && b !== "") { c = dir === "ascending" ? c : -c; }
      return c !== 0 ? c : parseInt(ra.getAttribute("data-index"), 10) - parseInt(rb.getAttribute("data-index"), 10);
    });
    Array.prototype.forEach.call(th.parentNode.children, function (other) {
      if (other.hasAttribute("aria-sort")) { other.setAttribute("aria-sort", "none"); }
    });
    th.setAttribute("aria-sort", dir);
    ranked.concat(fixed).forEach(function (r) { body.appendChild(r); });
  }

  function applyControls(section) {
    var metric = section.querySelector("select[data-control=metric]").value;
    var filters = {};
    Array.prototype.forEach.call(section.querySelectorAll("select[data-control=filter]"), function (s) {
      filters[s.getAttribute("data-filter")] = s.value;
    });
    Array.prototype.forEach.call(section.querySelectorAll(".table-wrap[data-metric]"), function (wrap) {
      wrap.hidden = wrap.getAttribute("data-metric") !== metric;
      Array.prototype.forEach.call(wrap.querySelectorAll("[data-dataset]"), function (cell) {
        cell.hidden = filters.dataset !== "" && cell.getAttribute("data-dataset") !== filters.dataset;
      });
      Array.prototype.forEach.call(wrap.querySelectorAll("tbody tr"), function (row) {
        row.hidden = ["model", "size", "scheme"].some(function (name) {
          return filters[name] !== "" && row.getAttribute("data-" + name) !== filters[name];
        });
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("table.sortable th[data-type]"), function (th) {
      var table = th.closest("table");
      th.addEventListener("click", function () { sortBy(table, th); });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(table, th); }
      });
    });
    Array.prototype.forEach.call(document.querySelectorAll("section[data-suite]"), function (section) {
      Array.prototype.forEach.call(section.querySelectorAll("select[data-control]"), function (s) {
        s.addEventListener("change", function () { applyControls(section); });
      });
      applyControls(section);
    });
  });
}());
