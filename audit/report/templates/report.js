/* label-audit report: draw the embedded Plotly figures, show thumbnails on map hover, filter the gallery.
   Everything it reads is embedded in this file; external text is only ever set with textContent. */
(function () {
  "use strict";

  function webglAvailable() {
    try {
      var canvas = document.createElement("canvas");
      return Boolean(canvas.getContext("webgl2") || canvas.getContext("webgl"));
    } catch (err) {
      return false;
    }
  }

  function readJson(id) {
    var node = document.getElementById(id);
    return node ? JSON.parse(node.textContent) : null;
  }

  var hasWebgl = webglAvailable();
  var config = { responsive: true, displaylogo: false, modeBarButtonsToRemove: ["lasso2d", "select2d"] };

  function attachPreview(div, box) {
    var thumbs = readJson(box.dataset.thumbs || "map-thumbs") || [];
    var image = box.querySelector("img");
    var fields = {};
    box.querySelectorAll("[data-field]").forEach(function (node) { fields[node.dataset.field] = node; });
    div.on("plotly_hover", function (event) {
      var point = event.points && event.points[0];
      if (!point || !point.customdata) { return; }
      var entry = thumbs[point.customdata[4]];
      box.hidden = false;
      if (entry) {
        image.src = entry.src;
        box.classList.remove("no-thumb");
        fields.id.textContent = entry.id;
        fields.label.textContent = entry.label;
        fields.suggested.textContent = entry.suggested;
        fields.score.textContent = entry.score;
      } else {
        image.removeAttribute("src");
        box.classList.add("no-thumb");
        var parser = new DOMParser();
        ["id", "label", "suggested"].forEach(function (name, i) {
          // customdata holds text escaped for Plotly; decode it as inert text (DOMParser runs no scripts).
          fields[name].textContent = parser.parseFromString(String(point.customdata[i]), "text/html")
            .documentElement.textContent;
        });
        var score = point.customdata[3];
        fields.score.textContent = score === null || score === undefined ? "—" : Number(score).toFixed(3);
      }
    });
  }

  function draw(div) {
    var spec = readJson(div.dataset.figure);
    if (!hasWebgl) {
      // Browsers without WebGL (some remote desktops, mail previews) still get the map, drawn as SVG.
      spec.data.forEach(function (trace) { if (trace.type === "scattergl") { trace.type = "scatter"; } });
    }
    return Plotly.newPlot(div, spec.data, spec.layout, config).then(function () {
      var box = div.dataset.preview ? document.getElementById(div.dataset.preview) : null;
      if (box) { attachPreview(div, box); }
      div.dataset.rendered = "true";
    });
  }

  function drawAll() {
    var divs = Array.prototype.slice.call(document.querySelectorAll("[data-figure]"));
    Promise.all(divs.map(draw)).then(function () {
      document.body.dataset.plotsReady = String(divs.length);
    }, function (err) {
      console.error("label-audit report: a figure failed to draw", err);
      document.body.dataset.plotsReady = "error";
    });
  }

  document.querySelectorAll("input[data-filter]").forEach(function (input) {
    var grid = document.getElementById(input.dataset.filter);
    input.addEventListener("input", function () {
      var needle = input.value.trim().toLowerCase();
      grid.querySelectorAll("[data-search]").forEach(function (card) {
        card.hidden = needle !== "" && card.dataset.search.indexOf(needle) === -1;
      });
    });
  });

  if (typeof Plotly === "undefined") {
    console.error("label-audit report: plotly.js is missing");
    document.body.dataset.plotsReady = "error";
  } else {
    drawAll();
  }
})();
