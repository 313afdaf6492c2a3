"""`--data SPEC`: demo, csv and cremad on fixtures made here, and their error messages."""

import csv
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY_SIZES
from training.data.specs import DataError, parse_spec, read_cremad
from training.data.writers import write_audio, write_video


def _write_csv(path: Path, rows: list[dict[str, str]], columns: tuple[str, ...] = ("audio", "video", "label", "split")) -> Path:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns))
        w.writeheader()
        w.writerows(rows)
    return path


def test_demo_spec_is_deterministic_media_with_a_manifest(tiny_demo: Path) -> None:
    manifest = parse_spec(f"csv:{tiny_demo}")
    assert manifest.labels == [str(i) for i in range(10)]
    assert {s.split for s in manifest.samples} == {"train", "val", "test"}
    assert manifest.modalities == ["audio", "video"]
    assert all({m: p.suffix for m, p in s.files.items()} == {"audio": ".wav", "video": ".mp4"} for s in manifest.samples)
    from training.data.demo import generate

    again = generate(tiny_demo.parent.parent / "again", seed=3, sizes=TINY_SIZES)
    assert again.read_text() == tiny_demo.read_text()
    for name in ("media/train_00001.wav", "media/test_00002.mp4"):
        assert (again.parent / name).read_bytes() == (tiny_demo.parent / name).read_bytes()
    with tiny_demo.open() as f:
        corrupted = [r["corrupted"] for r in csv.DictReader(f)]
    assert {"", "audio", "video"} >= set(corrupted)
    assert "" in corrupted


def test_demo_media_are_the_same_bytes_in_another_process(tmp_path: Path) -> None:
    import hashlib
    import subprocess
    import sys

    from tests.conftest import ROOT
    from training.data.demo import generate

    code = (
        "import sys, hashlib; from pathlib import Path; from training.data.demo import generate\n"
        "m = generate(Path(sys.argv[1]), seed=11, sizes={'train': 6})\n"
        "print(hashlib.sha256(b''.join(p.read_bytes() for p in sorted(m.parent.glob('media/*')))).hexdigest())\n"
    )
    other = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "a")], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert other.returncode == 0, other.stderr
    here = generate(tmp_path / "b", seed=11, sizes={"train": 6})
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(here.parent.glob("media/*")))).hexdigest()
    assert other.stdout.strip() == digest


