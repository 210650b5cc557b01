"""Self-contained HTML reports (no scripts, no external assets) for the Kubeflow UI's HTML viewer."""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from typing import Any

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.5rem;color:#1f2328}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:1.6rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #d0d7de;padding:.25rem .6rem;text-align:left}th{background:#f6f8fa}
.pass{color:#1a7f37;font-weight:600}.fail{color:#cf222e;font-weight:600}.warn{color:#9a6700;font-weight:600}
"""


def verdict(passed: bool, *, warning: bool = False) -> str:
    """A coloured PASS / FAIL (or WARN) badge."""
    if passed:
        return '<span class="pass">PASS</span>'
    return '<span class="warn">WARN</span>' if warning else '<span class="fail">FAIL</span>'


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def table(rows: Iterable[Mapping[str, Any]], *, raw: Iterable[str] = ()) -> str:
    """An HTML table from rows of equal keys; columns named in ``raw`` hold trusted HTML."""
    rows = list(rows)
    if not rows:
        return "<p><em>none</em></p>"
    raw = set(raw)
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{v if k in raw else fmt(v)}</td>" for k, v in row.items()) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, sections: Iterable[tuple[str, str]]) -> str:
    """A whole HTML document: a title and (heading, trusted HTML body) sections."""
    parts = "".join(f"<h2>{html.escape(h)}</h2>{body}" for h, body in sections)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{parts}</body></html>"
    )
