"""A self-contained HTML report (images embedded as data URIs, readable offline), and a check that it
renders in headless Chromium with every image decoded."""
from __future__ import annotations

import base64
import html
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1080px;margin:2em auto;padding:0 1em;
color:#1b1f24;line-height:1.5}
h1{border-bottom:2px solid #ddd;padding-bottom:.3em}h2{margin-top:2em;border-bottom:1px solid #eee}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #d0d7de;padding:4px 10px;text-align:left}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}
.note{background:#fff8c5;border:1px solid #d4a72c;padding:.5em 1em;border-radius:6px}
.skip{background:#ffebe9;border:1px solid #ff8182;padding:.5em 1em;border-radius:6px}
pre{background:#f6f8fa;padding:.8em;overflow-x:auto;white-space:pre-wrap}
figure{margin:1em 0}figcaption{font-size:13px;color:#57606a}
"""

# after load, record how many images decoded, for the render check (headless Chromium --dump-dom)
CHECK_SCRIPT = """<script>window.addEventListener('load',()=>{const imgs=[...document.images];
document.body.dataset.images=imgs.length;document.body.dataset.decoded=imgs.filter(i=>i.complete&&i.naturalWidth>0).length;});
</script>"""


@dataclass
class Section:
    title: str
    parts: list[str] = field(default_factory=list)

    def text(self, s: str) -> None:
        self.parts.append(f"<p>{html.escape(s)}</p>")

    def note(self, s: str, kind: str = "note") -> None:
        self.parts.append(f'<div class="{kind}">{html.escape(s)}</div>')

    def pre(self, s: str) -> None:
        self.parts.append(f"<pre>{html.escape(s)}</pre>")

    def table(self, header: list[str], rows: list[list[Any]]) -> None:
        def cell(v):
            if isinstance(v, float):
                return f'<td class="num">{v:,.4g}</td>' if abs(v) < 1e4 else f'<td class="num">{v:,.0f}</td>'
            if isinstance(v, int):
                return f'<td class="num">{v:,}</td>'
            return f"<td>{html.escape(str(v))}</td>"
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(cell(v) for v in r) + "</tr>" for r in rows)
        self.parts.append(f"<table><tr>{head}</tr>{body}</table>")

    def image(self, path: Path, caption: str = "") -> None:
        path = Path(path)
        if not path.exists():
            return
        data = base64.b64encode(path.read_bytes()).decode()
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self.parts.append(f'<figure><img alt="{html.escape(caption or path.stem)}" src="data:image/png;base64,{data}">'
                          f"{cap}</figure>")


def write_html(path: Path, title: str, intro: str, sections: list[Section]) -> Path:
    body = "".join(f"<h2>{html.escape(s.title)}</h2>{''.join(s.parts)}" for s in sections)
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style>{CHECK_SCRIPT}</head><body><h1>{html.escape(title)}</h1>"
            f"<p>{html.escape(intro)}</p>{body}</body></html>")
    path.write_text(page, encoding="utf-8")
    return path


def write_markdown(path: Path, title: str, intro: str, sections: list[Section]) -> Path:
    """The same report as markdown (tables and text; images referenced by file name)."""
    lines = [f"# {title}", "", intro, ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        for part in s.parts:
            if part.startswith("<table>"):
                rows = re.findall(r"<tr>(.*?)</tr>", part)
                cells = [[html.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", r)]
                         for r in rows]
                lines += ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cells[0])]
                lines += ["| " + " | ".join(c) + " |" for c in cells[1:]]
            elif part.startswith("<figure>"):
                alt = re.search(r'alt="([^"]*)"', part).group(1)
                lines.append(f"*[figure: {html.unescape(alt)}]*")
            else:
                lines.append(html.unescape(re.sub(r"<[^>]+>", "", part)))
            lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def find_chromium() -> str | None:
    return next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"),
                             shutil.which("google-chrome")) if p), None)


def render_check(page: Path, screenshot: Path | None = None, timeout: float = 60) -> dict[str, int]:
    """Load the page in headless Chromium: how many images it has and how many decoded.
    Optionally also save a screenshot PNG. Raises RuntimeError when Chromium is missing."""
    chromium = find_chromium()
    if chromium is None:
        raise RuntimeError("Chromium not found: apt-get install chromium")
    url = Path(page).resolve().as_uri()
    with tempfile.TemporaryDirectory() as profile:
        flags = CHROMIUM_FLAGS + [f"--user-data-dir={profile}", "--virtual-time-budget=5000"]
        dom = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True,
                             timeout=timeout).stdout
        if screenshot is not None:
            subprocess.run([chromium, *flags, f"--screenshot={screenshot}", "--window-size=1200,2400", url],
                           capture_output=True, timeout=timeout)
    m = re.search(r'data-images="(\d+)" data-decoded="(\d+)"', dom)
    if not m:
        raise RuntimeError(f"{page}: the page did not finish loading in Chromium")
    return {"images": int(m.group(1)), "decoded": int(m.group(2))}
