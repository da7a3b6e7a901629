"""Report: the run's Parquet tables, the adapter library index and a static HTML page.

Tables (their columns and types: `motioncrafter.runformat.TABLES`), each one Parquet file:
  results/results.parquet    one row per rendered video: motion_id, row, prompt, seed, video_uri, metrics
  summary/summary.parquet    one row per motion: motion_id, row, adapter_uri, per-motion metrics, timings
  failures/failures.parquet  one row per failed manifest row: motion_id, row, stage, reason
  adapters.parquet           the committed adapters, read back from their markers and metadata
Every table is written in its declared schema, empty or not.
"""

from __future__ import annotations

import html
import math
import os
from urllib.parse import quote


from motioncrafter import storage
from motioncrafter.runformat import WEIGHTS_NAME, AdapterMeta, CommitMarker, Failure, RunLayout, committed_adapters, read_table

def adapter_index(layout: RunLayout, motions: dict[str, int]) -> list[dict]:
    """One row per committed adapter of `motions` (motion_id -> manifest row): marker + metadata.

    Built from what is on storage, not from what the train stage reported: an adapter
    is in the library exactly when its `_COMMITTED` marker exists. One listing of
    adapters/ finds them (and their sizes); markers and metadata are read side by side.
    """
    committed = {m: files for m, files in committed_adapters(layout).items() if m in motions}
    files = {m: layout.adapter_files(m) for m in committed}
    texts = storage.read_many([uri for f in files.values() for uri in (f.marker, f.meta)])
    rows = []
    for motion_id, folder in files.items():
        marker = CommitMarker.from_json(texts[folder.marker])
        meta = AdapterMeta.from_json(texts[folder.meta])
        rows.append({
            "motion_id": motion_id, "row": motions[motion_id], "adapter_uri": folder.uri,
            "prompt": meta.reference.prompt, "subject": meta.reference.subject, "clip_sha256": marker.clip_sha256,
            "kind": meta.kind, "mode": meta.mode, "rank": meta.rank, "family": meta.family,
            "base_fingerprint": meta.base_fingerprint, "format_version": meta.format_version,
            "bytes": committed[motion_id].get(WEIGHTS_NAME, {}).get("size"),
            "train_seconds": marker.train_seconds, "committed_at": marker.committed_at, "committed_by_run": marker.run_id,
        })
    return rows


