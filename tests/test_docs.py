"""Docs point at code that exists: README.md, docs/*.md and the formula index of rlhfkit.ops.

Checked reference forms (each failure names the doc, the line and what is missing):
- ``path/file.py::name`` and ``tests/…/test_x.py::test_name`` (also ``Class.method``, and a
  parametrised ``test_x[id]``), anywhere in the text; a list ``file.py::a, b, c`` names ``b`` and
  ``c`` in the same file (in backticks when ``file.py::a`` is; outside backticks only names that
  look like code, with ``_``, ``.``, a digit or a capital, so ``x.py::f, shared by`` is prose).
  A path is looked up from the repository root, then under rlhfkit/ and tests/, then as the tail
  of a path below those two (``ppo.py`` is online/ppo.py or ops/ppo.py): one file that defines
  the name (``def``, ``class`` or an assignment, not an import) is enough.
- a code span that is a path: ``x.py``, ``folder/x.md``, ``folder/x.yaml``: the file exists.
- a code span ``a.b``: a dotted config key of some stage (``train.batch_size``), else an
  attribute of an rlhfkit module found by its last name (``common.global_count``,
  ``ops.masked_sum``) or full name (``rlhfkit.online.rewards:lexicon_sentiment``), or of an
  rlhfkit class (``RMPart.margin``). Spans that name none of these (``torch.where``,
  ``metrics.jsonl``) are not references.
test_the_checker_catches_broken_references pins each form on a deliberately broken doc.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SEARCHED = ("rlhfkit", "tests")  # where short paths (``ppo.py::x``) are looked for
DATA_SUFFIXES = {"json", "jsonl", "yaml", "yml", "md", "py", "txt", "csv", "pt", "html", "gz",
                 "bin", "safetensors", "log", "sh", "toml"}

NAME = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
FILE_REF = re.compile(r"(?<![\w/.-])(`?)((?:[\w.-]+/)*[\w.-]+\.py)::(" + NAME
                      + r")(?:\[[^\]\s]*\])?")  # an optional parametrised id: test_x[a-b]
# ", name" after a file reference; never a path, a file name or another ``x.py::y``.
MORE = r",\s*{tick}(" + NAME + r"){tick}(?![\w/:\[]|\.\w)"
CODE_LIKE = re.compile(r".*[_.A-Z0-9]")  # a bare continuation must look like code, not a word
SPAN = re.compile(r"`([^`\n]+)`")
PATH_SPAN = re.compile(r"(?:[\w.-]+/)*[\w.-]+\.py|(?:[\w.-]+/)+[\w.-]+\.(?:md|yaml)")
DOTTED_SPAN = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+(?::[A-Za-z_]\w*)?")


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
            ROOT / "rlhfkit" / "ops" / "__init__.py"]


# ----------------------------------------------------------------------------- files and names
@functools.lru_cache(maxsize=None)
def candidate_files(path: str, root: Path = ROOT) -> tuple[Path, ...]:
    """The files a documented path can mean, best first."""
    found = [root / path, *(root / top / path for top in SEARCHED)]
    for top in SEARCHED:
        found += sorted((root / top).rglob(Path(path).name))
    tail = "/" + path
    return tuple(dict.fromkeys(p for p in found if p.is_file()
                               and ("/" + p.relative_to(root).as_posix()).endswith(tail)))


@functools.lru_cache(maxsize=None)
def defined_names(path: Path) -> frozenset[str]:
    """Names a file defines: functions and classes (``Class.method`` too), assigned names."""
    names: set[str] = set()

    def visit(body, prefix):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(prefix + node.name)
                if isinstance(node, ast.ClassDef):
                    visit(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names.update(prefix + t.id for t in targets if isinstance(t, ast.Name))
            elif isinstance(node, (ast.If, ast.Try)):  # guarded definitions
                visit(node.body, prefix)

    visit(ast.parse(path.read_text(encoding="utf-8")).body, "")
    return frozenset(names)


def file_problem(path: str, name: str, root: Path = ROOT) -> str | None:
    files = candidate_files(path, root)
    if not files:
        return f"no file {path} (looked in ./, {', '.join(t + '/' for t in SEARCHED)})"
    if not any(name in defined_names(f) for f in files):
        where = ", ".join(f.relative_to(root).as_posix() for f in files)
        return f"{name} is not defined in {where}"
    return None


# ----------------------------------------------------------------------------- dotted names
@functools.lru_cache(maxsize=None)
def config_keys() -> frozenset[str]:
    """Every dotted key of every stage's config, and its sections (``train``, ``model.lora``)."""
    from rlhfkit.cli import STAGES
    from rlhfkit.config import help_lines

    keys = set()
    for module, class_name in STAGES.values():
        config_cls = getattr(importlib.import_module(module), class_name)
        for line in help_lines(config_cls):
            if line.startswith("  ") and not line.startswith("   "):
                key = line.split(" = ")[0].strip()
                parts = key.split(".")
                keys.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return frozenset(keys)


