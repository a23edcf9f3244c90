"""The report's markdown tables as standalone HTML pages, for `snakemake --report` (which
shows HTML in its viewer but offers CSV and markdown only as downloads).

Converts the subset of markdown that segbench writes — ``#`` headings, paragraphs, ``-``
lists, pipe tables with an alignment row, ``**bold**`` and ```code``` — and escapes
everything else. A table wider than the page scrolls sideways in its own box rather than
being cut off. No dependency beyond the standard library.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from segbench.io import write_text

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.2em; color: #1f2933; }
h1, h2, h3 { font-weight: 600; margin: 1em 0 0.4em; } h1 { font-size: 1.35em; } h2 { font-size: 1.15em; }
p, li { line-height: 1.45; max-width: 75em; } code { background: #f0f2f4; padding: 0 0.25em; border-radius: 3px; }
.table-scroll { overflow-x: auto; max-width: 100%; margin: 0.6em 0 1.2em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #cfd6dd; padding: 0.25em 0.6em; white-space: nowrap; }
th { background: #eef2f6; } tr:nth-child(even) td { background: #f8fafc; }
td.r, th.r { text-align: right; font-variant-numeric: tabular-nums; }
"""

_INLINE = [(re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
           (re.compile(r"\*\*([^*]+)\*\*"), r"<strong>\1</strong>")]


_BULLET = re.compile(r"^\s*[-*]\s+")


def _inline(text: str) -> str:
    out = html.escape(text, quote=False)
    for pattern, repl in _INLINE:
        out = pattern.sub(repl, out)
    return out


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _table(lines: list[str]) -> str:
    header, align, *body = lines
    right = [c.endswith(":") and not c.startswith(":") for c in _cells(align)]

    def row(cells: list[str], tag: str) -> str:
        cls = [' class="r"' if i < len(right) and right[i] else "" for i in range(len(cells))]
        tds = "".join(f"<{tag}{k}>{_inline(c)}</{tag}>" for k, c in zip(cls, cells))
        return f"<tr>{tds}</tr>"

    rows = [row(_cells(header), "th")] + [row(_cells(r), "td") for r in body]
    # a table wider than the page scrolls sideways in its own box (the report's viewer is an
    # iframe whose own scroll bar can sit below the visible part of the page)
    return '<div class="table-scroll">\n<table>\n' + "\n".join(rows) + "\n</table>\n</div>"


def markdown_to_html(md: str, title: str) -> str:
    """A complete HTML page for ``md`` (segbench's markdown subset)."""
    parts: list[str] = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        m = re.match(r"(#{1,6})\s+(.*)", line)
        if m:
            n = len(m.group(1))
            parts.append(f"<h{n}>{_inline(m.group(2))}</h{n}>")
            i += 1
        elif line.lstrip().startswith("|"):
            block = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                block.append(lines[i])
                i += 1
            parts.append(_table(block) if len(block) >= 2 else f"<p>{_inline(block[0])}</p>")
        elif re.match(r"\s*[-*]\s+", line):
            items = []
            while i < len(lines) and re.match(r"\s*[-*]\s+", lines[i]):
                items.append("<li>" + _inline(_BULLET.sub("", lines[i])) + "</li>")
                i += 1
            parts.append("<ul>" + "".join(items) + "</ul>")
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not re.match(r"(#{1,6}\s|\s*\||\s*[-*]\s)", lines[i]):
                para.append(lines[i].strip())
                i += 1
            parts.append(f"<p>{_inline(' '.join(para))}</p>")
    body = "\n".join(parts)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")


def write_html_tables(md_paths: list[Path]) -> list[Path]:
    """``x.html`` beside each ``x.md``; returns the written paths."""
    out = []
    for md in md_paths:
        md = Path(md)
        target = md.with_suffix(".html")
        write_text(target, markdown_to_html(md.read_text(encoding="utf-8"), title=md.stem))
        out.append(target)
    return out


__all__ = ["markdown_to_html", "write_html_tables"]


