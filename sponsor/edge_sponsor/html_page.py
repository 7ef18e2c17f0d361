"""The shell of the sponsor's HTML pages: one self-contained document, its base style.

A page the sponsor's tools write (the statistics report, the run report) is archived,
mailed and opened offline: inline CSS and SVG only, no script, nothing fetched, which
its Content-Security-Policy enforces. Everything a page shows that came from a package,
a plan, a federation file or a release is escaped by the page's own code.
"""

from __future__ import annotations

from collections.abc import Iterable
from html import escape

HEADER_HEIGHT_PX = 96
"""The header's fixed height: what a page draws at fixed coordinates starts below it."""
PAGE_LEFT_PX = 32

BASE_CSS = f"""
*{{box-sizing:border-box}}
body{{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1d2430;
background:#ffffff}}
header{{height:{HEADER_HEIGHT_PX}px;overflow:hidden;padding:18px {PAGE_LEFT_PX}px 0;border-bottom:1px solid #d9dee7}}
header h1{{margin:0;font-size:22px}}
header p{{margin:4px 0 0;color:#4a5568}}
main{{padding:8px {PAGE_LEFT_PX}px 48px;max-width:1800px}}
h2{{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d9dee7;padding-bottom:4px}}
table{{border-collapse:collapse;margin:6px 0 12px;font-size:13px}}
th,td{{border:1px solid #d9dee7;padding:4px 8px;text-align:left;vertical-align:top}}
th{{background:#f3f5f9}}
td.num{{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}}
.note{{color:#4a5568}}
.warning{{color:#9b1c1c;font-weight:600}}
"""


def render_page(title: str, subtitle: str, body: Iterable[str], *, css: str = "") -> str:
    """The document: ``title`` and ``subtitle`` (plain text, escaped here) in the header,
    then ``body``, HTML the caller built (and escaped)."""
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
            f"<title>{escape(title)}</title><style>{BASE_CSS}{css}</style></head><body>",
            f"<header><h1>{escape(title)}</h1><p>{escape(subtitle)}</p></header>",
            *body,
            "</body></html>",
        ]
    )
