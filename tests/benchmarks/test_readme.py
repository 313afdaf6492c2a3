"""The benchmark tables in the docs are copied from the benchmark results, between markers."""

from pathlib import Path

from benchmarks.readme import DOCUMENTS, ROOT, SECTION, render
from benchmarks.report import RESULTS


def test_sections_are_filled_from_results(tmp_path: Path) -> None:
    (tmp_path / "speed.md").write_text("# Speed\n\n## Per core\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    text = (
        "intro\n<!-- bench:speed -->\nold table\n<!-- /bench:speed -->\n<!-- bench:missing -->\nkept\n<!-- /bench:missing -->\n"
    )
    out = render(text, tmp_path)
    assert "old table" not in out
    assert "#### Speed\n\n##### Per core\n\n| a | b |" in out  # nested under the page's ## heading
    assert "<!-- bench:missing -->\nkept\n" in out  # no result yet: left as it was
    assert render(out, tmp_path) == out  # idempotent


def test_the_committed_documents_carry_the_committed_results() -> None:
    """docs/benchmarks.md holds what benchmarks/results/*.md say (run `python -m benchmarks.readme`)."""
    for doc in DOCUMENTS:
        text = doc.read_text()
        assert render(text) == text, f"{doc.name} is stale: run python -m benchmarks.readme"


def test_every_result_is_published_and_every_section_has_a_result() -> None:
    sections = {m["name"] for doc in DOCUMENTS for m in SECTION.finditer(doc.read_text())}
    results = {p.stem for p in RESULTS.glob("*.md")}
    assert results - sections == set(), f"results with no section in {[d.name for d in DOCUMENTS]}"
    assert sections - results == set(), "sections with no benchmarks/results/NAME.md"


def test_documents_outside_the_list_carry_no_tables() -> None:
    """A marker in a document the script does not refresh would go stale unseen (the README links to the page)."""
    listed = set(DOCUMENTS)
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        if doc not in listed:
            assert not SECTION.search(doc.read_text()), f"{doc.relative_to(ROOT)} has a bench section"
