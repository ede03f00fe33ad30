"""Soft prompts bundled inside a LoRA file: ``bundle_emb.<NAME>.<KEY>`` tensors beside the LoRA's own.

What the tools do (their source, November 2026):
- OneTrainer writes ``bundle_emb.<placeholder>.clip_l`` (SD 1.x/2.x), ``.clip_l`` + ``.clip_g`` (SDXL),
  ``.clip_l`` + ``.t5`` (Flux, SD3), each with optional ``<key>_out`` output-embedding vectors.
- A1111 (extensions-builtin/Lora/networks.py) and Forge collect ``bundle_emb.<NAME>.<rest>`` into one dict
  per NAME (``string_to_param.<k>`` becomes ``{"string_to_param": {k: tensor}}``) and read it like an
  embedding file: A1111's ``.pt`` layout, a clip_l + clip_g pair, or a dict holding a single tensor (so
  OneTrainer's SD1 ``clip_l`` + ``clip_l_out`` pair is skipped there).
- ComfyUI's ``load_embed`` (comfy/sd1_clip.py), given the LoRA file as an embedding, joins every
  ``bundle_emb.*.<key>`` for the key its tokenizer asks for (``clip_l``, ``clip_g``, ``t5xxl``, ...): it reads
  the CLIP vectors, not OneTrainer's ``t5`` (scripts/check_clients.py). diffusers' ``load_lora_weights`` reads none.

Each NAME's dict goes through the same layout readers as an embedding file. Written bundles use OneTrainer's
keys (``clip_l``/``clip_g``/``t5``; SD 2.x ``clip_h``), which A1111/Forge read too, and record the soft
prompt's metadata in the header under ``sd_softprompt.bundle_emb.<NAME>``. The LoRA's tensors and header
are copied as they are, byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from ..errors import FormatError, SoftPromptError
from .atomic import atomic_write, bytes_writer
from .keys import Storable
from .readers import Decoded, decode_content
from .safe_read import first_line, sniff

PREFIX = "bundle_emb."
HEADER_PREFIX = "sd_softprompt.bundle_emb."  # + NAME: JSON of the soft prompt's metadata and tokens
_WRITE_KEYS = {"t5xxl": "t5"}  # OneTrainer's name for the T5 vectors; the other encoder keys as they are


def _keys(path: Path) -> list[str] | None:
    """The tensor names of a safetensors file, from its header alone; None for anything else."""
    try:
        if sniff(path) != "safetensors":
            return None
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return list(handle.keys())
    except Exception:  # unreadable or not safetensors: the ordinary reader gives the message
        return None


def bundle_names(path: Path) -> list[str]:
    """Names of the embeddings bundled in a LoRA file, in file order; [] when it has none."""
    names: dict[str, None] = {}
    for key in _keys(Path(path)) or []:
        if key.startswith(PREFIX) and key.count(".") >= 2:
            names.setdefault(key.split(".", 2)[1], None)
    return list(names)


def looks_like_lora(path: Path) -> bool:
    """A safetensors file with LoRA weight names (diffusers/peft, kohya, OneTrainer) and no bundle."""
    keys = _keys(Path(path)) or []
    # diffusers' own test for a LoRA key is "lora" in the name; an embedding file has no such keys (a
    # diffusers embedding's one key is its token, which may say anything, hence more than one key)
    return len(keys) > 1 and any("lora" in key.lower() for key in keys) and not bundle_names(path)


def read_bundle(path: Path) -> dict[str, tuple[Decoded, dict[str, str]]]:
    """NAME -> (what the layout readers make of its tensors, the metadata this package recorded for it)."""
    path = Path(path)
    grouped: dict[str, dict] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            header = dict(handle.metadata() or {})
            for key in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
                if not key.startswith(PREFIX) or key.count(".") < 2:
                    continue
                _, name, rest = key.split(".", 2)
                entry = grouped.setdefault(name, {})
                if rest.startswith("string_to_param."):  # A1111's .pt layout, flattened as A1111 reads it
                    entry.setdefault("string_to_param", {})[rest.split(".", 1)[1]] = handle.get_tensor(key)
                else:
                    entry[rest] = handle.get_tensor(key)
    except Exception as error:  # the Rust reader raises its own types for truncated/corrupt files
        raise FormatError(f"{path}: unreadable safetensors file ({first_line(error)}); re-export it") from None
    out = {}
    for name, content in grouped.items():
        decoded = decode_content(content, {}, f"{path} (bundled embedding {name!r})")
        decoded.source_format = f"lora-bundle/{decoded.source_format}"
        out[name] = (decoded, _recorded(header, name))
    return out


def _recorded(header: dict[str, str], name: str) -> dict[str, str]:
    raw = header.get(HEADER_PREFIX + name)
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def bundle_tokens(name: str, n: int) -> list[str]:
    """``NAME, NAME_1, ..., NAME_{N-1}``: diffusers' multi-vector names, so that the pipeline's own
    ``maybe_convert_prompt`` expands ``NAME`` in a prompt to all N tokens, the way A1111 reads the name."""
    return [name] + [f"{name}_{i}" for i in range(1, n)]


def write_bundle(prompt: Storable, lora: Path, out: Path, name: str) -> Path:
    """A copy of the LoRA file at ``out`` with ``prompt`` added as ``bundle_emb.<name>.*``; atomic."""
    lora, out = Path(lora), Path(out)
    if not lora.is_file():
        raise FormatError(f"{lora}: no such file; --lora takes the LoRA .safetensors file to add the soft prompt to")
    if sniff(lora) != "safetensors":
        raise FormatError(f"{lora}: not a safetensors file; bundles are written into .safetensors LoRA files only")
    out = out if out.suffix else out.with_suffix(".safetensors")
    if out.suffix != ".safetensors":  # ComfyUI and InvokeAI pick the reader by the extension
        raise SoftPromptError(f"{out}: a LoRA bundle is written as safetensors; name it {out.stem}.safetensors")
    if not name or "." in name:
        raise SoftPromptError(f"bundle name {name!r}: give a name without dots (it becomes bundle_emb.<name>.<key>)")
    if name in bundle_names(lora):
        raise SoftPromptError(f"{lora}: already holds a bundled embedding {name!r}; give this one another name")
    try:
        with safe_open(str(lora), framework="pt", device="cpu") as handle:
            header = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as error:
        raise FormatError(f"{lora}: unreadable safetensors file ({first_line(error)}); re-export it") from None
    for key, vectors in prompt.vectors.items():
        tensors[f"{PREFIX}{name}.{_WRITE_KEYS.get(key, key)}"] = vectors.detach().to("cpu").clone()  # own storage
    recorded = {k: str(v) for k, v in prompt.metadata.items()} | {"tokens": json.dumps(prompt.tokens)}
    if prompt.family:
        recorded.setdefault("family", prompt.family)
    header[HEADER_PREFIX + name] = json.dumps(recorded)
    # In memory first (the LoRA is in memory already): a full disk is then an OSError -> WriteError naming `out`,
    # not safetensors' own error type.
    return atomic_write([(out, bytes_writer(safetensors_bytes(tensors, metadata=header)))])[0]


def lora_weights(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors without the bundled embeddings: what ``pipe.load_lora_weights`` should get for
    LoRA formats whose converters refuse keys they do not know."""
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys() if not key.startswith(PREFIX)}  # noqa: SIM118