@functools.lru_cache(maxsize=None)
def rlhfkit_modules() -> dict[str, list[str]]:
    """Last name → full module names (``common`` → ['rlhfkit.trainers.common'])."""
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / "rlhfkit").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found.setdefault(parts[-1], []).append(".".join(parts))
    return found


@functools.lru_cache(maxsize=None)
def rlhfkit_classes() -> dict[str, list[str]]:
    """Class name → modules defining it at top level."""
    found: dict[str, list[str]] = {}
    for modules in rlhfkit_modules().values():
        for module in modules:
            path = ROOT / Path(*module.split("."))
            path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
            for node in ast.parse(path.read_text(encoding="utf-8")).body:
                if isinstance(node, ast.ClassDef):
                    found.setdefault(node.name, []).append(module)
    return found


def has_attributes(obj, names: list[str]) -> bool:
    for name in names:
        fields = {f.name for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) \
            else set(getattr(obj, "_fields", ()))
        if name in fields and not hasattr(obj, name):
            return True  # a field without a class-level default: nothing below to follow
        if not hasattr(obj, name):
            return False
        obj = getattr(obj, name)
    return True


def in_module(module: str, names: list[str]) -> bool:
    try:
        return has_attributes(importlib.import_module(module), names)
    except ModuleNotFoundError:
        return False


def dotted_problem(span: str) -> str | None:
    """None when ``span`` resolves or is not a reference to rlhfkit at all."""
    if ":" in span:
        module, name = span.split(":")
        ok = module.startswith("rlhfkit.") and in_module(module, [name])
        return None if ok else f"no {name} in {module}"
    parts = span.split(".")
    if parts[-1] in DATA_SUFFIXES:
        return None  # a file name (metrics.jsonl), not a reference
    if parts[0] == "rlhfkit":
        # down to the package itself: rlhfkit.sft, rlhfkit.Result (rlhfkit/__init__.py)
        if any(in_module(".".join(parts[:i]), parts[i:]) for i in range(len(parts), 0, -1)):
            return None
        return "does not resolve in rlhfkit"
    if span in config_keys():
        return None
    modules = rlhfkit_modules().get(parts[0], [])
    if any(in_module(module, parts[1:]) for module in modules):
        return None
    classes = rlhfkit_classes().get(parts[0], [])
    if any(has_attributes(getattr(importlib.import_module(m), parts[0]), parts[1:])
           for m in classes):
        return None
    if parts[0] in config_keys():
        return "not a config key"
    if modules or classes:
        owners = modules + [f"{module}.{parts[0]}" for module in classes]
        return f"no {'.'.join(parts[1:])} in {', '.join(owners)}"
    return None  # torch.where, model.generate: not ours


