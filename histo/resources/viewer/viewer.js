// histo view: OpenSeadragon panes with overlays drawn on a canvas in level-0 pixel coordinates.
"use strict";
(function () {
  const state = window.histoView = {ready: false, tilesLoaded: 0, firstTileMs: null, panes: [], error: null};
  const t0 = performance.now();

  function niceLength(um) {
    const k = Math.pow(10, Math.floor(Math.log10(um)));
    for (const m of [1, 2, 5, 10]) { if (m * k >= um) return m * k; }
    return 10 * k;
  }
  function fmtUm(um) { return um >= 1000 ? (um / 1000) + " mm" : um + " µm"; }
  function rgb(c, a) { return "rgba(" + c[0] + "," + c[1] + "," + c[2] + "," + (a === undefined ? 1 : a) + ")"; }
  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const k in (attrs || {})) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function transform(pane) {
    const ti = pane.viewer.world.getItemAt(0);
    if (!ti) return null;
    const o = ti.imageToViewerElementCoordinates(new OpenSeadragon.Point(0, 0));
    const e = ti.imageToViewerElementCoordinates(new OpenSeadragon.Point(pane.info.width_px, 0));
    return {ox: o.x, oy: o.y, s: (e.x - o.x) / pane.info.width_px};
  }

  function draw(pane) {
    const c = pane.canvas, dpr = window.devicePixelRatio || 1;
    const w = pane.box.clientWidth, h = pane.box.clientHeight;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
      c.width = Math.round(w * dpr); c.height = Math.round(h * dpr);
    }
    const ctx = c.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const t = transform(pane);
    if (!t) return;
    const info = pane.info;
    for (const L of pane.layers) {
      if (!L.on || L.data === null) continue;
      ctx.globalAlpha = L.opacity;
      if (L.kind === "raster") {
        ctx.imageSmoothingEnabled = false;
        ctx.drawImage(L.data, t.ox, t.oy, info.width_px * t.s, info.height_px * t.s);
      } else if (L.kind === "points") {
        drawPoints(ctx, L.data, t, w, h, info.mpp, info);
      } else if (L.kind === "shapes") {
        ctx.strokeStyle = rgb(L.data.colour); ctx.lineWidth = 3; ctx.fillStyle = rgb(L.data.colour);
        ctx.font = "12px sans-serif";
        for (const s of L.data.shapes) {
          ctx.beginPath();
          let lx, ly;
          if (s.type === "rect") {
            const [a, b, cc, dd] = s.box;
            ctx.rect(t.ox + a * t.s, t.oy + b * t.s, (cc - a) * t.s, (dd - b) * t.s); lx = t.ox + a * t.s; ly = t.oy + b * t.s;
          } else if (s.type === "circle") {
            ctx.arc(t.ox + s.centre[0] * t.s, t.oy + s.centre[1] * t.s, s.radius * t.s, 0, 2 * Math.PI);
            lx = t.ox + (s.centre[0] - s.radius) * t.s; ly = t.oy + (s.centre[1] - s.radius) * t.s;
          } else {
            s.points.forEach((p, k) => { const X = t.ox + p[0] * t.s, Y = t.oy + p[1] * t.s; k ? ctx.lineTo(X, Y) : ctx.moveTo(X, Y); });
            ctx.closePath(); lx = t.ox + s.points[0][0] * t.s; ly = t.oy + s.points[0][1] * t.s;
          }
          ctx.stroke();
          if (s.label) ctx.fillText(s.label, lx + 4, ly - 5);
        }
      }
    }
    ctx.globalAlpha = 1;
    // scale bar: a round length near 120 screen px
    const umPerPx = info.mpp / t.s, um = niceLength(umPerPx * 120);
    pane.bar.style.width = Math.round(um / umPerPx) + "px";
    pane.barLabel.textContent = fmtUm(um);
  }

  // points in view, one path per colour (one fill or stroke for thousands of cells); squares below 3 px
  // more points in view than this: the layer's overview image (drawn once) stands in for them
  const OVERVIEW_POINTS = 20000, OVERVIEW_PX = 2048;

  function overview(d, info) {
    const k = OVERVIEW_PX / Math.max(info.width_px, info.height_px);
    const c = document.createElement("canvas");
    c.width = Math.max(1, Math.round(info.width_px * k)); c.height = Math.max(1, Math.round(info.height_px * k));
    // pixels set directly: a path of 300k squares takes seconds to fill without a GPU, this a few ms
    const W = c.width, H = c.height, img = new ImageData(W, H), px = img.data;
    const r = Math.max(1, Math.round(d.radius_um / info.mpp * k));
    for (let i = 0; i < d.x.length; i++) {
      const col = d.cls ? d.class_colours[d.cls[i]] : d.colour;
      const cx = Math.round(d.x[i] * k), cy = Math.round(d.y[i] * k);
      for (let y = Math.max(0, cy - r); y < Math.min(H, cy + r); y++) {
        for (let x = Math.max(0, cx - r); x < Math.min(W, cx + r); x++) {
          const o = 4 * (y * W + x);
          px[o] = col[0]; px[o + 1] = col[1]; px[o + 2] = col[2]; px[o + 3] = 255;
        }
      }
    }
    c.getContext("2d").putImageData(img, 0, 0);
    return c;
  }

  function drawPoints(ctx, d, t, w, h, mpp, info) {
    const r = Math.max(2.5, d.radius_um / mpp * t.s);
    const x0 = -t.ox / t.s, y0 = -t.oy / t.s, x1 = (w - t.ox) / t.s, y1 = (h - t.oy) / t.s;
    const n = d.x.length, inView = [];
    for (let i = 0; i < n; i++) {
      const x = d.x[i], y = d.y[i];
      if (x >= x0 && x <= x1 && y >= y0 && y <= y1) inView.push(i);
    }
    if (inView.length > OVERVIEW_POINTS) {
      if (!d.overview) d.overview = overview(d, info);
      ctx.imageSmoothingEnabled = true;
      ctx.drawImage(d.overview, t.ox, t.oy, info.width_px * t.s, info.height_px * t.s);
      return;
    }
    const step = 1;
    const paths = new Map();
    for (let k = 0; k < inView.length; k += step) {
      const i = inView[k], c = d.cls ? d.cls[i] : -1;
      let path = paths.get(c);
      if (!path) { path = new Path2D(); paths.set(c, path); }
      const sx = t.ox + d.x[i] * t.s, sy = t.oy + d.y[i] * t.s;
      if (r < 3 && d.cls) path.rect(sx - r, sy - r, 2 * r, 2 * r);
      else { path.moveTo(sx + r, sy); path.arc(sx, sy, r, 0, 2 * Math.PI); }
    }
    ctx.lineWidth = 2;
    for (const [c, path] of [...paths].sort((a, b) => a[0] - b[0])) {  // 3+ on top
      if (c >= 0) { ctx.fillStyle = rgb(d.class_colours[c]); ctx.fill(path); }
      else { ctx.strokeStyle = rgb(d.colour); ctx.stroke(path); }
    }
    if (!d.cls && t.s * 100 > 20) {
      ctx.fillStyle = rgb(d.colour); ctx.font = "11px sans-serif";
      for (let k = 0; k < inView.length; k += step) {
        const i = inView[k];
        ctx.fillText(d.score[i].toFixed(2), t.ox + d.x[i] * t.s + r + 2, t.oy + d.y[i] * t.s - r);
      }
    }
  }

  // one overlay redraw per animation frame, however many viewport events came in it
  function schedule(pane) {
    if (pane.pending) return;
    pane.pending = true;
    requestAnimationFrame(() => { pane.pending = false; draw(pane); });
  }

  function redrawAll() { for (const p of state.panes) draw(p); }

  function pick(pane, pos) {
    const t = transform(pane);
    if (!t) return null;
    let best = null, bestD = 12;
    for (const L of pane.layers) {
      if (!L.on || L.kind !== "points" || !L.data) continue;
      const d = L.data;
      for (let i = 0; i < d.x.length; i++) {
        const dist = Math.hypot(t.ox + d.x[i] * t.s - pos.x, t.oy + d.y[i] * t.s - pos.y);
        if (dist < bestD) { bestD = dist; best = {layer: L, i: i}; }
      }
    }
    if (!best) return null;
    const d = best.layer.data, i = best.i, mpp = pane.info.mpp;
    const where = " at (" + (d.x[i] * mpp).toFixed(0) + ", " + (d.y[i] * mpp).toFixed(0) + ") µm";
    return d.cls ? "IHC cell class " + d.class_names[d.cls[i]] + where
                 : "Mitosis score " + d.score[i].toFixed(3) + where;
  }

  function syncFrom(src) {
    if (state.syncing) return;
    state.syncing = true;
    try {
      const vp = src.viewer.viewport;
      if (!src.viewer.world.getItemAt(0)) return;
      const c = vp.viewportToImageCoordinates(vp.getCenter(true));
      const zImg = vp.viewportToImageZoom(vp.getZoom(true));
      for (const p of state.panes) {
        if (p === src || !p.viewer.world.getItemAt(0)) continue;
        // registration matrices map the IHC (moving) frame to the H&E (fixed) frame in level-0 px
        let q = [c.x, c.y];
        if (src.matrix) q = apply(src.matrix, q);
        if (p.matrix) q = apply(inverse(p.matrix), q);
        p.viewer.viewport.zoomTo(p.viewer.viewport.imageToViewportZoom(zImg), null, true);
        p.viewer.viewport.panTo(p.viewer.viewport.imageToViewportCoordinates(new OpenSeadragon.Point(q[0], q[1])), true);
      }
    } finally { state.syncing = false; }
  }
  function apply(m, p) { return [m[0][0] * p[0] + m[0][1] * p[1] + m[0][2], m[1][0] * p[0] + m[1][1] * p[1] + m[1][2]]; }
  function inverse(m) {
    const a = m[0][0], b = m[0][1], c = m[0][2], d = m[1][0], e = m[1][1], f = m[1][2], det = a * e - b * d;
    return [[e / det, -b / det, (b * f - c * e) / det], [-d / det, a / det, (c * d - a * f) / det], [0, 0, 1]];
  }

  function sidebar(pane) {
    const side = document.getElementById("side");
    const sec = el("section", {id: "pane-" + pane.info.index});
    sec.appendChild(el("h3", {}, pane.info.title));
    for (const L of pane.layers) {
      const row = el("div", {class: "layer"});
      const cb = el("input", {type: "checkbox", id: "layer-" + pane.info.index + "-" + L.id});
      cb.checked = L.on;
      cb.addEventListener("change", () => { L.on = cb.checked; draw(pane); });
      const lab = el("label", {for: cb.id});
      for (const [name, c] of L.legend) { const sw = el("span", {class: "swatch"}); sw.style.background = rgb(c); lab.appendChild(sw); lab.appendChild(document.createTextNode(name + " ")); }
      lab.insertBefore(document.createTextNode(L.name + ": "), lab.firstChild);
      const op = el("input", {type: "range", min: "0", max: "1", step: "0.05", id: "opacity-" + pane.info.index + "-" + L.id,
                              title: "opacity"});
      op.value = String(L.opacity);
      op.addEventListener("input", () => { L.opacity = parseFloat(op.value); draw(pane); });
      row.append(cb, lab, op);
      sec.appendChild(row);
    }
    const tbl = el("table", {class: "measurements"});
    for (const [k, v] of pane.info.measurements) { const tr = el("tr"); tr.append(el("th", {}, k), el("td", {}, v)); tbl.appendChild(tr); }
    const det = el("details", {open: ""});
    det.append(el("summary", {}, "Measurements"), tbl);
    sec.appendChild(det);
    side.appendChild(sec);
  }

  async function loadLayer(i, L) {
    if (L.kind === "raster") {
      const img = new Image();
      await new Promise((ok, bad) => { img.onload = ok; img.onerror = bad; img.src = "layer/" + i + "/" + L.id + ".png"; });
      return img;
    }
    return (await fetch("layer/" + i + "/" + L.id + ".json")).json();
  }

  async function makePane(info) {
    const box = el("div", {class: "pane", id: "viewer-" + info.index});
    const osd = el("div", {class: "osd", id: "osd-" + info.index});
    const canvas = el("canvas", {class: "overlay"});
    const sb = el("div", {class: "scalebar"}), bar = el("div", {class: "bar"}), barLabel = el("span", {class: "label"});
    sb.append(bar, barLabel);
    box.append(osd, canvas, el("div", {class: "title"}, info.title), sb);
    document.getElementById("panes").appendChild(box);
    // the Deep Zoom descriptor inline (as the .dzi says): one round trip less before the first tile
    const source = {width: info.width_px, height: info.height_px, tileSize: info.tile_px, tileOverlap: 0,
                    minLevel: 0, maxLevel: info.max_level,
                    getTileUrl: (l, x, y) => "slide/" + info.index + "_files/" + l + "/" + x + "_" + y + ".jpeg"};
    // the 2-D canvas drawer: WebGL without a GPU (software) costs hundreds of ms a frame; several tiles
    // a frame, since OpenSeadragon's one-per-frame default makes a view of 25 tiles wait 25 frames
    const viewer = OpenSeadragon({element: osd, tileSources: source, showNavigationControl: false, drawer: "canvas",
      maxTilesPerFrame: 16, animationTime: 0.4, maxZoomPixelRatio: 4, visibilityRatio: 0.2,
      gestureSettingsMouse: {clickToZoom: false}});
    const pane = {info, box, canvas, bar, barLabel, viewer, matrix: null,
                  layers: info.layers.map(L => Object.assign({}, L, {data: null}))};
    state.panes.push(pane);
    viewer.addHandler("tile-loaded", () => {
      state.tilesLoaded++;
      if (state.firstTileMs === null) state.firstTileMs = performance.now() - t0;
    });
    viewer.addHandler("update-viewport", () => schedule(pane));
    viewer.addHandler("viewport-change", () => syncFrom(pane));
    viewer.addHandler("canvas-click", (e) => {
      if (!e.quick) return;
      const text = pick(pane, e.position);
      if (text) { document.getElementById("info").textContent = info.title + ": " + text; }
    });
    sidebar(pane);
    await Promise.all(pane.layers.map(async (L) => {
      L.data = await loadLayer(info.index, L);
      if (L.id === "registration" && L.data.matrix) pane.matrix = L.data.matrix;
    }));
    await new Promise(ok => { if (viewer.world.getItemAt(0)) ok(); else viewer.addOnceHandler("open", ok); });
    draw(pane);
  }

  async function main() {
    const view = await (await fetch("view.json")).json();
    document.getElementById("command").textContent = view.command;
    await Promise.all(view.panes.map(makePane));
    window.addEventListener("resize", redrawAll);
    state.ready = true;
  }
  main().catch(err => { state.error = String(err); document.getElementById("info").textContent = "error: " + err; });
})();
