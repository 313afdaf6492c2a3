"""Estimate the GPU image's CUDA layer where nvidia/cuda cannot be pulled (CI, this project's machines).

    .venv/bin/python docker/estimate_gpu_image.py

nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04 is ubuntu:24.04 plus NVIDIA's CUDA 13.0 runtime
libraries (cuda-libraries: cudart, nvrtc, cuBLAS, cuFFT, cuFile, cuRAND, cuSOLVER, cuSPARSE, NPP,
nvJitLink, nvJPEG, NVTX), NCCL and cuDNN 9. NVIDIA ships the same shared libraries as wheels on
PyPI; this sums their installed (unzipped) sizes, read from each wheel's zip directory with two
HTTP range requests (nothing is downloaded whole). Not counted: cuda-compat (the forward
compatibility driver) and Ubuntu itself (about 78 MB).
"""

from __future__ import annotations

import struct
from urllib.parse import urljoin

import httpx
from packaging.version import Version

# PyPI name: the release line matching CUDA 13.0 (the newest release of that line is measured)
PACKAGES = {
    "nvidia-cuda-runtime": "13.0.",
    "nvidia-cuda-nvrtc": "13.0.",
    "nvidia-cublas": "13.0.",
    "nvidia-cufft": "12.0.",
    "nvidia-cufile": "1.15.",
    "nvidia-curand": "10.4.",
    "nvidia-cusolver": "12.0.",
    "nvidia-cusparse": "12.6.",
    "nvidia-npp": "13.0.",
    "nvidia-nvjitlink": "13.0.",
    "nvidia-nvjpeg": "13.0.",
    "nvidia-nvtx": "13.0.",
    "nvidia-nccl-cu13": "2.",
    "nvidia-cudnn-cu13": "9.",
}
EOCD, EOCD64, ENTRY = b"PK\x05\x06", b"PK\x06\x06", b"PK\x01\x02"


def newest_wheel(client: httpx.Client, name: str, line: str) -> tuple[str, str, int]:
    page = f"https://pypi.org/pypi/{name}/json"
    releases = client.get(page).raise_for_status().json()["releases"]
    for version in sorted((Version(v) for v in releases if v.startswith(line)), reverse=True):
        for f in releases[str(version)]:
            if f["filename"].endswith(".whl") and "x86_64" in f["filename"]:
                return str(version), urljoin(page, f["url"]), int(f["size"])
    raise LookupError(f"no x86-64 wheel of {name} {line}*")


def unzipped_size(client: httpx.Client, url: str, size: int) -> int:
    """Sum of the uncompressed sizes in a remote zip's central directory."""
    tail = client.get(url, headers={"Range": f"bytes={max(0, size - 65536)}-{size - 1}"}).content
    at = tail.rfind(EOCD)
    cd_size, cd_offset = struct.unpack("<II", tail[at + 12 : at + 20])
    if cd_offset == 0xFFFFFFFF:  # zip64
        at = tail.rfind(EOCD64)
        cd_size, cd_offset = struct.unpack("<QQ", tail[at + 40 : at + 56])
    cd = client.get(url, headers={"Range": f"bytes={cd_offset}-{cd_offset + cd_size - 1}"}).content
    total, pos = 0, 0
    while cd[pos : pos + 4] == ENTRY:
        usize = struct.unpack("<I", cd[pos + 24 : pos + 28])[0]
        n_name, n_extra, n_comment = struct.unpack("<HHH", cd[pos + 28 : pos + 34])
        extra = cd[pos + 46 + n_name : pos + 46 + n_name + n_extra]
        if usize == 0xFFFFFFFF:  # the real size is in the zip64 extra field
            field = 0
            while field < len(extra):
                tag, length = struct.unpack("<HH", extra[field : field + 4])
                if tag == 1:
                    usize = struct.unpack("<Q", extra[field + 4 : field + 12])[0]
                    break
                field += 4 + length
        total += usize
        pos += 46 + n_name + n_extra + n_comment
    return total


def main() -> None:
    total_wheel = total_installed = 0
    with httpx.Client(timeout=60, follow_redirects=True) as client:
        for name, line in PACKAGES.items():
            version, url, size = newest_wheel(client, name, line)
            installed = unzipped_size(client, url, size)
            total_wheel += size
            total_installed += installed
            print(f"{name:22s} {version:12s} wheel {size / 2**20:7.1f} MiB   installed {installed / 2**20:7.1f} MiB")
    print(f"{'total':35s} wheel {total_wheel / 2**20:7.0f} MiB   installed {total_installed / 2**20:7.0f} MiB")


if __name__ == "__main__":
    main()
