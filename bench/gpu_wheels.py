"""The wheels a lent GPU machine lacks (``make gpu-wheels``), fetched here, before the lease, into ``.whl/``.

    python bench/gpu_wheels.py                 # into .whl/ (git-ignored), replacing what was there

The lent machine (an ``nvidia-h200``, /work/.library/device/KINDS.md) reaches no package index. Its python3
(3.12) has torch, torchvision, numpy, Pillow, safetensors, tqdm, httpx, pytest and pytest-timeout, but not
the service's web stack nor pycocotools: ``WHEELS`` names each one missing, pinned (``pip download --no-deps``
for CPython 3.12 on manylinux x86_64: nothing is resolved, so every need is named). ``make gpu-check`` then
installs them there with ``pip install --no-index --no-deps --target`` and runs from the tree.

After the download every wheel's ``Requires-Dist`` (its extras left out, its markers read for Python 3.12)
is checked: met by another wheel of the set (its version in range) or named in ``ON_GPU_IMAGE``; anything
else fails the script, as does a set past ``MAX_BYTES`` (what travels to the machine is bounded).
"""

from __future__ import annotations

import argparse
import email.parser
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> version. The versions are those our tests pass with (the venv of `make install`), within
# pyproject.toml's ranges; none depends on torch. typing-extensions, anyio and annotated-doc are on the
# image, but at a version nobody has read: pydantic-core and anyio ask for typing-extensions>=4.16,
# fastapi for anyio>=4.1 and annotated-doc>=0.0.2, so they travel too (the copy in --target comes first).
WHEELS = {
    "fastapi": "0.165.0",
    "starlette": "1.10.0",
    "pydantic": "2.14.4",
    "pydantic-core": "2.50.5",
    "pydantic-settings": "2.16.3",
    "annotated-types": "0.8.0",
    "annotated-doc": "0.0.7",
    "typing-inspection": "0.4.5",
    "typing-extensions": "4.16.0",
    "opentelemetry-api": "1.45.2",  # fastapi needs it, not only under its extras
    "anyio": "4.16.0",
    "python-dotenv": "1.2.4",
    "python-multipart": "0.0.34",
    "uvicorn": "0.54.0",
    "pycocotools": "2.0.11",
}

# What the GPU image holds that our dependencies and the wheels above need (KINDS.md, "Python packages
# already there"; versions unread, so only names): these do not travel.
ON_GPU_IMAGE = frozenset({
    "torch", "torchvision", "numpy", "pillow", "safetensors", "tqdm", "prometheus-client",
    "opencv-python-headless", "matplotlib", "pytest", "pytest-timeout", "httpx", "hypothesis",
    "click", "h11", "idna",
})

PYTHON_VERSION = "3.12"
# pip matches a manylinux tag exactly: the glibc versions the wheels above are built for.
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
MAX_BYTES = 16 * 2**20  # the working tree that travels is bounded at 64 MiB in all


def normalize(name: str) -> str:
    """A distribution's name as pip compares them (PEP 503): ``Pydantic_Core`` -> ``pydantic-core``."""
    return "-".join(name.replace("_", "-").replace(".", "-").lower().split("-"))


def download(dest: Path, python: str = sys.executable, python_version: str = PYTHON_VERSION) -> list[Path]:
    """``WHEELS`` into ``dest`` (emptied first: two versions of one package stop the install there)."""
    tmp = Path(tempfile.mkdtemp(prefix=".whl-", dir=dest.parent))  # a failed download leaves dest as it was
    command = [python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
               python_version, "--implementation", "cp", *[f"--platform={p}" for p in PLATFORMS], "-d", str(tmp),
               *[f"{name}=={version}" for name, version in WHEELS.items()]]
    try:
        subprocess.run(command, check=True)
    except BaseException:
        shutil.rmtree(tmp)
        raise
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return sorted(dest.glob("*.whl"))


def metadata(wheel: Path) -> email.message.Message:
    """The METADATA of ``wheel`` (``Name``, ``Version``, ``Requires-Dist`` ...)."""
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        return email.parser.Parser().parsestr(z.read(name).decode())


def unmet(wheels: list[Path], on_image: frozenset[str] = ON_GPU_IMAGE,
          python_version: str = PYTHON_VERSION) -> list[str]:
    """Each requirement of ``wheels`` (extras left out, markers read for ``python_version`` on Linux) that neither
    another of ``wheels`` (at a version in range) nor a name in ``on_image`` meets, as "wheel: requirement"."""
    from packaging.requirements import Requirement

    env = {"python_version": python_version, "python_full_version": f"{python_version}.0", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}
    metas = [metadata(w) for w in wheels]
    have = {normalize(m["Name"]): m["Version"] for m in metas}
    missing = []
    for meta in metas:
        for line in meta.get_all("Requires-Dist") or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate(env):
                continue  # another Python's need, or an extra's
            name = normalize(req.name)
            if name in on_image or (name in have and req.specifier.contains(have[name], prereleases=True)):
                continue
            missing.append(f"{meta['Name']} {meta['Version']}: {line}")
    return missing


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dest", type=Path, default=ROOT / ".whl")
    p.add_argument("--python", default=sys.executable, help="the Python whose pip downloads (default: this one)")
    p.add_argument("--python-version", default=PYTHON_VERSION,
                   help="the Python the wheels are for (default: the GPU image's; another to rehearse elsewhere)")
    args = p.parse_args(argv)
    wheels = download(args.dest.resolve(), args.python, args.python_version)
    total = sum(w.stat().st_size for w in wheels)
    for w in wheels:
        print(f"{w.stat().st_size / 1024:9.0f} KiB  {w.name}")
    print(f"{total / 2**20:9.1f} MiB  {len(wheels)} wheels in {args.dest}")
    missing = unmet(wheels, python_version=args.python_version)
    for line in missing:
        print(f"unmet: {line}", file=sys.stderr)
    if len(wheels) != len(WHEELS):
        print(f"expected {len(WHEELS)} wheels, got {len(wheels)}", file=sys.stderr)
        return 1
    if total > MAX_BYTES:
        print(f"{total} bytes of wheels: more than {MAX_BYTES} travel", file=sys.stderr)
        return 1
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
