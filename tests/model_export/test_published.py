"""A model version never changes under the same number: the publication record, and git history."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from common.manifest import (
    PUBLISHED_NAME,
    PublishedError,
    check_hashes,
    check_published,
    load_manifest,
    manifest_sha256,
    publish,
    published,
)
from common.validate import InvalidRepositoryError, validate_repository
from service.metrics import Metrics
from service.model import ModelLoadError, ServedModel
from service.settings import Settings
from tests.conftest import ROOT

MODELS = ROOT / "models"


def published_versions() -> list[Path]:
    return [record.parent / v for record in sorted(MODELS.glob(f"*/{PUBLISHED_NAME}")) for v in published(record.parent)]


def test_every_committed_version_is_published_and_as_it_was_published() -> None:
    versions = {p.parent for p in MODELS.glob("*/*/manifest.json")}
    assert versions, "no committed model version"
    assert versions == set(published_versions())  # each one recorded, no record without its folder
    for version in versions:
        assert check_published(version) == [], version
        assert check_hashes(version, load_manifest(version)) == [], version


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def test_no_file_of_a_published_version_changes_after_its_first_commit() -> None:
    """From the commit that brought the publication record in, a version's files are frozen: a version first
    committed later must never be touched again; one committed before (rewritten in place back then) must
    not be touched after it. Uncommitted edits count too."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: no history to check")
    if git("rev-parse", "--is-shallow-repository") == "true":
        pytest.skip("a shallow clone: the history is cut")
    for version in published_versions():
        rel = str(version.relative_to(ROOT))
        record = str((version.parent / PUBLISHED_NAME).relative_to(ROOT))
        rule = git("log", "--diff-filter=A", "--format=%H", "--", record).splitlines()
        if not rule:
            pytest.skip(f"{record} is not committed yet")
        start = rule[-1]
        first = git("log", "--reverse", "--format=%H", "--", rel).splitlines()
        assert first, f"{rel} is published but not committed"
        # before the record: frozen from the record's commit on; after it: frozen from its own first commit
        before_rule = subprocess.run(["git", "merge-base", "--is-ancestor", first[0], start], cwd=ROOT).returncode == 0
        since = start if before_rule else first[0]
        assert git("rev-list", f"{since}..HEAD", "--", rel) == "", f"{rel} changed after it was published"
        assert git("status", "--porcelain", "--", rel) == "", f"{rel} has uncommitted changes"


def test_a_rewritten_manifest_is_refused_by_validate_and_by_the_service(tiny_repo: Path, tmp_path: Path) -> None:
    version = tmp_path / "tiny" / "1"
    shutil.copytree(tiny_repo, version)
    digest = publish(version)
    assert published(version.parent) == {"1": digest}
    assert publish(version) == digest  # publishing the same files again changes nothing
    validate_repository(version)
    doc = json.loads((version / "manifest.json").read_text())
    doc["fusion"]["abstention"]["min_confidence"] = {k: 0.0 for k in doc["fusion"]["abstention"]["min_confidence"]}
    (version / "manifest.json").write_text(json.dumps(doc, indent=2))  # recalibrated in place, as --in-place did
    assert manifest_sha256(version) != digest
    with pytest.raises(InvalidRepositoryError, match="changed after version 1 was published"):
        validate_repository(version)
    with pytest.raises(ModelLoadError, match="a changed model is a new version"):
        ServedModel(Settings(model_dir=version, providers=["cpu"]), Metrics()).load()
    with pytest.raises(PublishedError, match="published with other files"):
        publish(version)
