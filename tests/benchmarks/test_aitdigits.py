"""The AIT-digits builder (a spoken digit, a drawn one, the digit in words) on a small slice of the shared data."""

from __future__ import annotations

import csv
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.aitdigits.build import MODALITIES, NUMBERS, PLAIN, build, typo, written
from benchmarks.avdigits.build import SPEAKER_TEST, SPEAKERS_VAL
from tests.conftest import shared_data
from training.data.specs import parse_spec


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_the_builder_splits_by_speaker_and_drawing_and_writes_real_files(tmp_path: Path) -> None:
    shared_data("fsdd")
    shared_data("mnist")
    manifest = build(tmp_path / "ait", seed=0, root=shared_data(), limit_per_speaker_digit=2)
    rows = _rows(manifest)
    assert len(rows) == 6 * 10 * 2
    speakers = {s: {r["speaker"] for r in rows if r["split"] == s} for s in ("train", "val", "test")}
    assert speakers["val"] == {SPEAKERS_VAL}
    assert speakers["test"] == {SPEAKER_TEST}
    drawings = [r["drawing"] for r in rows]
    assert len(set(drawings)) == len(drawings)  # every drawing once: no split sees another's
    assert all(r["missing"] == "" for r in rows if r["split"] != "train")  # evaluation sets are complete
    assert {r["missing"] for r in rows} <= {"", *MODALITIES}
    for r in rows:
        for m in MODALITIES:
            assert (r[m] == "") == (r["missing"] == m)
    assert {r["language"] for r in rows} <= set(NUMBERS)
    assert {r["image_damage"] for r in rows} <= {"", "blur", "occlusion"}
    assert {r["text_damage"] for r in rows} <= {"", "garbled", "cut"}
    full = next(r for r in rows if r["split"] == "test")
    with Image.open(manifest.parent / full["image"]) as im:
        assert im.format == "PNG"
        assert im.size == (28, 28)
    text = (manifest.parent / full["text"]).read_text(encoding="utf-8").strip()
    assert text
    assert unicodedata.is_normalized("NFC", text)
    parsed = parse_spec(f"csv:{manifest}")
    assert parsed.modalities == list(MODALITIES)
    assert parsed.labels == [str(d) for d in range(10)]
    pair = parse_spec(f"csv:{manifest.parent / 'manifest-image-text.csv'}")
    assert pair.modalities == ["image", "text"]
    assert all(set(s.files) <= {"image", "text"} and s.files for s in pair.samples)
    again = build(tmp_path / "again", seed=0, root=shared_data(), limit_per_speaker_digit=2)
    assert again.read_text() == manifest.read_text()  # seeded: the same recipe every time


def _distance(a: str, b: str) -> int:
    """Levenshtein distance (a swap of neighbours counts 2)."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def test_typing_errors_stay_close_to_the_word() -> None:
    rng = np.random.default_rng(0)
    kinds: set[str | int] = set()
    for words in NUMBERS.values():
        for word in words:
            for _ in range(20):
                wrong = typo(word, rng)
                # one letter dropped, doubled, swapped or struck as a neighbour, or the accents lost
                if wrong == word.translate(PLAIN) and wrong != word:
                    kinds.add("accent")
                    continue
                assert _distance(wrong, word) <= 2, (word, wrong)
                kinds.add(len(wrong) - len(word))
    assert kinds == {"accent", -1, 0, 1}  # every kind of error happens


@pytest.mark.parametrize("digit", range(10))
def test_undamaged_text_is_the_digit_s_name_in_some_language(digit: int) -> None:
    rng = np.random.default_rng(digit)
    names = {w for words in NUMBERS.values() for w in (words[digit], words[digit].translate(PLAIN))}
    clean = 0
    for _ in range(200):
        text, language, damage = written(digit, rng)
        assert language in NUMBERS
        if not damage and text.lower() == NUMBERS[language][digit]:
            clean += 1
            assert text.lower() in names
    assert clean > 40  # most undamaged texts have no typo at all (Poisson mean 0.8: e^-0.8 = 45%)
