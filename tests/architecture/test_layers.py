"""The house rules of the redesign, kept by tests (nothing is imported: the source is read with ast).

- No import cycle anywhere in vla_compress/ (function-level imports count).
- Layers point down: the torch-free base (errors, fileio, checkpoint/), the torch building blocks
  (nn/) and the model families (models/) never import the layers above them.
- Generic code names no model family: family knowledge lives in models/<family>/, reached through
  the family spec (models/spec.py, models/registry.py).
"""

from __future__ import annotations

import ast

from tests.architecture.imports import PACKAGE, cycles, graph, modules

# top-level packages/modules, bottom first; a module may import only its own layer and those below
LOWER_LAYERS = [
    {"errors", "fileio", "resources", "notices"},
    {"checkpoint"},
    {"nn"},
    {"models"},
]
UPPER = {"passes", "export", "profile", "runtime", "evaluate", "pipeline", "cli", "report", "train", "data",
         "hardware", "backends", "manifest", "__main__"}
# every package but models/ must not know any family, except train/: the trainer of the project's own
# reference policy (`vla-compress train-reference`), which builds that family's model by design
NOT_GENERIC = {"models", "train", ""}


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _family_names() -> set[str]:
    """The names the family specs register (read from models/*/spec.py without importing them)."""
    names = set()
    for spec in (PACKAGE / "models").glob("*/spec.py"):
        for node in ast.walk(ast.parse(spec.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "name" and isinstance(node.value, ast.Constant):
                names.add(node.value.value)
    return names


def test_every_module_is_classified():
    tops = {_top(m) for m in modules()} - {""}
    assert tops <= set().union(*LOWER_LAYERS) | UPPER, sorted(tops - set().union(*LOWER_LAYERS) - UPPER)


def test_no_import_cycle():
    found = cycles(graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_lower_layers_never_import_upward():
    g = graph()
    allowed: set[str] = set()
    bad = []
    for layer in LOWER_LAYERS:
        allowed |= layer
        for mod, deps in g.items():
            if _top(mod) in layer:
                bad += [f"{mod} imports {d}" for d in sorted(deps) if _top(d) not in allowed and _top(d)]
    assert not bad, "\n".join(bad)


def test_family_names_are_registered():
    assert {"reference", "openvla", "openvla-oft", "smolvla"} <= _family_names()


def test_generic_code_names_no_family():
    """No string equal to a family name, no import of a family's modules, no read of a family's
    config object (`x.cfg` / `x.arch` on anything but `self`) in generic code."""
    families = _family_names()
    folders = {p.name for p in (PACKAGE / "models").iterdir() if (p / "spec.py").is_file()}
    bad = []
    for name, path in modules().items():
        if _top(name) in NOT_GENERIC:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.relative_to(PACKAGE.parent)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in families:
                bad.append(f"{where} names the family {node.value!r}")
            elif isinstance(node, ast.ImportFrom) and node.module:
                parts = node.module.split(".")
                if "models" in parts and (set(parts[parts.index("models") + 1:]) & folders
                                          or {a.name for a in node.names} & folders):
                    bad.append(f"{where} imports a family module ({node.module})")
            elif (isinstance(node, ast.Attribute) and node.attr in ("cfg", "arch")
                  and not (isinstance(node.value, ast.Name) and node.value.id == "self")):
                bad.append(f"{where} reads a family config ({ast.unparse(node)})")
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
                  and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                  and node.args[1].value in ("cfg", "arch")):
                bad.append(f"{where} reads a family config ({ast.unparse(node)})")
    assert not bad, "\n".join(bad)


def test_a_family_folder_imports_no_other_family():
    """Families share code through models/ modules that are no family (common.py, lerobot_layout.py,
    contracts.py, ...), never through each other's folders: a family is one folder."""
    folders = {p.name for p in (PACKAGE / "models").iterdir() if (p / "spec.py").is_file()}
    bad = []
    for mod, deps in graph().items():
        parts = mod.split(".")
        if len(parts) > 3 and parts[1] == "models" and parts[2] in folders:
            bad += [f"{mod} imports {d}" for d in sorted(deps)
                    if len(d.split(".")) > 2 and d.split(".")[1] == "models" and d.split(".")[2] in folders
                    and d.split(".")[2] != parts[2]]
    assert not bad, "\n".join(bad)
