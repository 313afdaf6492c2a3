"""Settings come from MLA_* environment variables, validated."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings, usable_cpus
from tests.conftest import ROOT


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLA_MODEL_DIR", "/models/x")
    monkeypatch.setenv("MLA_PROVIDERS", "cpu")
    monkeypatch.setenv("MLA_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("MLA_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("MLA_API_KEY", "s3cret")
    s = Settings()
    assert s.model_dir == Path("/models/x")
    assert s.providers == ["cpu"]
    assert s.cors_origins == ["https://a.example", "https://b.example"]
    assert s.max_batch_size == 16
    assert s.api_key is not None
    assert s.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)


@pytest.mark.parametrize(("name", "value"), [("MLA_PROVIDERS", "tpu"), ("MLA_MAX_UPLOAD_BYTES", "-1"), ("MLA_LOG_FORMAT", "xml")])
def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def _cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("files", "cap"),
    [
        ({"cpu.max": "100000 100000\n"}, 1),  # v2, one core
        ({"cpu.max": "150000 100000\n"}, 2),  # a core and a half: the half counts as one
        ({"cpu.max": "max 100000\n"}, None),  # v2, no quota
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1, no quota
        ({"cpu.max": "garbage\n"}, None),  # malformed: no quota known
        ({}, None),  # no cgroup files at all
    ],
)
def test_usable_cpus_follows_the_cgroup_quota(tmp_path: Path, files: dict[str, str], cap: int | None) -> None:
    """Decode workers default to the cores the container may use, not the host's (Kubernetes limits.cpu: 4 on 64 cores)."""
    affinity = len(os.sched_getaffinity(0))
    expected = affinity if cap is None else min(affinity, cap)
    assert usable_cpus(_cgroup(tmp_path, files)) == expected


def _pinned_to_one_core(code: str) -> str:
    """The last line `code` prints, run in a fresh Python pinned to one core, with no MLA_* settings."""
    pin = "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLA_")}
    out = subprocess.run([sys.executable, "-c", pin + code], capture_output=True, text=True, check=True, cwd=ROOT, env=env)
    return out.stdout.strip().splitlines()[-1]


def test_usable_cpus_follows_the_affinity() -> None:
    """A process pinned to one core (taskset, cpuset) defaults to one decode worker, whatever the host has."""
    assert _pinned_to_one_core("from service.settings import Settings; print(Settings().decode_workers)") == "1"


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores, to pin a process to fewer than the host has")
def test_onnx_runtime_threads_follow_the_usable_cores() -> None:
    """ONNX Runtime sizes its pool from the host's cores whatever the affinity or quota (measured:
    pinned to one core it still starts a second thread); the service caps it at the usable cores."""
    code = (
        "import onnxruntime, psutil; from pathlib import Path; "
        "from service.model import make_session; from service.settings import Settings; "
        "before = psutil.Process().num_threads(); "
        "kept = make_session(Path('models/default/1/audio.onnx'), Settings(providers=['cpu'])); "
        "print(psutil.Process().num_threads() - before)"
    )
    assert _pinned_to_one_core(code) == "0"  # one thread in all: the caller's own