def write_html(layout: RunLayout, info: dict, summary: list[dict], results: list[dict], failures: list[Failure]) -> None:
    """The run's static page, `<run>/report.html`: a header (status, counts, stage timings, key
    config), one card per motion (its reference clip, its generated GIFs, its metrics), a sortable
    motions x metrics table, the per-video table and the failures.

    A motion's reference clip is the `videos/<motion_id>/reference.gif` its render wrote. Every
    user string is escaped and every link is relative to the run's folder, so the page works from a local folder and from object storage
    alike; it loads nothing from outside (inline CSS and script). Once every image has loaded the
    script sets `data-images-ok="yes"` on <body> ("no" if one fails).
    """
    metrics = sorted({k for r in summary for k, v in r.items() if _is_metric(k, v)})
    video_metrics = sorted({k for r in results for k, v in _video_metrics(r).items()})
    gifs: dict[str, list[dict]] = {}
    for r in sorted(results, key=lambda r: (r.get("row", 0), r.get("k", 0))):
        gifs.setdefault(str(r.get("motion_id", "")), []).append(r)
    card_ids = {str(r["motion_id"]) for r in summary}
    ref_links = _written_references(layout, card_ids)

    cards = "".join(_motion_card(layout, r, gifs.get(str(r["motion_id"]), []), ref_links.get(str(r["motion_id"])), metrics)
                    for r in sorted(summary, key=lambda r: r.get("row", 0)))
    motion_rows = [{**r, "grid": _rel(layout, r.get("grid_uri"))} for r in summary]
    video_rows = [{**r, **_video_metrics(r), "gif": _rel(layout, r.get("gif_uri"))} for r in results]
    seconds_cols = [c for c in ("train_seconds", "render_seconds") if any(c in r for r in summary)]
    title = f"MotionCrafter run {_e(layout.run_id)}"
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{_CSS}</style></head><body>
{_header(layout, info)}
<main>
<section><h2>Motions <span class="n">{len(summary)}</span></h2>
{cards or '<p class="empty">No motion was rendered.</p>'}</section>
<section><h2>Metrics by motion</h2><p class="hint">Click a column header to sort.</p>
{_sortable_table(motion_rows, ["motion_id", "row", "num_videos", *metrics, *seconds_cols, "grid"], "motions")}</section>
<section><h2>Videos <span class="n">{len(results)}</span></h2>
{_sortable_table(video_rows, ["motion_id", "k", "prompt", "seed", *video_metrics, "gif"], "videos")}</section>
<section><h2>Failures <span class="n{' bad' if failures else ''}">{len(failures)}</span></h2>
{_sortable_table([f.to_row() for f in failures], ["motion_id", "row", "stage", "reason"], "failures")}</section>
</main>
<script>{_SCRIPT}</script>
</body></html>
"""
    storage.write_bytes(layout.report, page.encode())


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _is_metric(key: str, value) -> bool:
    """A metric value: a float that is not a timing; NaN is a metric that does not apply (read-back tables hold every
    declared metric column)."""
    return isinstance(value, float) and not math.isnan(value) and not key.endswith("_seconds")


def _video_metrics(result: dict) -> dict:
    """A video's metrics: its `metrics` dict, or its float columns (evaluate flattens them)."""
    nested = result.get("metrics")
    if isinstance(nested, dict):
        return {k: v for k, v in nested.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {k: v for k, v in result.items() if _is_metric(k, v)}


def _rel(layout: RunLayout, uri) -> str | None:
    """`uri` as a link relative to the run's folder (each component percent-quoted), or None
    when it is not inside it: the page never links outside its run."""
    if not uri:
        return None
    root, text = layout.root, str(uri)
    if "://" not in root and "://" not in text:
        root, text = os.path.abspath(root), os.path.abspath(text)
    prefix = root.rstrip("/") + "/"
    if not text.startswith(prefix):
        return None
    parts = text[len(prefix):].split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    return "/".join(quote(p, safe="") for p in parts)


def _written_references(layout: RunLayout, motion_ids: set[str]) -> dict[str, str]:
    """motion_id -> link of the reference GIFs the render stage wrote, from one listing of videos/."""
    found = storage.find(storage.join(layout.root, "videos"))
    uris = {m: layout.reference_gif(m) for m in motion_ids}
    return {m: link for m, uri in uris.items() if uri in found and (link := _rel(layout, uri)) is not None}


def read_tables(layout: RunLayout) -> tuple[list[dict], list[dict], list[Failure]]:
    """summary, results and failures as a run left them on storage."""
    return read_table(layout, "summary"), read_table(layout, "results"), [Failure.from_row(r) for r in read_table(layout, "failures")]


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _seconds(value) -> str:
    return f"{value:.1f} s" if isinstance(value, (int, float)) and not isinstance(value, bool) else "–"


def _header(layout: RunLayout, info: dict) -> str:
    status = str(info.get("status", "unknown"))
    counts = "".join(f'<div class="stat"><b>{_e(_fmt(v))}</b><span>{_e(k)}</span></div>'
                     for k, v in (info.get("counts") or {}).items())
    stages = "".join(f'<div class="stat"><b>{_e(_seconds((s or {}).get("seconds")))}</b><span>{_e(name)}</span></div>'
                     for name, s in (info.get("stages") or {}).items())
    if info.get("seconds") is not None:
        stages += f'<div class="stat total"><b>{_e(_seconds(info["seconds"]))}</b><span>total</span></div>'
    config = info.get("config") or {}
    tune, model = config.get("tune") or {}, config.get("model") or {}
    base = model.get("base_model") or "shipped MovingShapes base"
    keys = [("tune.mode", tune.get("mode", "–")), ("tune.steps", tune.get("steps", "–")),
            ("model.base_model", storage.redact(base))]
    config_html = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in keys)
    return f"""<header>
<div class="title"><h1>Run <code>{_e(layout.run_id)}</code></h1>
<span class="status status-{_e(status.lower())}">{_e(status)}</span></div>
<div class="facts">
<div class="group"><h4>Counts</h4><div class="stats">{counts}</div></div>
<div class="group"><h4>Stage timings</h4><div class="stats">{stages}</div></div>
<div class="group"><h4>Config</h4><dl class="config">{config_html}</dl></div>
</div></header>"""


def _figure(src: str, alt: str, caption: str, cls: str = "") -> str:
    return (f'<figure class="{cls}"><a href="{_e(src)}"><img src="{_e(src)}" alt="{_e(alt)}" width="128" height="128"></a>'
            f"<figcaption>{caption}</figcaption></figure>")


