"""The public API: every exported name exists and is documented."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import climate
import manifold_aps

MODULES = sorted(
    {
        m.name
        for pkg in (manifold_aps, climate)
        for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")
    }
    | {"manifold_aps", "climate"}
)


@pytest.mark.parametrize("name", MODULES)
def test_module_has_docstring_and_documented_all(name):
    module = importlib.import_module(name)
    assert module.__doc__, f"{name} has no module docstring"
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    for item in exported:
        obj = getattr(module, item)
        if callable(obj):
            assert obj.__doc__, f"{name}.{item} has no docstring"
