"""The service imports neither torch, onnx, the training code nor the export code.

The serving image carries `service/`, `common/` and `cli/` only; the model repository's
contract (manifest, parity rule) lives in `common/` so that both sides can read it.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

FORBIDDEN = ("torch", "torchvision", "onnx", "onnxscript", "training", "model_export")
# What the serving image copies (docker/Dockerfile) and so may import.
SERVED_PACKAGES = ("service", "common")


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", SERVED_PACKAGES)
def test_no_source_file_of_the_served_packages_imports_a_forbidden_module(package: str) -> None:
    """Every import statement, even one inside a function that the runtime check below never calls."""
    offenders = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for name in _imported_modules(path)
        if name.split(".")[0] in FORBIDDEN
    }
    assert not offenders, sorted(offenders)


def test_service_imports_without_torch_onnx_training_or_export() -> None:
    code = (
        "import sys\n"
        "import service.main, service.routes, service.model, service.batching, service.uploads\n"
        "import common.manifest, common.parity, common.validate\n"
        "app = service.main.create_app\n"
        "import cli.main\n"
        f"forbidden = {FORBIDDEN!r}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in forbidden)\n"
        "print(','.join(bad))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"the service imported {proc.stdout.strip()}"


def test_the_serving_image_copies_no_training_or_export_code() -> None:
    copied = [line.split()[1] for line in (ROOT / "docker" / "Dockerfile").read_text().splitlines() if line.startswith("COPY ")]
    assert not [c for c in copied if c.split("/")[0] in ("training", "model_export")], copied
    assert {"service", "common", "cli"} <= set(copied), copied
