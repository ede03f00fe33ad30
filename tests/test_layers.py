"""The package's imports are layered: a module imports only modules of lower layers (so there is no cycle).

Every import counts, module-level and inside functions; only `if TYPE_CHECKING:` blocks (annotations) are
left out. A new module gets a place in LAYERS; an import that breaks the order fails here, naming it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import sd_softprompt

# Lowest first. Each module may import only modules of earlier rows.
LAYERS: list[set[str]] = [
    {"errors"},
    {"atomic", "grid", "tiny_text"},  # atomic raises WriteError; tiny_text: the tiny tokenizers and text configs
    {"__init__"},  # the package facade: errors eagerly, the rest lazily through importlib
    {"encoding"},  # prompt encoding as the pipelines (and A1111 / ComfyUI for long prompts) do it
    {"families", "scoring"},  # family table; image scorers
    {"keys", "tiny", "toyworld.world"},  # file vocabulary (built from the family table); tiny pipelines
    {"safe_read", "toyworld.judge", "toyworld.model", "toyworld.__init__"},
    {"readers", "writers", "vocab", "token_checks"},  # vocab, token_checks: a pipeline's tables, token rules
    {"bundles"},  # LoRA files with bundle_emb.* soft prompts (uses the readers)
    {"format"},  # SoftPrompt and load/save/convert
    {"loader", "pipeline", "images", "mixing"},  # mixing: sums, concatenation, strength of SoftPrompts
    {"inspection", "generate", "measure"},
    {"objectives", "toyworld.fidelity"},
    {"config"},
    {"checkpoints"},
    {"rows"},
    {"steps"},  # one optimizer step; the losses read back every few steps
    {"train"},
    {"demo"},
    {"cli_parser"},  # the flags and help
    {"cli"},
]
PACKAGE = Path(sd_softprompt.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("")
        out[".".join(rel.parts)] = path
    return out


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(name: str, path: Path) -> set[str]:
    """The package modules `name` imports (relative or absolute), outside TYPE_CHECKING blocks."""
    package = name.split(".")[:-1]  # "toyworld.model" and "toyworld.__init__" both live in toyworld
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _is_type_checking(node):
            return
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.split(".")[0] == "sd_softprompt":
                target = node.module.split(".")[1:]
            else:
                target = None
            if target is not None:
                # `from . import x` / `from .pkg import mod`: a submodule if one has that name
                for alias in node.names:
                    found.add(".".join([*target, alias.name]) if target or alias.name != "*" else "")
                found.add(".".join(target))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "sd_softprompt":
                    found.add(".".join(parts[1:]))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def _canonical(name: str, modules: dict[str, Path]) -> str | None:
    if name in ("", "."):
        return "__init__"
    if name in modules:
        return name
    if f"{name}.__init__" in modules:
        return f"{name}.__init__"
    return None  # a name imported from a module, not a module


def test_every_module_has_a_layer():
    ranked = set().union(*LAYERS)
    missing = sorted(set(_modules()) - ranked)
    assert not missing, f"give these modules a row in LAYERS (tests/test_layers.py): {missing}"


def test_imports_go_only_downwards():
    modules = _modules()
    rank = {m: i for i, layer in enumerate(LAYERS) for m in layer}
    wrong = []
    for name, path in modules.items():
        for raw in _imports(name, path):
            target = _canonical(raw, modules)
            if target is None or target == name:
                continue
            if rank.get(target, -1) >= rank.get(name, len(LAYERS)):
                wrong.append(f"{name} (row {rank.get(name)}) imports {target} (row {rank.get(target)})")
    assert not wrong, "imports against the layer order:\n" + "\n".join(sorted(wrong))


def test_layer_checker_sees_relative_and_lazy_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nfrom .format import SoftPrompt\nfrom . import objectives\n"
        "if TYPE_CHECKING:\n    from .config import TrainConfig\n"
        "def f():\n    from .pipeline import load_pipeline\n    import sd_softprompt.train\n"
    )
    found = {_canonical(n, _modules()) for n in _imports("m", source)} - {None}
    assert found == {"format", "objectives", "pipeline", "train", "__init__"}