def test_demo_spec_generates_into_the_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import training.data.demo as demo

    monkeypatch.setenv("MLA_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(demo, "SPLIT_SIZES", {"train": 10, "val": 2, "test": 2})
    manifest = parse_spec("demo:5")
    assert len(manifest.samples) == 14
    assert str(tmp_path) in str(manifest.samples[0].path("audio"))
    assert parse_spec("demo:5").samples == manifest.samples  # second call reuses the files
    with pytest.raises(DataError, match="integer seed"):
        parse_spec("demo:x")


def test_csv_spec_with_missing_modalities(tmp_path: Path) -> None:
    write_audio(tmp_path / "a.wav", np.zeros(800, np.float32), 8000)
    write_video(tmp_path / "v.mp4", np.zeros((4, 16, 16, 3), np.uint8), 4)
    rows = [
        {"audio": "a.wav", "video": "v.mp4", "label": "cat", "split": "train"},
        {"audio": "a.wav", "video": "", "label": "dog", "split": "train"},
        {"audio": "", "video": "v.mp4", "label": "dog", "split": "val"},
    ]
    m = parse_spec(f"csv:{_write_csv(tmp_path / 'm.csv', rows)}")
    assert m.labels == ["cat", "dog"]
    assert m.samples[1].path("video") is None
    assert m.samples[2].path("audio") is None
    assert [s.label for s in m.samples] == [0, 1, 1]


@pytest.mark.parametrize(
    ("rows", "columns", "message"),
    [
        (
            [{"audio": "gone.wav", "video": "", "label": "x", "split": "train"}],
            None,
            "m.csv row 2: audio file 'gone.wav' does not exist",
        ),
        (
            [
                {"audio": "a.wav", "video": "", "label": "x", "split": "train"},
                {"audio": "a.wav", "video": "", "label": "zebra", "split": "val"},
            ],
            None,
            "m.csv row 3: label 'zebra' does not occur in the train split",
        ),
        ([{"audio": "a.wav", "label": "x"}], ("audio", "label"), "missing column.*split"),
        ([{"sound": "a.wav", "label": "x", "split": "train"}], ("sound", "label", "split"), "missing column.*naming a modality"),
        ([{"audio": "a.wav", "video": "", "label": "x", "split": "train"}], None, "the 'val' split is empty"),
        ([{"audio": "a.wav", "video": "", "label": "x", "split": "holdout"}], None, "row 2: split 'holdout'"),
        ([{"audio": "", "video": "", "label": "x", "split": "train"}], None, "row 2: no modality is given"),
    ],
)
def test_csv_errors_name_file_and_row(
    tmp_path: Path, rows: list[dict[str, str]], columns: tuple[str, ...] | None, message: str
) -> None:
    write_audio(tmp_path / "a.wav", np.zeros(800, np.float32), 8000)
    path = _write_csv(tmp_path / "m.csv", rows, columns or ("audio", "video", "label", "split"))
    with pytest.raises(DataError, match=message):
        parse_spec(f"csv:{path}")


def test_bad_spec_strings() -> None:
    for spec in ("imagenet", "csv:", "cremad"):
        with pytest.raises(DataError, match="bad data spec"):
            parse_spec(spec)
    with pytest.raises(DataError, match="does not exist"):
        parse_spec("csv:/nonexistent/manifest.csv")


def make_cremad(root: Path, speakers: tuple[str, ...] = ("1001", "1002", "1003", "1004", "1005")) -> Path:
    (root / "AudioWAV").mkdir(parents=True)
    (root / "VideoFlash").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for spk in speakers:
        for emo in ("ANG", "HAP", "SAD"):
            stem = f"{spk}_DFA_{emo}_XX"
            write_audio(root / "AudioWAV" / f"{stem}.wav", 0.1 * rng.normal(size=1600).astype(np.float32), 16_000)
            frames = rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
            write_video(
                root / "VideoFlash" / f"{stem}.flv",
                frames,
                fps=6,
                codec="flv",
                fmt="flv",
                audio=0.1 * rng.normal(size=8000),
                sample_rate=22_050,
                audio_codec="libmp3lame",
            )
    return root


def test_cremad_layout_split_by_speaker(tmp_path: Path) -> None:
    root = make_cremad(tmp_path / "crema")
    (root / "VideoFlash" / "1005_DFA_SAD_XX.flv").unlink()  # audio only for this one
    m = parse_spec(f"cremad:{root}")
    assert m.labels == ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]
    assert len(m.samples) == 15
    speakers_by_split: dict[str, set[str]] = {}
    for s in m.samples:
        speaker = (s.path("audio") or s.path("video")).name.split("_")[0]  # type: ignore[union-attr]
        speakers_by_split.setdefault(s.split, set()).add(speaker)
    assert set(speakers_by_split) == {"train", "val", "test"}
    assert not (speakers_by_split["train"] & speakers_by_split["val"])
    assert not (speakers_by_split["val"] & speakers_by_split["test"])
    assert not (speakers_by_split["train"] & speakers_by_split["test"])
    lone = next(s for s in m.samples if "audio" in s.files and s.files["audio"].stem == "1005_DFA_SAD_XX")
    assert lone.path("video") is None
    assert m.labels[lone.label] == "SAD"
    flv = next(s.path("video") for s in m.samples if s.path("video"))
    assert flv is not None
    assert flv.suffix == ".flv"
    from common.media import VideoSpec, load_video

    assert load_video(flv, VideoSpec(3, 16, 16)).shape == (3, 16, 16, 3)


def test_cremad_errors(tmp_path: Path) -> None:
    root = make_cremad(tmp_path / "crema", speakers=("1001", "1002", "1003"))
    write_audio(root / "AudioWAV" / "1001_DFA_XYZ_XX.wav", np.zeros(160, np.float32), 16_000)
    with pytest.raises(DataError, match=r"1001_DFA_XYZ_XX\.wav: unknown emotion 'XYZ'"):
        read_cremad(root)
    with pytest.raises(DataError, match="AudioWAV"):
        parse_spec(f"cremad:{tmp_path / 'empty'}")
