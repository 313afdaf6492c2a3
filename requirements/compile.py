"""Regenerate the lock files in requirements/ with uv (`make locks` runs this).

    .venv/bin/python requirements/compile.py            # every lock
    .venv/bin/python requirements/compile.py serve-cpu  # one or more by name
    .venv/bin/python requirements/compile.py --upgrade  # move the pins to the newest allowed

Each lock is `uv pip compile --universal --generate-hashes` of pyproject.toml's extras (or of a
tool's name): one file that installs on Linux, macOS and Windows, for every Python the project
accepts, with platform markers where a dependency applies to some platforms only (torch's
`nvidia-*` and `cuda-*` libraries and triton: Linux only, as torch declares them) and the sha256
of every file of every pin, so `pip install --require-hashes` or `uv pip install
--require-hashes` refuses a file that is not the one locked. The pins already in a lock are kept
(uv prefers them): only a new or changed requirement moves a version, or --upgrade. dev (CI's
venv) is locked first, and the image locks (serve, serve-cpu, train, build) are held to its pins:
an image installs the versions CI tested.

Source: PyPI alone, whatever pip or uv is configured with on this machine, so that a pin carries
the hash of each of its files, every platform's. A local mirror or wheelhouse of PyPI's files
(pip's find-links, the images' docker/wheelhouse) serves the same files, so the same hashes: an
install from it is checked like one from PyPI. (uv keeps the hashes of the one index it took a
version from: locking against a partial mirror would drop the other platforms' wheels.)

The locks (see requirements/README.md for who installs which):
  serve       mla-serve[serve,gpu]   the service with ONNX Runtime's CUDA build (GPU image, `make serve` with a GPU)
  serve-cpu   mla-serve[serve,cpu]   the service with ONNX Runtime's CPU build (CPU image, `make serve` without)
  train       mla-serve[train]       training and export (training image)
  dev         mla-serve[train,serve,dev]  CI's venv (`make venv`)
  build       [build-system] requires     the build backend, for offline image builds
  uv          uv, at the version dev pins  what `make serve` bootstraps its installs with
  checkov     checkov                 the linter's own venv (it pins packaging and networkx low)
  clients     tritonclient[http], kserve  the Open Inference Protocol's real clients, in their own venv for
                                      the tests (`make clients`): their pins must not bind the project's
  peers       requirements/peers.in   LitServe and BentoML, the servers `make bench-serve` compares with ours
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROJECT_LOCKS = {
    "serve": ["serve", "gpu"],
    "serve-cpu": ["serve", "cpu"],
    "train": ["train"],
    "dev": ["train", "serve", "dev"],
}


def _listed(name: str) -> list[str]:
    """The requirements of a `NAME.in` file here: its lines but comments and blanks."""
    lines = (HERE / f"{name}.in").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


# a venv of their own each
TOOLS = {"checkov": ["checkov"], "clients": ["tritonclient[http]", "kserve"], "peers": _listed("peers")}
TOOL_LOCKS = ("build", "uv", *TOOLS)
ORDER = ("dev", "serve", "serve-cpu", "train", "build", "uv", *TOOLS)  # dev first: the next four follow its pins
FOLLOW_DEV = ("serve", "serve-cpu", "train", "build")
INDEX = "https://pypi.org/simple"
PYTHON = "3.11"  # the lowest Python the project accepts; --universal covers the ones above it


def uv() -> str:
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if not found:
        raise SystemExit("uv not found: `make venv` installs it (the dev lock), or `pip install -r requirements/uv.txt`")
    return found


def compile_lock(name: str, inputs: list[str], *, stdin: str | None = None, upgrade: bool = False) -> None:
    """`uv pip compile` into requirements/NAME.txt; a lock other than dev's is held to dev's pins (CI's)."""
    out = HERE / f"{name}.txt"
    cmd = [uv(), "pip", "compile", *inputs, "--output-file", str(out)]
    cmd += ["--universal", "--python-version", PYTHON, "--generate-hashes", "--quiet"]
    cmd += ["--default-index", INDEX]
    cmd += ["--custom-compile-command", f"make locks  # requirements/compile.py {name}"]
    if upgrade:
        cmd.append("--upgrade")
    if name in FOLLOW_DEV:  # the images install exactly what CI tested: dev's pins, where dev has the package
        cmd += ["--constraint", "requirements/dev.txt"]
    env = {**os.environ, "UV_NO_CONFIG": "1"}  # the same options on every machine: no uv.toml
    subprocess.run(cmd, cwd=ROOT, input=stdin, text=True, check=True, env=env)
    print(f"requirements/{name}.txt: {len(pins(name))} pins")


def pins(lock: str) -> list[str]:
    """A lock's requirements without their hashes: `name==version` and its marker, if any."""
    text = (HERE / f"{lock}.txt").read_text().replace("\\\n", " ")
    return [line.split(" --hash")[0].strip() for line in text.splitlines() if re.match(r"^[A-Za-z0-9]", line)]


def pinned(lock: str, package: str) -> str:
    for line in pins(lock):
        if match := re.match(rf"^{re.escape(package)}==([^\s;]+)", line):
            return match.group(1)
    raise SystemExit(f"{package} is not pinned in requirements/{lock}.txt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("locks", nargs="*", metavar="LOCK", help=f"default: all ({', '.join(ORDER)})")
    parser.add_argument("--upgrade", action="store_true", help="move dev's pins (and so the others') to the newest allowed")
    args = parser.parse_args()
    if unknown := set(args.locks) - set(ORDER):
        parser.error(f"no such lock: {', '.join(sorted(unknown))}")
    for name in [lock for lock in ORDER if lock in (args.locks or ORDER)]:
        if name in PROJECT_LOCKS:
            extras = [arg for extra in PROJECT_LOCKS[name] for arg in ("--extra", extra)]
            compile_lock(name, ["pyproject.toml", *extras], upgrade=args.upgrade and name not in FOLLOW_DEV)
        elif name == "build":
            requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
            compile_lock(name, ["-"], stdin="\n".join(requires) + "\n")
        elif name == "uv":  # the version the dev lock pins: the one `make locks` and CI run
            compile_lock(name, ["-"], stdin=f"uv=={pinned('dev', 'uv')}\n")
        else:
            compile_lock(name, ["-"], stdin="".join(f"{r}\n" for r in TOOLS[name]), upgrade=args.upgrade)


if __name__ == "__main__":
    main()