# ----------------------------------------------------------------------------- the checker
def problems(path: Path, root: Path = ROOT) -> list[str]:
    """One line per reference of ``path`` that does not resolve: 'doc:line: `ref`: why'."""
    text = path.read_text(encoding="utf-8")
    doc = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
    found = []

    def report(offset, ref, why):
        if why:
            found.append(f"{doc}:{text.count(chr(10), 0, offset) + 1}: {ref}: {why}")

    for match in FILE_REF.finditer(text):
        tick, file, name = match.groups()
        report(match.start(), f"{file}::{name}", file_problem(file, name, root))
        more = re.compile(MORE.format(tick=tick))
        end = match.end() + len(tick)
        while (extra := more.match(text, end)) is not None:
            if not tick and not CODE_LIKE.match(extra.group(1)):
                break
            report(extra.start(1), f"{file}::{extra.group(1)}",
                   file_problem(file, extra.group(1), root))
            end = extra.end()
    for match in SPAN.finditer(text):
        span = match.group(1).strip()
        if "::" in span or "<" in span or "~" in span:
            continue
        if PATH_SPAN.fullmatch(span):
            if not candidate_files(span, root):
                report(match.start(), span, "no such file")
        elif DOTTED_SPAN.fullmatch(span):
            report(match.start(), span, dotted_problem(span))
    return found


@pytest.mark.parametrize("doc", documents(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_doc_references_resolve(doc):
    assert problems(doc) == []


def test_the_checker_catches_broken_references(tmp_path):
    (tmp_path / "rlhfkit" / "pkg").mkdir(parents=True)
    (tmp_path / "rlhfkit" / "pkg" / "mod.py").write_text(
        "import os\n\n\ndef real():\n    pass\n\n\nclass Box:\n    def open(self):\n        pass\n"
        "\n\nreal_too = real\n")
    doc = tmp_path / "doc.md"
    doc.write_text(
        "| `pkg/mod.py::real`, `Box.open` | `mod.py::Box.open`; mod.py::real, real_too, shared |\n"
        "`pkg/mod.py::gone` plain pkg/mod.py::os, real_gone `nowhere.py::real`\n"
        "`mod.py::real`, `missing`, `pkg/mod.py` `pkg/absent.py` `examples/none.yaml`\n"
        "`train.batch_size` `train.no_such_key` `common.global_count` `common.gone`\n"
        "`rlhfkit.ops.masked_mean` `rlhfkit.ops.nothing` `rlhfkit.online.rewards:nothing`\n"
        "`RMPart.margin` `RMPart.nothing` `torch.where` `metrics.jsonl` `x.py::real[id]`\n")
    assert problems(doc, tmp_path) == [
        "doc.md:2: pkg/mod.py::gone: gone is not defined in rlhfkit/pkg/mod.py",
        "doc.md:2: pkg/mod.py::os: os is not defined in rlhfkit/pkg/mod.py",  # only imported
        "doc.md:2: pkg/mod.py::real_gone: real_gone is not defined in rlhfkit/pkg/mod.py",
        "doc.md:2: nowhere.py::real: no file nowhere.py (looked in ./, rlhfkit/, tests/)",
        "doc.md:3: mod.py::missing: missing is not defined in rlhfkit/pkg/mod.py",
        "doc.md:6: x.py::real: no file x.py (looked in ./, rlhfkit/, tests/)",
        "doc.md:3: pkg/absent.py: no such file",
        "doc.md:3: examples/none.yaml: no such file",
        "doc.md:4: train.no_such_key: not a config key",
        "doc.md:4: common.gone: no gone in rlhfkit.trainers.common",
        "doc.md:5: rlhfkit.ops.nothing: does not resolve in rlhfkit",
        "doc.md:5: rlhfkit.online.rewards:nothing: no nothing in rlhfkit.online.rewards",
        "doc.md:6: RMPart.nothing: no nothing in rlhfkit.trainers.reward.RMPart",
    ]