def _motion_card(layout: RunLayout, motion: dict, videos: list[dict], reference: str | None, metrics: list[str]) -> str:
    motion_id = str(motion["motion_id"])
    figures = []
    if reference:
        figures.append(_figure(reference, f"{motion_id} reference", "<b>reference</b>", "ref"))
    for v in videos:
        src = _rel(layout, v.get("gif_uri"))
        if src is None:
            continue
        caption = f'<span class="prompt">{_e(v.get("prompt", ""))}</span><span class="seed">seed {_e(v.get("seed", "–"))}</span>'
        figures.append(_figure(src, f"{motion_id} video {v.get('k', '')}", caption))
    scores = "".join(f'<div class="metric"><span>{_e(m.replace("_", " "))}</span><b>{_e(_fmt(motion.get(m)))}</b></div>'
                     for m in metrics)
    timing = " · ".join(f"{_e(k.replace('_seconds', ''))} {_e(_seconds(motion[k]))}"
                        for k in ("train_seconds", "render_seconds") if k in motion)
    grid = _rel(layout, motion.get("grid_uri"))
    details = " · ".join([f"row {_e(motion.get('row', '–'))}", *([timing] if timing else []),
                          *([f'<a href="{_e(grid)}">frame grid</a>'] if grid else [])])
    return f"""<article class="card" id="motion-{_e(quote(motion_id, safe=''))}">
<div class="card-head"><h3>{_e(motion_id)}</h3><span class="muted">{details}</span></div>
<p class="ref-prompt">{_e(motion.get("prompt", ""))}</p>
<div class="clips">{"".join(figures) or '<p class="empty">No video.</p>'}</div>
<div class="metrics">{scores}</div>
</article>"""


