"""The package's imports are layered: folders in import order, and modules in order inside each folder.

A module imports only modules of earlier rows: of an earlier folder, or of an earlier row of its own folder. So
there is no cycle. Every import counts: module-level, inside functions, and `if TYPE_CHECKING:` blocks
(annotations) too. A new module gets a place in LAYERS; an import that breaks the order fails here, naming it.
docs/architecture.md shows the same table; the test below keeps the two in step.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import sd_softprompt

# (folder, its modules' rows, lowest first). "" is the package's own top level.
LAYERS: list[tuple[str, list[set[str]]]] = [
    ("", [{"errors"}, {"__init__"}]),  # typed errors; the facade (errors eagerly, the rest lazily)
    (
        "families",
        [
            {"base"},
            {"clip", "llm"},
            {"sd"},
            {"sdxl", "sd3", "flux", "sana", "chroma", "pixart", "hidream"},
            {"lumina2", "qwen_image", "flux2_klein"},
            {"flux2"},
            {"__init__"},
        ],
    ),
    (
        "files",
        [
            {"atomic", "keys"},
            {"safe_read"},
            {"readers", "writers"},
            {"bundles", "validation"},
            {"softprompt"},
            {"convert", "mixing"},
            {"__init__"},
        ],
    ),
    ("inject", [{"vocab", "token_checks"}, {"loader"}, {"inspection"}, {"__init__"}]),
    ("render", [{"grid", "scoring", "weighting"}, {"generate"}, {"__init__"}]),
    (
        "models",
        [
            {"tiny_text", "base"},
            {"tiny_llm"},
            {"tiny", "toyworld.world"},
            {"toyworld.judge", "toyworld.model"},
            {"toyworld.fidelity"},
            {"toyworld.__init__"},
            {"builtin"},
            {"pipeline"},
            {"__init__"},
        ],
    ),
    (
        "train",
        [
            {"config"},
            {"data", "measure", "losses", "config_file"},
            {"objectives", "tracking", "card"},
            {"checks", "rows", "checkpoints"},
            {"loop"},
            {"trainer"},
            {"__init__"},
        ],
    ),
    ("cli", [{"demo"}, {"parser"}, {"main"}, {"__init__", "__main__"}]),
]
PACKAGE = Path(sd_softprompt.__file__).parent
ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"


def _rank() -> dict[str, tuple[int, int]]:
    """module (dotted, from the package) -> (folder, row)."""
    out = {}
    for f, (folder, rows) in enumerate(LAYERS):
        for r, row in enumerate(rows):
            for module in row:
                out[f"{folder}.{module}" if folder else module] = (f, r)
    return out


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("")
        out[".".join(rel.parts)] = path
    return out


def _imports(name: str, path: Path) -> set[str]:
    """The package modules `name` imports (relative or absolute), type-only imports included."""
    package = name.split(".")[:-1]  # "models.toyworld.model" and "models.toyworld.__init__" live in models.toyworld
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.split(".")[0] == "sd_softprompt":
                target = node.module.split(".")[1:]
            else:
                continue
            # `from . import x` / `from .pkg import mod`: a submodule if one has that name
            for alias in node.names:
                found.add(".".join([*target, alias.name]))
            found.add(".".join(target))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "sd_softprompt":
                    found.add(".".join(parts[1:]))
    return found


def _canonical(name: str, modules: dict[str, Path]) -> str | None:
    if name in ("", "."):
        return "__init__"
    if name in modules:
        return name
    if f"{name}.__init__" in modules:
        return f"{name}.__init__"
    return None  # a name imported from a module, not a module


def test_every_module_has_a_row_and_every_row_a_module():
    ranked, modules = set(_rank()), set(_modules())
    assert not sorted(modules - ranked), f"give these modules a row in LAYERS: {sorted(modules - ranked)}"
    assert not sorted(ranked - modules), f"LAYERS names modules that do not exist: {sorted(ranked - modules)}"


def test_imports_go_only_downwards_type_only_imports_included():
    modules, rank = _modules(), _rank()
    wrong = []
    for name, path in modules.items():
        for raw in _imports(name, path):
            target = _canonical(raw, modules)
            if target is None or target == name:
                continue
            if rank[target] >= rank[name]:
                wrong.append(f"{name} {rank[name]} imports {target} {rank[target]}")
    assert not wrong, "imports against the layer order (folder, row):\n" + "\n".join(sorted(wrong))


def test_the_folders_are_the_package_and_docs_architecture_lists_them_in_order():
    folders = [folder for folder, _ in LAYERS if folder]
    on_disk = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert sorted(folders) == on_disk
    # the table in docs/architecture.md: one row per folder, `name/` in its first column, in this order
    listed = re.findall(r"^\|\s*`([a-z_]+)/`", ARCHITECTURE.read_text(encoding="utf-8"), flags=re.M)
    assert listed == folders, f"docs/architecture.md lists {listed}; LAYERS has {folders}"


def test_layer_checker_sees_relative_lazy_and_type_only_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nfrom .files.softprompt import SoftPrompt\nfrom .train import objectives\n"
        "if TYPE_CHECKING:\n    from .train.config import TrainConfig\n"
        "def f():\n    from .models.pipeline import load_pipeline\n    import sd_softprompt.cli\n"
    )
    found = {_canonical(n, _modules()) for n in _imports("m", source)} - {None}
    assert found == {
        "files.softprompt",
        "train.objectives",
        "train.__init__",
        "train.config",
        "models.pipeline",
        "cli.__init__",
    }
