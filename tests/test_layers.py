"""The layers point one way: structures -> modeling -> predictor -> the CLIs and the service, with bench
and tests on top. Every import statement of the repository's code is read (with ``ast``: those inside
functions and under ``TYPE_CHECKING`` too), and these rules hold:

1. The bottom, ``detector/structures.py``, ``detector/mask_paste.py`` and the COCO keypoint vocabulary
   ``detector/data/coco_keypoints.py`` (names and skeleton, plain constants that presets name their
   keypoints with), imports nothing of ``detector`` but each other.
2. ``detector/modeling/`` imports of ``detector`` only ``detector.modeling`` and the bottom: the model knows
   nothing of weights files, data sets, evaluation, training, the predictor or the CLIs.
3. The library (``detector/`` but its command lines: ``predict.py``, ``eval.py``, ``train.py`` and the
   ``__main__`` modules) imports no command line, nothing of ``api``, ``bench`` or ``tests``.
4. ``api/`` talks to the ``Predictor``: of ``detector.modeling`` it imports only modules that import no
   torch (names and defaults such as ``speeds``: the vocabulary of the Predictor's arguments), never the
   model itself; no expression in ``api/`` reads ``<...>predictor.model``; nothing of ``bench`` or ``tests``.
   Its routes import no torch: tensor work (such as ``Detections.select``) lives below the API.
5. ``bench/`` imports nothing of ``tests``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOTTOM = {"detector.structures", "detector.mask_paste", "detector.data.coco_keypoints"}
CLIS = {"detector.predict", "detector.eval", "detector.train"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources(top: str) -> dict[str, ast.Module]:
    """{module name: its syntax tree} for every .py file under ``top``."""
    return {_module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted((ROOT / top).rglob("*.py"))
            if "__pycache__" not in p.parts}


def _imports(module: str, tree: ast.Module) -> set[str]:
    """The absolute names of the modules ``tree`` imports (``from a import b``: ``a`` and ``a.b``, as b may
    be a module)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package up
                package = module.split(".") if _is_package(module) else module.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, base] if base else package)
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return names


def _is_package(module: str) -> bool:
    return (ROOT / module.replace(".", "/") / "__init__.py").is_file()


def _within(name: str, prefixes: set[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _existing(names: set[str]) -> set[str]:
    """The names that are modules or packages of this repository (``from a import b``: b may be a function)."""
    return {n for n in names
            if (ROOT / (n.replace(".", "/") + ".py")).is_file() or (ROOT / n.replace(".", "/")).is_dir()}


def _violations(top: str, allowed) -> list[str]:
    out = []
    for module, tree in _sources(top).items():
        for name in sorted(_existing(_imports(module, tree))):
            if not allowed(module, name):
                out.append(f"{module} imports {name}")
    return out


def _imports_torch(module: str) -> bool:
    path = ROOT / (module.replace(".", "/") + ".py")
    path = path if path.is_file() else path.with_suffix("") / "__init__.py"
    return any(_within(name, {"torch", "torchvision"}) for name in _imports(module, ast.parse(path.read_text())))


def test_structures_and_mask_pasting_import_nothing_above_them():
    def allowed(module: str, name: str) -> bool:
        return module not in BOTTOM or not _within(name, {"detector"}) or name in BOTTOM or name == "detector"

    assert _violations("detector", allowed) == []


def test_the_model_imports_nothing_of_weights_data_training_the_predictor_or_the_clis():
    def allowed(module: str, name: str) -> bool:
        if not _within(module, {"detector.modeling"}) or not _within(name, {"detector"}):
            return True
        return _within(name, {"detector.modeling"}) or name in BOTTOM or name == "detector"

    assert _violations("detector", allowed) == []


def test_the_library_imports_no_command_line_nor_the_service_bench_or_tests():
    def allowed(module: str, name: str) -> bool:
        if module in CLIS or module.endswith("__main__"):
            return not _within(name, {"bench", "tests"})
        return not _within(name, CLIS | {"api", "bench", "tests"}) and not name.endswith("__main__")

    assert _violations("detector", allowed) == []


def test_the_service_talks_to_the_predictor_not_to_the_model():
    def allowed(module: str, name: str) -> bool:
        if _within(name, {"bench", "tests"}):
            return False
        return not _within(name, {"detector.modeling"}) or name == "detector.modeling" or not _imports_torch(name)

    assert _violations("api", allowed) == []
    assert [m for m in _sources("api") if _within(m, {"api.routes"}) and _imports_torch(m)] == []
    reads = []
    for module, tree in _sources("api").items():
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr == "model"
                    and ast.unparse(node.value).endswith("predictor")):
                reads.append(f"{module}:{node.lineno}: {ast.unparse(node)}")
    assert reads == []


def test_bench_imports_nothing_of_tests():
    assert _violations("bench", lambda module, name: not _within(name, {"tests"})) == []


def test_the_rules_see_a_wrong_arrow():
    """The checks are not vacuous: an upward import and a read of predictor.model are found."""
    tree = ast.parse("from detector.modeling.rcnn import RCNN\nimport tests.api.serving\n")
    assert {"detector.modeling.rcnn", "tests.api.serving"} <= _existing(_imports("detector.structures", tree))
    assert _imports_torch("detector.modeling.rcnn") and not _imports_torch("detector.modeling.speeds")
