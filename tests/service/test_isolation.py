"""The service never imports torch or the training code."""

import subprocess
import sys

from tests.conftest import ROOT


def test_service_imports_without_torch() -> None:
    code = (
        "import sys\n"
        "import service.main, service.routes, service.model, service.batching, service.uploads\n"
        "app = service.main.create_app\n"
        "import cli.main\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'training')))\n"
        "print(','.join(bad))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"the service imported {proc.stdout.strip()}"
