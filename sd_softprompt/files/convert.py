"""The public file operations beyond one soft prompt: every soft prompt a path holds, conversion between
formats, and bundling into a LoRA file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import FormatError, SoftPromptError
from .bundles import bundle_names, write_bundle
from .keys import PathLike
from .softprompt import SoftPrompt, check_source, load_bundle

__all__ = ["bundle_into_lora", "convert", "load_all"]


def convert(
    src: PathLike | Sequence[PathLike],
    to: str,
    out: PathLike,
    *,
    lora: PathLike | None = None,
    embedding: str | None = None,
) -> list[Path]:
    """Load ``src`` in whatever layout it has and save it as format ``to`` at ``out``.

    ``to="bundle"``: a copy of the LoRA file ``lora`` with the soft prompt added (named ``embedding``, default
    its own name). A LoRA file as ``src``: ``embedding`` picks one of its bundled embeddings.

    Example:

    ```py
    from sd_softprompt.files.convert import convert

    convert("sunrise.safetensors", to="a1111", out="sunrise.pt")  # an A1111 / Forge embedding
    convert(["learned_embeds.safetensors", "learned_embeds_2.safetensors"], to="native", out="sunrise.safetensors")
    convert("sunrise.safetensors", to="bundle", lora="style.safetensors", out="style_sunrise.safetensors")
    ```
    """
    check_source(src)
    if embedding is not None and not isinstance(src, (list, tuple)) and bundle_names(Path(src)):
        bundled = load_bundle(src)
        if embedding not in bundled:
            raise FormatError(f"{src}: no bundled embedding {embedding!r}; it holds {', '.join(bundled)}")
        soft = bundled[embedding]
    else:
        soft = SoftPrompt.load(src)
    if to == "bundle":
        if lora is None:
            raise SoftPromptError("--to bundle needs --lora LORA.safetensors: the LoRA file to add the soft prompt to")
        return [bundle_into_lora(soft, lora, out, name=embedding)]
    return soft.save(out, format=to)


def bundle_into_lora(soft: SoftPrompt, lora: PathLike, out: PathLike, name: str | None = None) -> Path:
    """Write a copy of the LoRA file ``lora`` at ``out`` with ``soft`` bundled as ``bundle_emb.<name>.*``
    (default name: the soft prompt's); the LoRA's tensors and header are copied byte for byte."""
    soft.validate(soft.origin or "<memory>")
    return write_bundle(soft, Path(lora), Path(out), name or soft.name)


def load_all(path: PathLike | Sequence[PathLike]) -> list[SoftPrompt]:
    """The soft prompts a path holds: every embedding of a LoRA bundle, else the one `SoftPrompt.load` reads."""
    check_source(path)
    if not isinstance(path, (list, tuple)) and Path(path).is_file() and bundle_names(Path(path)):
        return list(load_bundle(path).values())
    return [SoftPrompt.load(path)]
