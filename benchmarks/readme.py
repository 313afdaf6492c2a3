"""Copy the benchmark tables from benchmarks/results/*.md into docs/benchmarks.md.

    python -m benchmarks.readme

A section `<!-- bench:NAME -->` ... `<!-- /bench:NAME -->` gets benchmarks/results/NAME.md, its headings nested
three levels down (under the page's `## ` heading), so the published numbers are always the JSON's, never typed by
hand. The README carries no tables: it links to the page.
"""

from __future__ import annotations

import re
from pathlib import Path

from benchmarks.report import RESULTS

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = (ROOT / "docs" / "benchmarks.md",)
SECTION = re.compile(r"(<!-- bench:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /bench:(?P=name) -->)", re.S)


def render(text: str, results: Path = RESULTS) -> str:
    def fill(m: re.Match[str]) -> str:
        md = results / f"{m['name']}.md"
        if not md.is_file():
            return m.group(0)
        body = md.read_text().strip()
        body = re.sub(r"^(#{1,3}) ", lambda h: "#" * (len(h[1]) + 3) + " ", body, flags=re.M)  # nest under the page's ## heading
        return f"{m.group(1)}{body}\n{m.group(4)}"

    return SECTION.sub(fill, text)


def main() -> None:
    for doc in DOCUMENTS:
        if doc.is_file():
            doc.write_text(render(doc.read_text()))


if __name__ == "__main__":
    main()
