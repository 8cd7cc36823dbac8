"""The tree is the architecture: no import runs from a lower layer to a higher one.

Layers, lowest first: ops and data (pure math, files) → models → trainers (offline stages)
→ online (PPO, GRPO and their machinery) → label (human feedback) → demo and loop (side by
side). The package root holds entry points: ``config`` (imported by any layer, imports none), ``allocator``, and
``cli``/``__main__`` (may import everything, imported by nothing). Imports inside functions
count too: a lazy import is still an arrow.
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rlhfkit"
LAYERS = {"ops": 0, "data": 0, "models": 1, "trainers": 2, "online": 3, "label": 4, "demo": 5,
          "loop": 5}
ENTRY_POINTS = {"cli", "__main__"}
ROOT_MODULES = {"config", "allocator", "cli", "__main__", "__init__"}


def module_of(path: Path) -> list[str]:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every rlhfkit import in a file, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_of(path)
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            found.append((node.lineno, base))
            # ``from rlhfkit import online`` names a subpackage: count it as that import.
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names
                      if base == "rlhfkit"]
    return [(line, name) for line, name in found if name.split(".")[0] == "rlhfkit"]


def layer_of(module: list[str]) -> int | None:
    return LAYERS.get(module[1]) if len(module) > 1 else None


def arrows_up() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = module_of(path)
        source_layer = layer_of(source)
        for line, name in imported_modules(path):
            target = name.split(".")
            target_layer = layer_of(target)
            where = f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}"
            if len(target) > 1 and target[1] in ENTRY_POINTS and source[-1] not in ENTRY_POINTS:
                bad.append(f"{where} (an entry point)")
            elif source_layer is None and source[-1] in ("config", "allocator") \
                    and target_layer is not None:
                bad.append(f"{where} (the root's {source[-1]} sits below every layer)")
            elif source_layer is not None and target_layer is not None \
                    and target_layer > source_layer:
                bad.append(where)
    return bad


def test_no_import_runs_up_a_layer():
    assert arrows_up() == []


def test_root_holds_only_entry_points_and_every_folder_is_a_layer():
    root_modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert root_modules <= ROOT_MODULES, sorted(root_modules - ROOT_MODULES)
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders <= set(LAYERS), sorted(folders - set(LAYERS))


@pytest.mark.parametrize("source, target", [("ops/x.py", "rlhfkit.models.forward"),
                                             ("models/x.py", "rlhfkit.trainers.common"),
                                             ("trainers/x.py", "rlhfkit.online.loop"),
                                             ("online/x.py", "rlhfkit.demo.report")])
def test_the_check_catches_an_upward_import(tmp_path, monkeypatch, source, target):
    fake = tmp_path / "rlhfkit"
    (fake / source).parent.mkdir(parents=True)
    (fake / source).write_text(f"def f():\n    import {target}\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    assert arrows_up() == [f"rlhfkit/{source}:2 imports {target}"]
