"""The house's floors (scripts/layers.py): no module imports a higher floor, none reaches into another package's
private names, and no two modules import each other, directly or around a loop."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "layers.py"


def _measure():
    spec = importlib.util.spec_from_file_location("layers", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_no_upward_or_private_import_and_no_circle():
    result = _measure().measure()
    assert result["upward"] == []
    assert result["private"] == []
    assert result["circles"] == []


def test_the_measure_sees_what_it_forbids(tmp_path):
    layers = _measure()
    mods = {"vtprune.methods.a": tmp_path / "a.py", "vtprune.methods.b": tmp_path / "b.py",
            "vtprune.api": tmp_path / "api.py"}
    mods["vtprune.methods.a"].write_text("from vtprune.methods.b import x\nfrom vtprune.api import _y\n")
    mods["vtprune.methods.b"].write_text("def f():\n    from vtprune.methods.a import z\n")
    typing_only = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from vtprune.cli import app\n"
    mods["vtprune.api"].write_text(typing_only)
    found = layers.imports(mods)
    assert ("vtprune.methods.a", "vtprune.api", ["_y"]) in found
    assert not any(a == "vtprune.api" for a, _, _ in found)  # type-checking imports never run
    assert layers.circles({(a, b) for a, b, _ in found}) == [["vtprune.methods.a", "vtprune.methods.b"]]
    assert layers.floor("vtprune.api") > layers.floor("vtprune.methods.a")
