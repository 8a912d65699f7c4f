"""Import direction between the packages, read from the source with ``ast``.

The composition root (``hwcost.app``: the CLI and the main job) sits on top and may import
anything; no library module imports it. ``hwcost``'s own modules are the ground floor that
``profiles``, ``sensitivity`` and ``planner`` build on, so they import none of those three. Imports
inside functions count: a lazy import is still an arrow.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP = "hwcost.app"
UPPER = ("profiles", "planner", "sensitivity")
# The same packages under the one namespace they may be installed as.
UPPER_NAMES = UPPER + tuple(f"hwcost.{p}" for p in UPPER)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    if parts[0] in UPPER:  # installed as hwcost.profiles, ... (pyproject's package-dir)
        parts.insert(0, "hwcost")
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """Every module ``source`` imports, anywhere in the file, as (line, absolute dotted name).

    Relative imports are resolved against ``module``; ``importlib.import_module("x")`` with a
    literal name counts too. ``from a import b`` yields both ``a`` and ``a.b`` (b may be a module).
    """
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names if a.name != "*"]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", ""))
              == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value))
    return found


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _library_files() -> list[Path]:
    files = [p for pkg in ("hwcost", *UPPER) for p in sorted((ROOT / pkg).rglob("*.py"))]
    return [p for p in files if not _within(_module_name(p), APP)]


def _violations(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    out = []
    for path in files:
        name = _module_name(path)
        for line, imported in imported_modules(path.read_text(), name, path.name == "__init__.py"):
            if any(_within(imported, f) for f in forbidden):
                out.append(f"{path.relative_to(ROOT)}:{line} imports {imported}")
    return out


def test_the_parser_sees_lazy_relative_and_dynamic_imports():
    src = ("import os\n"
           "def f():\n"
           "    from ..app import main\n"
           "    from . import store\n"
           "    import importlib\n"
           "    importlib.import_module('planner.solve')\n")
    names = [n for _, n in imported_modules(src, "hwcost.sub.mod")]
    assert names == ["os", "hwcost.app", "hwcost.app.main", "hwcost.sub", "hwcost.sub.store",
                     "importlib", "planner.solve"]
    assert _violations(sorted((ROOT / "hwcost" / "app").rglob("*.py")), UPPER_NAMES), \
        "the composition root imports the upper packages, so the check must see it"


def test_no_library_module_imports_the_composition_root():
    files = _library_files()
    assert len(files) > 50 and any(p.parent.name == "planner" for p in files)
    assert _violations(files, (APP,)) == []


def test_hwcost_core_imports_none_of_the_packages_above_it():
    core = [p for p in _library_files() if p.relative_to(ROOT).parts[0] == "hwcost"]
    assert len(core) > 20
    assert _violations(core, UPPER_NAMES) == []



def test_the_library_imports_nothing_from_the_tests():
    assert _violations(_library_files() + sorted((ROOT / "hwcost" / "app").rglob("*.py")),
                       ("tests",)) == []


PACKAGES = ["hwcost", "hwcost.planner", "hwcost.profiles", "hwcost.sensitivity", "hwcost.app",
            "hwcost.store", "hwcost.profiles.backends"]


def test_every_package_exports_an_explicit_all_that_resolves():
    code = ("import importlib\n"
            f"for package in {PACKAGES!r}:\n"
            "    m = importlib.import_module(package)\n"
            "    assert isinstance(m.__all__, list) and len(m.__all__) == len(set(m.__all__)), package\n"
            "    missing = [n for n in m.__all__ if not hasattr(m, n)]\n"
            "    assert not missing, (package, missing)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]


def test_importing_hwcost_planner_or_the_cli_loads_no_heavy_module():
    code = ("import sys\nimport hwcost, hwcost.planner, hwcost.app.main, hwcost.planner.enums, hwcost.enums\n"
            "heavy = {'torch', 'numpy', 'sqlalchemy', 'sqlmodel', 'ortools', 'pyarrow'}\n"
            "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


# -- the store's boundary: engines, sessions and rows stay inside hwcost/store/
STORE = "hwcost.store"
# What only the store's own modules may import: the SQL toolkits and drivers, DuckDB (db query
# runs inside the store), and the store's backend modules (SQLModel rows, engines, sessions,
# bulk copies, migrations). Its records (records, queue_records, protocol) and entry points
# (exchange, bundle, query, summary) are the public face, reached through ``hwcost.store``.
SQL_ENGINES = ("sqlmodel", "sqlalchemy", "psycopg", "psycopg2", "duckdb")
STORE_BACKEND = tuple(f"{STORE}.{m}" for m in ("schema", "rows", "bulk", "sql", "measurements",
                                              "results", "campaigns", "opening", "migrations",
                                              "bundle_checks"))
# A SQLAlchemy engine, session or connection, and the store's own attributes: reaching any of
# them from outside the package is the leak this check exists for.
BACKEND_ATTRS = {"engine", "session", "connection", "dialect", "exec_driver_sql"}
# SqlStore methods that hand out SQLModel rows or integer ids (for the store's own modules and
# for tests that inspect rows): a library caller uses the protocol's record-returning twin
# (device, devices, model, model_manifest, plans, put_device, ...).
ROW_METHODS = {"get_device", "get_model", "upsert_device", "upsert_subgraphs", "models",
               "manifest", "plans_for"}
# Precise, justified exceptions: (module path, what it reaches). One remains; an entry added
# for a known leak must name it exactly, and one that no longer occurs fails the test.
BOUNDARY_EXCEPTIONS: set[tuple[str, str]] = {
    # the reuse path reads the model row for its id: SensitivityRun.model_id is printed by
    # `hwcost sensitivity --json`, whose output stays as it is
    ("sensitivity/pipeline.py", ".get_model()"),
}


def _outside_store() -> list[Path]:
    """Every library module outside hwcost/store/, the composition root (hwcost.app) included."""
    files = [p for pkg in ("hwcost", *UPPER) for p in sorted((ROOT / pkg).rglob("*.py"))]
    return [p for p in files if not _within(_module_name(p), STORE)]


def _backend_attrs(source: str) -> list[tuple[int, str]]:
    """``x.engine``, ``x.session(...)``, ... and ``store._private`` reads, and calls of the SQL
    backend's row-returning methods (``store.get_device(...)``), as (line, attr)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute):
            continue
        private = (node.attr.startswith("_") and not node.attr.startswith("__")
                   and "store" in ast.unparse(node.value).lower())
        if node.attr in BACKEND_ATTRS or private:
            out.append((node.lineno, node.attr))
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ROW_METHODS):
            out.append((node.lineno, f"{node.func.attr}()"))
    return out


