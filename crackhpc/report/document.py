"""A document as one list of blocks (headings, paragraphs, tables, images), rendered as Markdown and
as HTML: the sweep report and predict's page of crack maps."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field


@dataclass
class Document:
    blocks: list[tuple] = field(default_factory=list)

    def heading(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def para(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, header: list[str], rows: list[list]) -> None:
        self.blocks.append(("table", header, [[_cell(v) for v in row] for row in rows]))

    def image(self, alt: str, path: str) -> None:
        self.blocks.append(("img", alt, path))

    def markdown(self) -> str:
        out = []
        for kind, *args in self.blocks:
            if kind == "h":
                out.append(f"{'#' * args[0]} {args[1]}")
            elif kind == "p":
                out.append(args[0])
            elif kind == "img":
                out.append(f"![{args[0]}]({args[1]})")
            else:
                header, rows = args
                md = [_md_row(header), "|" + "|".join("---" for _ in header) + "|"]
                out.append("\n".join(md + [_md_row(r) for r in rows]))
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        out = [
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;max-width:1200px;margin:2em auto}"
            "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:3px 8px;text-align:left}"
            "img{max-width:100%}</style></head><body>"
        ]
        for kind, *args in self.blocks:
            if kind == "h":
                out.append(f"<h{args[0]}>{html.escape(args[1])}</h{args[0]}>")
            elif kind == "p":
                out.append(f"<p>{html.escape(args[0])}</p>")
            elif kind == "img":
                out.append(f"<p><img src='{html.escape(args[1])}' alt='{html.escape(args[0])}'></p>")
            else:
                header, rows = args
                out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
                out += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows]
                out.append("</table>")
        return "\n".join(out + ["</body></html>"]) + "\n"


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return str(value).replace("\n", " ")


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
