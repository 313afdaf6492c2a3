"""The README is a front door that fits on a few screens, and what it points at exists.

The docs site itself is checked by `make docs` (`mkdocs build --strict`: links, anchors, the nav).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.settings import Settings
from tests.conftest import ROOT

README = ROOT / "README.md"
MAX_README_LINES = 250

FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def prose(text: str) -> str:
    """The text outside code blocks and code spans, where a link is a link."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|<[^>]+>", "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for m in HEADING.finditer(FENCE.sub("", path.read_text())):
        base = slug(m[1])
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def relative_links(path: Path) -> list[str]:
    return [t for t in LINK.findall(prose(path.read_text())) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def test_readme_fits_on_a_few_screens() -> None:
    lines = README.read_text().count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; at most {MAX_README_LINES}: move the rest into docs/"


def test_readme_links_resolve() -> None:
    links = relative_links(README)
    assert links, "the README links nowhere"
    broken = []
    for link in links:
        target, _, fragment = link.partition("#")
        path = (README.parent / target).resolve() if target else README
        if not path.exists():
            broken.append(f"{link}: no {target}")
        elif fragment and path.suffix == ".md" and fragment not in anchors(path):
            broken.append(f"{link}: no heading #{fragment} in {path.relative_to(ROOT)}")
    assert not broken, "README.md links:\n" + "\n".join(broken)


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Two commands on a fresh machine", "two-commands-on-a-fresh-machine"),
        ("What `make fuzz` does, 2x!", "what-make-fuzz-does-2x"),
    ],
)
def test_slug_is_githubs(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor


def test_readme_names_the_commands_and_ci_runs_its_test_command() -> None:
    text = README.read_text()
    for command in ("make serve", "make test", "make check"):
        assert command in text, f"the README does not name `{command}`"
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^exec make test$", ci, re.M), ".ci/run must run exactly the README's test command, `make test`"


def test_every_docs_page_is_in_the_nav() -> None:
    """mkdocs --strict fails on a page left out of the nav too; this says which one without building the site."""
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = sorted(p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md"))
    assert pages
    assert [p for p in pages if p not in nav] == []


def test_the_api_page_documents_every_setting_and_only_settings() -> None:
    text = (ROOT / "docs" / "api.md").read_text()
    section = text.split("## Settings", 1)[1].split("\n## ", 1)[0]
    table = {name for row in re.findall(r"^\| (.+?) \|", section, re.M) for name in re.findall(r"`(MLA_\w+)`", row)}
    fields = {f"MLA_{f.upper()}" for f in Settings.model_fields}
    assert fields - table == set(), "settings docs/api.md's table does not name"
    assert table - fields == set(), "docs/api.md's table names settings that do not exist"


def test_the_readme_example_answer_is_the_served_default_models() -> None:
    """The example answer names the version `make serve` serves and that version's manifest hash: an answer left
    behind by an older version is caught (its fields are checked against the schema by the end-to-end tests)."""
    import json

    from common.manifest import manifest_sha256, newest_version

    text = README.read_text()
    block = re.search(r"```json\n(\{\"model\".*?)\n```", text, re.S)
    assert block is not None, "README.md has no example answer"
    answer = json.loads(block.group(1))
    served = newest_version(ROOT / "models" / "default")
    assert answer["model"]["version"] == served.name
    assert answer["model"]["manifest_sha256"] == manifest_sha256(served)
    assert answer["label"] in answer["probabilities"]
    assert f"models/default/{served.name}`" in text  # and the prose names the same version
