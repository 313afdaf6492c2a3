"""`make serve`'s install, for real: a fresh venv filled by the Makefile's own rule (`make VENV=... serve-deps`,
the prerequisite of `make serve`), then the installed set read back and the commands a serve-only install must run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from common.manifest import newest_version
from tests.conftest import ROOT
from tests.deploy import locks

# what the venv holds besides the lock: the project itself, the venv's own pip (and setuptools, on Python < 3.12),
# and uv, which installs the lock (requirements/uv.txt)
BESIDES_THE_LOCK = {"mla-serve", "pip", "setuptools", "uv"}


def _run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, f"{' '.join(cmd)} exited {result.returncode}:\n{(result.stdout + result.stderr)[-4000:]}"
    return result


@pytest.mark.slow
def test_make_serve_installs_the_cpu_build_alone_and_calibrates_without_torch(tmp_path: Path, tiny_demo: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    # the Makefile's choice for this machine, not a copy of its logic
    lock = _run(["make", "-s", "--no-print-directory", "serve-lock"]).stdout.strip()
    if lock != "requirements/serve-cpu.txt":
        pytest.skip(f"an NVIDIA GPU and driver are here: make serve installs {lock} (ONNX Runtime's CUDA build)")
    venv = tmp_path / "venv"
    _run(["make", "--no-print-directory", f"VENV={venv}", "serve-deps"])

    script = "import importlib.metadata as m, json; print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
    raw = json.loads(_run([str(venv / "bin" / "python"), "-c", script]).stdout)
    installed = {name.lower().replace("_", "-"): version for name, version in raw.items()}
    assert not [n for n in installed if n.startswith(("nvidia-", "cuda-"))], sorted(installed)
    assert "onnxruntime-gpu" not in installed
    assert [n for n in installed if n.startswith("onnxruntime")] == ["onnxruntime"]
    assert "torch" not in installed
    assert "scikit-learn" not in installed
    # exactly the lock's pins for this machine, at the locked versions
    expected = locks.versions("serve-cpu")
    assert {k: v for k, v in installed.items() if k not in BESIDES_THE_LOCK} == expected

    # `mla validate` and `mla calibrate` on that install: a copy of the default model, fitted again on a small demo
    env = {**os.environ, "MLA_CACHE_DIR": str(tmp_path / "cache")}
    mla = str(venv / "bin" / "mla")
    newest = newest_version(ROOT / "models" / "default")
    _run([mla, "validate", str(newest.relative_to(ROOT))], env=env)
    models = tmp_path / "models"
    shutil.copytree(ROOT / "models" / "default", models / "default")
    following = str(int(newest.name) + 1)
    calibrate = [mla, "calibrate", str(models / "default" / newest.name), "--data", f"csv:{tiny_demo}", "--version", following]
    out = _run(calibrate, env=env)
    assert "calibrated" in out.stderr + out.stdout
    manifest = json.loads((models / "default" / following / "manifest.json").read_text())
    assert manifest["fusion"]["calibration"]["fitted_on"].startswith(f"val split of csv:{tiny_demo}")
    _run([mla, "validate", str(models / "default" / following)], env=env)
    # the README's example files come from AV-digits' build, which a newcomer runs on this same install
    _run([str(venv / "bin" / "python"), "-m", "benchmarks.avdigits.build", "--help"], env=env)