def _boundary_leaks() -> set[tuple[str, str]]:
    leaks = set()
    for v in _violations(_outside_store(), SQL_ENGINES + STORE_BACKEND):
        where, _, imported = v.partition(" imports ")
        leaks.add((where.split(":")[0], imported))
    for path in _outside_store():
        for _, attr in _backend_attrs(path.read_text()):
            leaks.add((str(path.relative_to(ROOT)), f".{attr}"))
    return leaks


def test_the_boundary_check_sees_engines_sessions_rows_and_private_store_use():
    src = ("from sqlalchemy import text\n"
           "from hwcost.store import schema\n"
           "def f(store):\n"
           "    from hwcost.store.schema import Device\n"
           "    with store.engine.connect() as c, store.session() as s:\n"
           "        store.get_model('m')\n"
           "        return store._insert_ignore(s, Device)\n")
    names = {n for _, n in imported_modules(src, "hwcost.costs")}
    assert {"sqlalchemy", "hwcost.store.schema", "hwcost.store.schema.Device"} <= names
    assert {a for _, a in _backend_attrs(src)} == {"engine", "session", "_insert_ignore",
                                                   "get_model()"}
    files = _outside_store()
    assert any(p.parent.name == "app" for p in files) and any(p.parent.name == "planner" for p in files)
    assert not any(p.parent.name == "store" for p in files)


def test_nothing_outside_the_store_touches_engines_sessions_or_rows():
    """No module outside hwcost/store/ imports sqlmodel, sqlalchemy, a driver, DuckDB or the
    store's backend modules (its SQLModel rows among them), nor reads ``.engine``, a session
    or connection, or a ``store._private`` name: they go through the ``Store`` protocol's
    records and the store's entry points (``hwcost.store.export_bundle``, ``run_query``, ...)."""
    leaks = _boundary_leaks()
    assert leaks - BOUNDARY_EXCEPTIONS == set(), "new leaks through the store's boundary"
    assert BOUNDARY_EXCEPTIONS - leaks == set(), "fixed: remove these from BOUNDARY_EXCEPTIONS"


def test_opening_a_store_loads_no_arrow_duckdb_or_torch():
    """Bundles, ``db query`` and ``db ls`` are ``hwcost.store`` names loaded on first use: a
    worker that only opens a store and writes timings pays for none of pyarrow or DuckDB."""
    code = ("import sys\nimport hwcost.store\n"
            "print(sorted({'pyarrow', 'duckdb', 'torch'} & {m.split('.')[0] for m in sys.modules}))\n"
            "from hwcost.store import export_bundle, run_query\n"
            "print(callable(export_bundle) and callable(run_query))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["[]", "True"]
