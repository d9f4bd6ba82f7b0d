"""Browser script that keeps the user's chart zoom across live updates.

Why it exists: Gradio 6.31's ``gr.Plot`` wraps its Plotly child in a
``{#key}`` block that changes with every new figure, so each timer update
mounts a fresh ``<div>`` and calls ``Plotly.react`` on it. Plotly's
``uirevision`` only works when the same div is reused, so on its own the zoom
snapped back every two seconds (checked in a browser; see
tests/test_browser.py::test_live_run_reload_and_stop).

The script follows ``uirevision``'s contract by hand, in the page only:

* it listens for ``plotly_relayout`` on the loss and LR charts and remembers
  the axis ranges the user zoomed or panned to (a double-click autoscale
  forgets them);
* it wraps ``Plotly.react`` (Gradio calls it through the same ``window.Plotly``
  object) and writes the remembered ranges into the next figure's layout before
  it is drawn, so there is no flash of the full view;
* a remembered range is dropped when the figure's ``uirevision`` for that axis
  changes (a new run; linear/log for the loss y axis), as Plotly would.

It runs once per page from a hidden ``gr.HTML``'s ``js_on_load``.
"""

from __future__ import annotations

import json

PLOT_IDS = ("loss-plot", "lr-plot")

ZOOM_KEEPER_JS = r"""
if (!window.__ftZoomKeeper) {
  window.__ftZoomKeeper = true;
  const selector = __SELECTOR__;
  const saved = {};  // plot elem_id -> {x: {rev, range}, y: {rev, range}}
  const plotId = (gd) => {
    const root = gd && gd.closest ? gd.closest(selector) : null;
    return root ? root.id : null;
  };
  // What decides whether a zoom survives: the axis' uirevision, else the layout's.
  const rev = (layout, ax) => {
    const a = (layout && layout[ax + 'axis']) || {};
    return JSON.stringify([layout ? layout.uirevision : null, a.uirevision === undefined ? null : a.uirevision]);
  };
  const hook = (gd) => {
    const id = plotId(gd);
    if (!id || gd.__ftHooked || !gd.on) return;
    gd.__ftHooked = true;
    gd.on('plotly_relayout', (ev) => {
      const keep = saved[id] || (saved[id] = {});
      for (const ax of ['x', 'y']) {
        const name = ax + 'axis';
        if (ev[name + '.autorange']) { delete keep[ax]; continue; }
        let lo = ev[name + '.range[0]'];
        let hi = ev[name + '.range[1]'];
        if (Array.isArray(ev[name + '.range'])) [lo, hi] = ev[name + '.range'];
        if (lo !== undefined && hi !== undefined) keep[ax] = {rev: rev(gd.layout, ax), range: [lo, hi]};
      }
    });
  };
  const patch = () => {
    const P = window.Plotly;
    if (!P || typeof P.react !== 'function') return false;
    if (!P.react.__ftZoom) {
      const react = P.react;
      const wrapped = function (gd, data, layout) {
        const id = plotId(gd);
        const keep = id ? saved[id] : null;
        if (keep && layout && typeof layout === 'object') {
          for (const ax of ['x', 'y']) {
            const k = keep[ax];
            if (!k) continue;
            if (k.rev !== rev(layout, ax)) { delete keep[ax]; continue; }
            layout[ax + 'axis'] = Object.assign({}, layout[ax + 'axis'], {range: k.range.slice(), autorange: false});
          }
        }
        const out = react.apply(this, arguments);
        Promise.resolve(out).then(() => hook(gd), () => {});
        return out;
      };
      wrapped.__ftZoom = true;
      P.react = wrapped;
    }
    document.querySelectorAll(selector.split(',').map((s) => s.trim() + ' .js-plotly-plot').join(',')).forEach(hook);
    return true;
  };
  // Gradio loads plotly.js lazily with the first chart: wait for it.
  const poll = setInterval(() => { if (patch()) clearInterval(poll); }, 200);
}
""".replace("__SELECTOR__", json.dumps(", ".join(f"#{i}" for i in PLOT_IDS)))
