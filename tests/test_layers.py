"""The import contract (tests/layers.py) holds: no import cycle in cognitude/, function-level
imports included, and every import flows down the layers."""

from __future__ import annotations

from tests import layers


def test_no_cycle_and_every_import_flows_down_the_layers():
    assert layers.problems() == []


def test_the_contract_sees_function_level_imports_and_names_the_cycle(tmp_path, monkeypatch):
    """A checker that cannot fail proves nothing: a cycle made only of a function-level
    import is found, with the modules and lines that make it."""
    pkg = tmp_path / "cognitude"
    (pkg / "gate").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("def f():\n    from cognitude.gate import gate\n")
    (pkg / "gate" / "__init__.py").write_text("")
    (pkg / "gate" / "gate.py").write_text("from cognitude.errors import f\n")
    monkeypatch.setattr(layers, "PACKAGE", pkg)
    found = layers.problems()
    assert any(p.startswith("import cycle:") and "cognitude.errors:2 -> cognitude.gate.gate" in p
               and "cognitude.gate.gate:1 -> cognitude.errors" in p for p in found), found
    assert any("cognitude.errors:2 imports cognitude.gate.gate: layer 'base' may not import"
               in p for p in found), found
