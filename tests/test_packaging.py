"""The four packages install under one namespace (hwcost, hwcost.profiles, hwcost.sensitivity,
hwcost.planner) from the repository's top-level folders: every package folder must be listed in
pyproject.toml, or a wheel silently ships without it."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"hwcost": "hwcost", "hwcost.profiles": "profiles", "hwcost.sensitivity": "sensitivity",
           "hwcost.planner": "planner"}


def test_every_package_folder_is_installed_under_the_hwcost_namespace():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert tool["package-dir"] == FOLDERS
    found = set()
    for name, folder in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join([name, *rel]))
    assert set(tool["packages"]) == found
    assert all(p == "hwcost" or p.startswith("hwcost.") for p in tool["packages"])


def test_the_packages_import_under_the_namespace_only():
    import importlib.util

    assert importlib.util.find_spec("hwcost.profiles") is not None
    for generic in ("profiles", "planner", "sensitivity"):
        spec = importlib.util.find_spec(generic)
        # From the repository root the folders are on sys.path as plain directories; what must not
        # exist is an installed top-level package of that name.
        assert spec is None or Path(spec.origin or "").parent.parent == ROOT, generic
