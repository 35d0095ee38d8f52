"""pyproject.toml: a wheel built from the repository holds every module and the built-in files, and,
installed into a fresh venv, serves the built-in model from a working directory outside the repository;
an editable install (``make install``) reads the built-in files in place.

A venv gets no packages of its own but the one installed: a .pth file lends it the running environment's
site-packages (torch, FastAPI, setuptools, pip) without running that environment's .pth files, so the
editable install of the repository, if any, stays out of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

# A build or an install may take minutes on a loaded machine; each command has its own 600 s bound (_run).
pytestmark = pytest.mark.timeout(1800)

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "detector", "api", "weights")  # what the build reads

# In the venv, from a temporary working directory: start the service with its default settings (no
# DETECTOR_* variables), wait until it is ready, and say what it serves and where its code came from.
SERVE = """
import json, time
import api, detector
from fastapi.testclient import TestClient
from api.main import create_app

with TestClient(create_app()) as client:
    deadline = time.monotonic() + 120  # ready, or failed to load (then /healthz says why), or out of time
    while client.get("/readyz").status_code != 200 and client.get("/healthz").status_code == 200:
        assert time.monotonic() < deadline, "not ready after 120 s"
        time.sleep(0.05)
    print(json.dumps({"detector": detector.__file__, "api": api.__file__, "health": client.get("/healthz").json(),
                      "model": client.get("/v1/model").json(), "page": client.get("/").status_code}))
"""


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """A copy of what the build reads (a build writes build/ and *.egg-info beside it)."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    return src


@pytest.fixture(scope="module")
def wheel(sources: Path, tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(dist), str(sources)], cwd=dist)
    (built,) = dist.glob("detector-*.whl")
    return built


def test_the_wheel_holds_every_module_and_the_builtin_files(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for top in ("detector", "api") for p in (ROOT / top).rglob("*.py")}
    assert modules and modules <= names, sorted(modules - names)
    static = {p.relative_to(ROOT).as_posix() for p in (ROOT / "api" / "static").rglob("*") if p.is_file()}
    assert static and static <= names, sorted(static - names)
    shipped = {f"detector/builtin/{p.name}" for p in (ROOT / "weights").iterdir() if p.is_file()}
    assert "detector/builtin/catalogue.json" in shipped and shipped <= names, sorted(shipped - names)


def test_the_installed_wheel_serves_the_builtin_model_from_any_directory(wheel: Path, tmp_path: Path) -> None:
    python = _fresh_venv(tmp_path / "venv")
    # --ignore-installed: a detector the lent site-packages hold (an editable install of the checkout) is not
    # this venv's, and pip would otherwise count it as installed and skip the wheel.
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q", str(wheel)],
         cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_") and k != "PYTHONPATH"}
    out = _run([str(python), "-c", SERVE], cwd=elsewhere, env=env)
    served = json.loads(out.splitlines()[-1])

    installed = tmp_path / "venv"
    assert Path(served["detector"]).is_relative_to(installed) and Path(served["api"]).is_relative_to(installed)
    assert served["health"] == {"status": "ok"}, served["health"]  # else the model failed to load: it says why
    assert served["page"] == 200
    model = served["model"]
    repo_file = ROOT / "weights" / f"{model['preset']}.safetensors"  # the default preset's built-in weights
    assert model["weights"] == repo_file.name
    assert model["weights_sha256"] == hashlib.sha256(repo_file.read_bytes()).hexdigest()


def test_an_editable_install_reads_the_builtin_files_in_place(sources: Path, tmp_path: Path) -> None:
    """``make install`` (pip install -e): the code and the built-in files are those of the checkout."""
    python = _fresh_venv(tmp_path / "venv")
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--no-build-isolation", "--ignore-installed",
          "-q", "-e", str(sources)], cwd=tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    show = ("import detector; from detector.weights.builtin import builtin_weights; "
            "print(detector.__file__, builtin_weights('small_r18_fpn'))")
    code, weights = _run([str(python), "-c", show], cwd=tmp_path, env=env).split()
    assert Path(code) == sources / "detector" / "__init__.py"
    assert Path(weights) == sources / "weights" / "small_r18_fpn.safetensors"


def _fresh_venv(path: Path) -> Path:
    """A venv without pip whose site-packages reach the running environment's through a .pth file."""
    venv.create(path, with_pip=False)
    python = path / "bin" / "python"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=path).strip()
    (Path(purelib) / "lent.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


def _run(command: list[str], cwd: Path, env: dict | None = None) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{command[:4]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout
