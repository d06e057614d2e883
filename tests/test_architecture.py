"""The layout is the architecture: packages import only downwards (ARCHITECTURE.md), nothing imports the training
loop, and the command lines people use keep working."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# package -> the packages of ours it may import (besides itself): each layer sees only the layers below it
MAY_IMPORT = {
    "common": set(),
    "models": {"common"},
    "corpus": {"common"},
    "training": {"common", "models", "corpus"},
    "eval": {"common", "models", "corpus", "training"},
    "analysis": {"common", "models", "corpus", "training", "eval"},
    "benchmarks": {"common", "models", "corpus", "training", "eval", "analysis"},
}
# entry points kept under their original names; nothing imports them
SHIMS = {"models/train.py": "training.cli", "models/prepare_data.py": "corpus.prepare"}
# the training loop and its command line: only the command line and the entry points may import them
LOOP = {"training.trainer": {"training.cli"}, "training.cli": {"training.__main__", *SHIMS}}


def imports_of(path: Path) -> set[str]:
    """Absolute names of every module `path` imports (at the top or inside functions)."""
    module = ".".join(path.relative_to(REPO).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module.removesuffix(".__init__")
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            names.add(name)
            names |= {f"{name}.{alias.name}" for alias in node.names}
    return names


def sources() -> list[Path]:
    return sorted(p for pkg in MAY_IMPORT for p in (REPO / pkg).rglob("*.py"))


def test_imports_point_down():
    wrong = []
    for path in sources():
        rel = str(path.relative_to(REPO))
        own = path.relative_to(REPO).parts[0]
        for name in imports_of(path):
            top = name.split(".")[0]
            if top in MAY_IMPORT and top != own and top not in MAY_IMPORT[own]:
                if SHIMS.get(rel) and name.startswith(SHIMS[rel]):
                    continue
                wrong.append(f"{rel} imports {name}")
    assert not wrong, "imports pointing up or sideways:\n" + "\n".join(wrong)


def test_nothing_imports_the_training_loop_or_an_entry_point():
    wrong = []
    shims = {p.removesuffix(".py").replace("/", ".") for p in SHIMS}
    for path in sources():
        rel = str(path.relative_to(REPO))
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        for name in imports_of(path):
            for loop, allowed in LOOP.items():
                if (name == loop or name.startswith(loop + ".")) and module not in allowed and rel not in allowed:
                    wrong.append(f"{rel} imports {name}")
            if any(name == s or name.startswith(s + ".") for s in shims):
                wrong.append(f"{rel} imports the entry point {name}")
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_a_wrong_import(tmp_path, monkeypatch):
    """The import checker itself: an upward import in a model file is found."""
    bad = REPO / "models" / "_architecture_probe.py"
    bad.write_text("from training.trainer import Trainer  # noqa\n")
    try:
        with pytest.raises(AssertionError, match="models/_architecture_probe.py imports training"):
            test_imports_point_down()
        with pytest.raises(AssertionError, match="imports training.trainer"):
            test_nothing_imports_the_training_loop_or_an_entry_point()
    finally:
        bad.unlink()


@pytest.mark.parametrize(
    "module",
    ["models.train", "models.summary", "models.prepare_data", "training", "eval", "eval.run", "analysis.mappings",
     "analysis.tables", "analysis.figures", "analysis.report", "training.tracking"],
)  # fmt: skip
def test_command_lines_keep_working(module):
    proc = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage" in proc.stdout.lower(), proc.stdout[:500]


def test_console_scripts_point_at_main_functions():
    import importlib

    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"mhc-train", "mhc-summary", "mhc-eval", "mhc-mappings"} <= scripts.keys()
    for name, target in scripts.items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), name
