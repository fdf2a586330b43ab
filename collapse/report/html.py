"""HTML building blocks of the report: one static page, its style inline, no external resource.

The page's only script runs once every image has settled (loaded or failed) and writes what it
saw onto ``<body>``: ``data-images`` (count), ``data-broken`` (JSON list of the ``src`` of images
that did not load), ``data-height`` (page height in CSS pixels) and ``data-ready="yes"``. A
headless browser's ``--dump-dom`` therefore shows whether every image loaded.
"""
from __future__ import annotations

import html
import json
import math
import os
import posixpath

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1320px;padding:0 16px;color:#222}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:18px 0 6px}.muted{color:#666}.small{font-size:12px}
.grid{display:flex;flex-wrap:wrap;gap:10px}figure{margin:0;border:1px solid #e4e4e4;padding:6px;background:#fff}
figure{display:table}figcaption{display:table-caption;caption-side:bottom;font-size:12px;color:#444;padding:2px 6px 6px;
background:#fff;border:1px solid #e4e4e4;border-top:0}img{display:block}
table{border-collapse:collapse;font-size:12px;margin:6px 0}.small table{font-size:10.5px}
td,th{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}pre{background:#f7f7f7;padding:8px;font-size:12px;overflow:auto;
max-height:480px}.swatch{display:inline-block;width:26px;height:4px;vertical-align:middle;margin:0 4px 0 10px}
.card{border:1px solid #ccc;padding:8px;background:#fafafa}.partial{color:#B35900;font-weight:600}
.copy{color:#C00000;font-weight:600}
.warning{border:2px solid #C00000;background:#FFF0F0;padding:8px 12px;margin:12px 0}a{color:#0B5CAD}
"""

SCRIPT = """
(function(){
  function settle(){
    var imgs=Array.prototype.slice.call(document.images);
    var pending=imgs.filter(function(i){return !i.complete;});
    if(pending.length){setTimeout(settle,50);return;}
    var broken=imgs.filter(function(i){return !(i.naturalWidth>0);}).map(function(i){return i.getAttribute('src');});
    var b=document.body;
    b.setAttribute('data-images',String(imgs.length));
    b.setAttribute('data-broken',JSON.stringify(broken));
    b.setAttribute('data-height',String(document.documentElement.scrollHeight));
    b.setAttribute('data-ready','yes');
  }
  if(document.readyState==='complete'){settle();}else{window.addEventListener('load',settle);}
})();
"""


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def num(v, digits: int = 4) -> str:
    """A number for a table: ``digits`` significant digits; '-' when absent or not finite."""
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        return "-"
    return str(v) if isinstance(v, int) else f"{v:.{digits}g}"


def seconds(v) -> str:
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        return "-"
    return f"{v:.1f} s" if v < 120 else f"{v / 60:.1f} min"


def table(headers: list[str], rows: list[list[str]], left: int = 1) -> str:
    """A table whose cells are already HTML; the first ``left`` columns are left-aligned."""
    cls = lambda i: ' class="l"' if i < left else ""   # noqa: E731
    head = "".join(f"<th{cls(i)}>{h}</th>" for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def image(src: str, alt: str, width: int | None = None) -> str:
    w = f' width="{width}"' if width else ""
    return f'<img src="{esc(src)}" alt="{esc(alt)}"{w}>'


def figure(src: str, alt: str, caption: str, data: dict | None = None, width: int | None = None) -> str:
    """A figure; ``data`` becomes ``data-*`` attributes (values JSON-encoded unless strings)."""
    attrs = "".join(f' data-{k}="{esc(v if isinstance(v, str) else json.dumps(v))}"' for k, v in (data or {}).items())
    return f"<figure{attrs}>{image(src, alt, width)}<figcaption>{caption}</figcaption></figure>"


def link(target: str, out_dir: str, root: str, text: str) -> str:
    return f'<a href="{esc(href(target, out_dir, root))}">{esc(text)}</a>'


def href(target: str, out_dir: str, root: str) -> str:
    """A link from the page in ``out_dir`` to ``target`` of the run at ``root``: relative when both
    lie inside the run (the report at ``<run>/report``: the run can be moved or served as is),
    else absolute (``file://`` for a local path)."""
    slash = "/" if target.endswith("/") else ""
    base = root.rstrip("/") + "/"
    if out_dir.rstrip("/") + "/" == base or out_dir.startswith(base):
        if target.startswith(base):
            return posixpath.relpath(_path(target), _path(out_dir)) + slash
    if "://" in target:
        return target
    return "file://" + os.path.abspath(target) + slash


def _path(url: str) -> str:
    return url.split("://", 1)[1] if "://" in url else url


def page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<style>{STYLE}</style></head>\n<body>\n{body}\n<script>{SCRIPT}</script>\n</body></html>\n")
