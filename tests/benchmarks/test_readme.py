"""README tables are copied from the benchmark results, between markers."""

from pathlib import Path

from benchmarks.readme import render


def test_sections_are_filled_from_results(tmp_path: Path) -> None:
    (tmp_path / "speed.md").write_text("# Speed\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    text = (
        "intro\n<!-- bench:speed -->\nold table\n<!-- /bench:speed -->\n<!-- bench:missing -->\nkept\n<!-- /bench:missing -->\n"
    )
    out = render(text, tmp_path)
    assert "old table" not in out
    assert "#### Speed\n\n| a | b |" in out
    assert "<!-- bench:missing -->\nkept\n" in out  # no result yet: left as it was
    assert render(out, tmp_path) == out  # idempotent


def test_the_committed_documents_carry_the_committed_results() -> None:
    """README.md and docs/benchmarks.md hold what benchmarks/results/*.md say (run `python -m benchmarks.readme`)."""
    from benchmarks.readme import DOCUMENTS

    for doc in DOCUMENTS:
        text = doc.read_text()
        assert render(text) == text, f"{doc.name} is stale: run python -m benchmarks.readme"
