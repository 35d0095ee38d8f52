"""bench/gpu_wheels.py (make gpu-wheels): the wheels carried to a GPU machine without internet cover what
pyproject.toml asks for and the GPU image lacks, at versions pyproject allows, and the check of their
``Requires-Dist`` finds a need that nothing meets. No download here: the wheels are made up in tmp_path."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from bench.gpu_wheels import ON_GPU_IMAGE, WHEELS, normalize, unmet

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[2]
# What make gpu-check runs beyond the runtime dependencies: pytest (with its timeouts) and bench/server.py's client.
CHECK_DEV = {"pytest", "pytest-timeout", "httpx"}


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dev = [Requirement(r) for r in project["optional-dependencies"]["dev"]]
    return [Requirement(r) for r in project["dependencies"]] + [r for r in dev if normalize(r.name) in CHECK_DEV]


def test_every_dependency_of_the_check_travels_or_is_on_the_image():
    names = {normalize(r.name) for r in _requirements()}
    assert "fastapi" in names and "pytest" in names
    missing = names - set(WHEELS) - ON_GPU_IMAGE
    assert not missing, f"neither in WHEELS nor on the GPU image: {sorted(missing)}"


def test_each_pinned_wheel_is_a_version_pyproject_allows():
    for req in _requirements():
        name = normalize(req.name)
        if name in WHEELS:
            assert req.specifier.contains(WHEELS[name]), f"{name}=={WHEELS[name]} against pyproject's {req}"


def test_names_are_normalized_as_pip_compares_them():
    assert normalize("Pydantic_Core") == "pydantic-core"
    assert normalize("typing.extensions") == "typing-extensions"
    assert all(normalize(name) == name for name in [*WHEELS, *ON_GPU_IMAGE])


def _wheel(directory: Path, name: str, version: str, requires: list[str]) -> Path:
    """A wheel holding only its METADATA."""
    path = directory / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {r}" for r in requires]
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name.replace('-', '_')}-{version}.dist-info/METADATA", "\n".join(lines) + "\n")
    return path


def test_unmet_finds_a_need_nothing_meets_and_skips_extras_and_other_pythons(tmp_path):
    needs = ["dep-b>=2", "extra-only; extra == 'fancy'", "old-python-only; python_version < '3.11'", "numpy>=1"]
    a = _wheel(tmp_path, "pkg-a", "1.0", needs)
    (tmp_path / "old").mkdir()
    b_old = _wheel(tmp_path / "old", "dep-b", "1.5", [])
    assert unmet([a, b_old]) == ["pkg-a 1.0: dep-b>=2"]  # too old: the version is read, not only the name
    assert unmet([a]) == ["pkg-a 1.0: dep-b>=2"]  # absent
    b_new = _wheel(tmp_path, "dep_b", "2.1", ["pkg-a"])
    assert unmet([a, b_new]) == []  # numpy is on the image; names compare normalized
    assert unmet([a, b_new], on_image=frozenset()) == ["pkg-a 1.0: numpy>=1"]
    assert unmet([a, b_new], python_version="3.10") == ["pkg-a 1.0: old-python-only; python_version < '3.11'"]