def _sortable_table(rows: list[dict], columns: list[str], name: str) -> str:
    if not rows:
        return f'<p class="empty">No {_e(name)}.</p>'
    def is_number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    present = {c: [r[c] for r in rows if r.get(c) is not None] for c in columns if c not in ("grid", "gif")}
    numeric = {c for c, values in present.items() if values and all(is_number(v) for v in values)}

    def cell(r: dict, c: str) -> str:
        value = r.get(c)
        if c in ("grid", "gif"):
            return f'<td><a href="{_e(value)}">{_e(c)}</a></td>' if value else "<td>–</td>"
        if c in numeric:
            key = "" if value is None or (isinstance(value, float) and math.isnan(value)) else repr(float(value))
            return f'<td class="num" data-v="{_e(key)}">{_e(_fmt(value))}</td>'
        return f"<td>{_e(_fmt(value))}</td>"

    head = "".join(f'<th class="{"num" if c in numeric else ""}" data-type="{"num" if c in numeric else "text"}" '
                   f'tabindex="0" aria-sort="none">{_e(c.replace("_", " "))}</th>' for c in columns)
    body = "".join("<tr>" + "".join(cell(r, c) for c in columns) + "</tr>" for r in rows)
    return (f'<div class="table-wrap"><table class="sortable {_e(name)}">'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")


_CSS = """
:root{--fg:#1d2330;--muted:#6b7280;--line:#e3e6ec;--bg:#f5f6f8;--card:#fff;--accent:#3554d1}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif}
header{background:#fff;border-bottom:1px solid var(--line);padding:20px 32px 16px}
.title{display:flex;align-items:center;gap:14px;flex-wrap:wrap}
h1{font-size:22px;margin:0;font-weight:600} h1 code{font-size:21px}
h2{font-size:17px;margin:28px 0 12px;font-weight:600} h3{font-size:15px;margin:0}
h4{margin:0 0 6px;font-size:11px;text-transform:uppercase;letter-spacing:.06em;color:var(--muted);font-weight:600}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.status{padding:2px 10px;border-radius:999px;font-size:12px;font-weight:600;background:#e5e7eb;color:#374151}
.status-completed{background:#dcfce7;color:#166534} .status-failed{background:#fee2e2;color:#991b1b}
.status-running{background:#fef9c3;color:#854d0e}
.facts{display:flex;gap:36px;flex-wrap:wrap;margin-top:14px}
.stats{display:flex;gap:8px;flex-wrap:wrap}
.stat{background:var(--bg);border:1px solid var(--line);border-radius:8px;padding:6px 12px;min-width:76px}
.stat b{display:block;font-size:17px;font-weight:600} .stat span{color:var(--muted);font-size:12px}
.stat.total{border-color:#c7d2fe;background:#eef2ff}
dl.config{display:grid;grid-template-columns:auto 1fr;gap:3px 12px;margin:0}
dl.config dt{color:var(--muted);font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;padding-top:1px}
dl.config dd{margin:0;font-weight:500;overflow-wrap:anywhere}
main{padding:0 32px 40px;max-width:1400px}
h2 .n{font-size:12px;background:#e5e7eb;border-radius:999px;padding:1px 8px;margin-left:6px;vertical-align:2px;font-weight:600}
h2 .n.bad{background:#fee2e2;color:#991b1b}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:14px 16px;margin-bottom:14px;box-shadow:0 1px 2px rgba(0,0,0,.04)}
.card-head{display:flex;align-items:baseline;gap:12px;flex-wrap:wrap}
.muted,.hint{color:var(--muted);font-size:12px} .hint{margin:-6px 0 8px}
.ref-prompt{margin:4px 0 10px;color:#374151;font-style:italic;overflow-wrap:anywhere}
.clips{display:flex;gap:14px;flex-wrap:wrap;align-items:flex-start}
figure{margin:0;width:136px}
figure img{display:block;width:128px;height:128px;image-rendering:pixelated;image-rendering:crisp-edges;border-radius:6px;border:1px solid var(--line);background:#000}
figure.ref{padding-right:14px;border-right:1px dashed var(--line);width:150px}
figure.ref img{border:2px solid var(--accent)}
figcaption{font-size:12px;margin-top:4px;line-height:1.3;overflow-wrap:anywhere}
figcaption .prompt{display:block} figcaption .seed{display:block;color:var(--muted);font-family:ui-monospace,Menlo,Consolas,monospace;font-size:11px}
.metrics{display:flex;gap:8px;flex-wrap:wrap;margin-top:12px;padding-top:10px;border-top:1px solid var(--line)}
.metric{background:var(--bg);border-radius:6px;padding:3px 9px;font-size:12px}
.metric span{color:var(--muted);margin-right:6px} .metric b{font-variant-numeric:tabular-nums;font-weight:600}
.table-wrap{overflow-x:auto;background:#fff;border:1px solid var(--line);border-radius:10px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{padding:6px 12px;text-align:left;border-bottom:1px solid var(--line);vertical-align:top;overflow-wrap:anywhere}
th{background:#fafbfc;font-weight:600;font-size:12px;color:#374151;cursor:pointer;user-select:none;overflow-wrap:normal}
td:first-child{white-space:nowrap;font-weight:500}
th:hover{background:#eef2ff}
th[aria-sort=ascending]::after{content:" ▲";font-size:9px;color:var(--accent)}
th[aria-sort=descending]::after{content:" ▼";font-size:9px;color:var(--accent)}
tbody tr:nth-child(even){background:#fafbfc} tbody tr:last-child td{border-bottom:0}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
table.failures td:last-child{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;color:#991b1b}
a{color:var(--accent);text-decoration:none} a:hover{text-decoration:underline}
.empty{color:var(--muted);font-style:italic}
"""

_SCRIPT = """
(function () {
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var heads = table.querySelectorAll("thead th");
    heads.forEach(function (th, col) {
      function sort() {
        var asc = th.getAttribute("aria-sort") !== "ascending";
        heads.forEach(function (h) { h.setAttribute("aria-sort", "none"); });
        th.setAttribute("aria-sort", asc ? "ascending" : "descending");
        var num = th.dataset.type === "num", body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        function key(row) {
          var td = row.cells[col];
          if (!num) return td.textContent;
          var v = td.dataset.v;
          return v === "" || v === undefined ? null : parseFloat(v);
        }
        rows.sort(function (a, b) {
          var x = key(a), y = key(b);
          if (x === null || y === null) return x === y ? 0 : (x === null ? 1 : -1);  // empty cells last
          var c = num ? x - y : x.localeCompare(y, undefined, {numeric: true});
          return asc ? c : -c;
        });
        rows.forEach(function (row) { body.appendChild(row); });
      }
      th.addEventListener("click", sort);
      th.addEventListener("keydown", function (e) { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sort(); } });
    });
  });
  var images = Array.prototype.slice.call(document.images), left = images.length, bad = false;
  function settle() {
    if (bad) document.body.dataset.imagesOk = "no";
    else if (left === 0) document.body.dataset.imagesOk = "yes";
  }
  images.forEach(function (img) {
    var seen = false;
    function done(ok) {
      if (seen) return;
      seen = true;
      if (ok && img.naturalWidth > 0) left -= 1; else bad = true;
      settle();
    }
    if (img.complete) done(img.naturalWidth > 0);
    else {
      img.addEventListener("load", function () { done(true); });
      img.addEventListener("error", function () { done(false); });
    }
  });
  settle();
})();
"""
