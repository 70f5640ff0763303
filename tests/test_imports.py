"""Imports live at the top of a module.

A module of the package imports our own modules and the core's packages (hydra, omegaconf,
polars, numpy, lightgbm, scikit-learn, ...) at its top, where a reader sees what it
depends on and an import cycle shows at once. An import inside a function is for a package
an extra brings (:data:`aml_pipeline.optional.EXTRAS` and what those pull in): there, a
module imports each such package in one place (one function), or at its top when the
module loads only after its extra was checked (``tasks.TASK_EXTRAS``, ``optional.require``).
The standard library is not checked.

Anything else inside a function is listed in :data:`ALLOWED` with its reason (an import
cycle, start-up time, an extra's module); a new function-level import anywhere fails here,
and an entry whose import has gone fails too.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

from tests.conftest import ROOT
from tests.test_optional import BLOCKED

PACKAGE = ROOT / "aml_pipeline"

#: Packages only an extra installs (its own modules and what they pull in: starlette, py4j, ...).
OPTIONAL = frozenset(BLOCKED)

#: Folders exempt as a whole, with why.
WHOLE = {
    "aml_pipeline/testing/": "test harnesses (not in the wheel): each starts a server a test needs and imports "
                             "that server's client only then",
}

#: (file, module imported inside a function) -> why it is not at the top.
ALLOWED: dict[tuple[str, str], str] = {
    ("aml_pipeline/sweep.py", "aml_pipeline.registry"):
        "start-up time: the command line imports sweep before every task (job_objective), and the registry "
        "loads the bundle's model stack (LightGBM, scikit-learn, SHAP; seconds on --help); one accessor, _registry()",
    ("aml_pipeline/registry.py", "aml_pipeline.pyfunc"):
        "the mlflow extra: the pyfunc subclasses MLflow's PythonModel at its top; imported after _client checked it",
    ("aml_pipeline/models/classifiers.py", "lightgbm.basic"):
        "a private LightGBM name, imported inside a try so that a LightGBM without it only skips the alias check",
    ("aml_pipeline/store/__init__.py", "aml_pipeline.store.redis_store"):
        "the serve extra's redis client: redis_store imports redis at its top, and only backend=redis needs it",
}

#: Modules that import one extra's package inside several functions (one place each is the
#: rule), with why; none today.
SEVERAL_PLACES: dict[tuple[str, str], str] = {}


def _imported(node: ast.Import | ast.ImportFrom, package: str) -> list[str]:
    """The modules an import statement names (``from aml_pipeline import registry``: the submodule)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    module = node.module or ""
    if node.level:  # relative: against the file's package
        base = package.split(".")[: len(package.split(".")) - node.level + 1]
        module = ".".join([*base, module] if module else base)
    if module == "aml_pipeline":
        return [f"aml_pipeline.{alias.name}" for alias in node.names]
    return [module]


def in_functions(tree: ast.AST, package: str) -> list[tuple[int, str, str]]:
    """(line, module, outermost function) for every import inside a function (or a method) of ``tree``."""
    found = []

    def walk(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)) and function is not None:
                found.extend((child.lineno, m, function) for m in _imported(child, package))
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else None
            walk(child, function or inner)

    walk(tree, None)
    return found


def function_level_imports() -> list[tuple[str, int, str, str]]:
    """(file, line, module, function) for every import inside a function of the package."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
        tree = ast.parse(path.read_text(), str(path))
        found.extend((rel, line, module, function) for line, module, function in in_functions(tree, package))
    return found


def _top(module: str) -> str:
    return module.split(".", 1)[0]


def _exempt(rel: str) -> bool:
    return any(rel.startswith(folder) for folder in WHOLE)


def test_our_modules_and_the_core_are_imported_at_the_top():
    wrong = [f"{rel}:{line} imports {module} inside {function}()"
             for rel, line, module, function in function_level_imports()
             if _top(module) not in OPTIONAL and _top(module) not in sys.stdlib_module_names
             and _top(module) != "__future__" and not _exempt(rel) and (rel, module) not in ALLOWED]
    assert not wrong, ("import these at the top of the module (or, for an import cycle, add the entry to "
                       "ALLOWED with its reason):\n" + "\n".join(wrong))


def test_an_extra_is_imported_in_one_function_per_module():
    places: dict[tuple[str, str], set[str]] = defaultdict(set)
    for rel, _, module, function in function_level_imports():
        if _top(module) in OPTIONAL and not _exempt(rel):
            places[(rel, _top(module))].add(function)
    several = [f"{rel} imports {package} in {', '.join(sorted(fs))}" for (rel, package), fs in sorted(places.items())
               if len(fs) > 1 and (rel, package) not in SEVERAL_PLACES]
    assert not several, ("import each extra's package in one place per module (an accessor that returns it "
                         "through aml_pipeline.optional.require), or at the top of a module that loads only after "
                         "the extra was checked:\n" + "\n".join(several))


def test_every_allowance_names_its_reason_and_is_still_needed():
    """Each entry says why, and goes when its import does."""
    assert all(reason.strip() for reason in (*ALLOWED.values(), *SEVERAL_PLACES.values(), *WHOLE.values()))
    present = {(rel, module) for rel, _, module, _ in function_level_imports()}
    stale = [key for key in ALLOWED if key not in present]
    stale += [key for key in SEVERAL_PLACES if not any((rel, _top(module)) == key for rel, module in present)]
    assert not stale, f"these imports are no longer inside a function; remove their ALLOWED entries: {stale}"
    assert all((PACKAGE.parent / folder).is_dir() for folder in WHOLE)


def test_the_walk_finds_imports_in_nested_functions_and_methods_only():
    source = ("import os\n"
              "try:\n    import redis\nexcept ImportError:\n    redis = None\n"
              "class A:\n    import json\n"
              "    def f(self):\n        def g():\n            from aml_pipeline import registry\n"
              "        import polars\n"
              "async def h():\n    from ..store import engine\n    from . import x\n")
    assert in_functions(ast.parse(source), "aml_pipeline.serving") == [
        (10, "aml_pipeline.registry", "f"), (11, "polars", "f"), (13, "aml_pipeline.store", "h"),
        (14, "aml_pipeline.serving", "h")]
