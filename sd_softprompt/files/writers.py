"""Writing: format -> layout -> writer; every file goes through atomic_write.

A format holds the layouts it has a writer for; asking for another gets a refusal naming the formats that can.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes

from ..errors import SoftPromptError, shorten
from ..families import FAMILIES, Family
from .atomic import atomic_write, bytes_writer, torch_bytes
from .keys import DIFFUSERS_FILE, ENCODER_KEYS, FORMAT_VERSION, FORMATS, UNASSIGNED, Storable

_Writer = Callable[["Storable", Path], list[Path]]


def _families(prompt: Storable) -> list[Family]:
    """The families this soft prompt can be for: its own (metadata, or keys that are exactly one family's),
    else every family that has all its encoders (a t5xxl-only file: Flux and SD3)."""
    keys = set(prompt.vectors)
    if not prompt.family:
        return [f for f in FAMILIES.values() if keys <= set(f.keys)]
    family = FAMILIES.get(prompt.family)
    if family is None:
        raise SoftPromptError(
            f"unknown family {shorten(repr(prompt.family), 40)} in the metadata; "
            f"set metadata['family'] to one of {', '.join(FAMILIES)}"
        )
    if not keys <= set(family.keys):
        raise SoftPromptError(
            f"a {family.name} soft prompt holds {' + '.join(family.keys)}, this one holds "
            f"{' + '.join(sorted(keys))}; fix metadata['family'] or the encoder keys"
        )
    return [family]


def _layout(prompt: Storable, format_name: str) -> str:
    """'single' (one encoder's tensor, the encoder unnamed) or 'multi' (tensors keyed by encoder); refuses a
    format whose tools do not read this soft prompt's family, naming those that do."""
    if UNASSIGNED in prompt.vectors:
        return "single"  # single-tensor layouts do not name the encoder
    families = _families(prompt)
    keys = " + ".join(sorted(prompt.vectors))
    if not families:
        raise SoftPromptError(f"no model family has encoders {keys}; fix the encoder keys, or save as native")
    able = [name for name in FORMATS if all(name in (f.formats or FORMATS) for f in families)]
    if format_name not in able:
        which = "/".join(f.name for f in families)
        hint = f" (or set metadata['family'] to one of {which})" if len(families) > 1 else ""
        raise SoftPromptError(
            f"{format_name} cannot hold a {which} soft prompt ({keys}); formats that can: {', '.join(able)}{hint}"
        )
    return "multi" if any(len(f.encoders) > 1 for f in families) else "single"


def _header(prompt: Storable, format_tag: str) -> dict[str, str]:
    """safetensors header: the user's metadata plus what a reload needs (name, tokens)."""
    header = {str(key): str(value) for key, value in prompt.metadata.items()}
    header.update(format=format_tag, name=prompt.name, tokens=json.dumps(prompt.tokens))
    if prompt.family:
        header.setdefault("family", prompt.family)
    return header


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu").contiguous()


def _safe_stem(name: str) -> str:
    # File names come from user-chosen names; keep them to characters every filesystem accepts.
    stem = "".join(ch if ch.isalnum() or ch in "._- " else "_" for ch in name).strip(" .")
    return stem or "softprompt"


PICKLE_SUFFIXES = (".pt", ".bin")  # what A1111, ComfyUI and InvokeAI open with torch.load


def _file_target(path: Path, prompt: Storable, suffix: str, also: tuple[str, ...] = (), hint: str = "") -> Path:
    """An existing folder gets ``<name><suffix>`` inside it; a bare name gets the suffix; a named file must end
    in ``suffix`` (or one of ``also``): ComfyUI and InvokeAI pick the reader by the extension, so a file's
    extension must say what it holds."""
    if path.is_dir():
        return path / f"{_safe_stem(prompt.name)}{suffix}"
    if not path.suffix:
        return path.with_suffix(suffix)
    if path.suffix in (suffix, *also):
        return path
    kind, other = ("safetensors", "a pickle") if suffix == ".safetensors" else ("a pickle", "safetensors")
    raise SoftPromptError(
        f"{path}: this format is written as {kind}, and ComfyUI and InvokeAI would read a {path.suffix} file as "
        f"{other}; name it {path.with_suffix(suffix).name}{hint}"
    )


def _safetensors_job(target: Path, tensors: dict[str, torch.Tensor], header: dict[str, str]):
    # Serialised in memory: a full disk then raises Python's OSError, not safetensors' own error type.
    tensors = {key: _cpu(tensor) for key, tensor in tensors.items()}
    return target, bytes_writer(safetensors_bytes(tensors, metadata=header))


def _only(prompt: Storable) -> torch.Tensor:
    return next(iter(prompt.vectors.values()))


# ---- one writer per format (and layout) -----------------------------------------------------


def _write_native(prompt: Storable, path: Path) -> list[Path]:
    if UNASSIGNED in prompt.vectors:
        raise SoftPromptError(
            f"{path}: the encoder of these vectors is not known yet ({UNASSIGNED!r}); load it into a "
            f"pipeline first (it picks the encoder by width) or key it by one of {', '.join(ENCODER_KEYS)}"
        )
    target = _file_target(path, prompt, ".safetensors")
    return atomic_write([_safetensors_job(target, prompt.vectors, _header(prompt, FORMAT_VERSION))])


def _diffusers_target(path: Path, second: bool = False) -> Path:
    """diffusers' convention: a folder (or bare name) holds learned_embeds[_2].safetensors."""
    suffix = "_2" if second else ""
    if path.is_dir() or not path.suffix:
        return path / f"{DIFFUSERS_FILE}{suffix}.safetensors"
    if path.suffix != ".safetensors":  # diffusers reads a .bin with torch.load
        raise SoftPromptError(
            f"{path}: diffusers files are written as safetensors; name it {path.with_suffix('.safetensors').name} "
            "or give a folder"
        )
    return path.with_name(f"{path.stem}{suffix}{path.suffix}")


def _diffusers_token(prompt: Storable) -> str:
    return f"<{prompt.name}>"


def _write_diffusers_single(prompt: Storable, path: Path) -> list[Path]:
    tensors = {_diffusers_token(prompt): _only(prompt)}
    return atomic_write([_safetensors_job(_diffusers_target(path), tensors, _header(prompt, "pt"))])


def _write_diffusers_pair(prompt: Storable, path: Path) -> list[Path]:
    # diffusers' SDXL script: one file per text encoder, same token in both.
    token, header = _diffusers_token(prompt), _header(prompt, "pt")
    return atomic_write(
        [
            _safetensors_job(_diffusers_target(path), {token: prompt.vectors["clip_l"]}, header),
            _safetensors_job(_diffusers_target(path, second=True), {token: prompt.vectors["clip_g"]}, header),
        ]
    )


def _keyed_writer(
    file_keys: dict[str, str], target: Callable[[Path, Storable], Path], pickle_too: bool = False
) -> _Writer:
    """Writer for one safetensors file whose keys are the encoders, renamed by ``file_keys``; ``pickle_too``: a
    .pt/.bin name gets the same dict as a pickle (A1111 reads its SDXL embeddings either way)."""

    def write(prompt: Storable, path: Path) -> list[Path]:
        tensors = {file_keys.get(key, key): tensor for key, tensor in prompt.vectors.items()}
        if pickle_too and not path.is_dir() and path.suffix in PICKLE_SUFFIXES:
            # Tensors only (A1111's SDXL reader calls .detach() on every value): torch.load(weights_only=True) reads it.
            data = {key: _cpu(tensor) for key, tensor in tensors.items()}
            return atomic_write([(path, bytes_writer(torch_bytes(data)))])
        return atomic_write([_safetensors_job(target(path, prompt), tensors, _header(prompt, "pt"))])

    return write


def _single_key_writer(file_key: str) -> _Writer:
    """Writer for a one-tensor safetensors layout under a fixed key (kohya, OneTrainer SD1/2)."""

    def write(prompt: Storable, path: Path) -> list[Path]:
        target = _file_target(path, prompt, ".safetensors", hint=" (for a .pt, convert --to a1111)")
        return atomic_write([_safetensors_job(target, {file_key: _only(prompt)}, _header(prompt, "pt"))])

    return write


def _write_a1111_pt(prompt: Storable, path: Path) -> list[Path]:
    # Only dicts, tensors, str, int and None: readable with torch.load(weights_only=True).
    data = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": _cpu(_only(prompt))},
        "name": prompt.name,
        "step": _int_or_zero(prompt.metadata.get("steps")),
        "sd_checkpoint": prompt.metadata.get("base_model_hash"),
        "sd_checkpoint_name": prompt.metadata.get("base_model"),
    }
    target = _file_target(path, prompt, ".pt", also=PICKLE_SUFFIXES, hint=" (for a .safetensors, convert --to kohya)")
    return atomic_write([(target, bytes_writer(torch_bytes(data)))])


def _int_or_zero(value: str | None) -> int:
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0


def _in_file(path: Path, prompt: Storable) -> Path:
    return _file_target(path, prompt, ".safetensors")


def _in_diffusers_file(path: Path, prompt: Storable) -> Path:
    return _diffusers_target(path)


_SAME_KEYS: dict[str, str] = {}
_T5_AS_T5 = {"t5xxl": "t5"}  # diffusers' Flux script and OneTrainer call the T5 vectors "t5"


def _write_diffusers_multi(prompt: Storable, path: Path) -> list[Path]:
    # diffusers' SDXL script writes one file per CLIP encoder; its Flux script one keyed file, T5 as "t5".
    if set(prompt.vectors) == {"clip_l", "clip_g"}:
        return _write_diffusers_pair(prompt, path)
    return _keyed_writer(_T5_AS_T5, _in_diffusers_file)(prompt, path)


def _write_onetrainer_single(prompt: Storable, path: Path) -> list[Path]:
    # OneTrainer keys a one-encoder embedding "emp_params" (sic) for SD 1.x/2.x, "t5" for its T5-only models
    if set(prompt.vectors) == {"t5xxl"}:
        return _keyed_writer(_T5_AS_T5, _in_file)(prompt, path)
    return _single_key_writer("emp_params")(prompt, path)


# Which families a format may hold is the family table's `formats`; here only how each format lays them out.
_LAYOUT_WRITERS: dict[str, dict[str, _Writer]] = {
    "diffusers": {"single": _write_diffusers_single, "multi": _write_diffusers_multi},
    "a1111": {"single": _write_a1111_pt, "multi": _keyed_writer(_SAME_KEYS, _in_file, pickle_too=True)},
    "kohya": {"single": _single_key_writer("emb_params"), "multi": _keyed_writer(_SAME_KEYS, _in_file)},
    "onetrainer": {
        "single": lambda prompt, path: _write_onetrainer_single(prompt, path),
        "multi": _keyed_writer(_T5_AS_T5, _in_file),
    },
    # InvokeAI's installer reads a single tensor's width from shape[0] unless the file says string_to_param,
    # emb_params or clip_g: kohya's layout (one safetensors file) is the one its installer and loader both take.
    "invokeai": {"single": _single_key_writer("emb_params"), "multi": _keyed_writer(_SAME_KEYS, _in_file)},
}


def _write_comfyui(prompt: Storable, path: Path) -> list[Path]:
    # ComfyUI's tokenizers ask a file for clip_l, clip_g, t5xxl (and gemma2_2b): the native keys. Unlike
    # native, refused for a family ComfyUI does not run.
    _layout(prompt, "comfyui")
    return _write_native(prompt, path)


def _by_layout(format_name: str) -> _Writer:
    """Dispatch to the format's writer for this soft prompt's layout (or a refusal naming who can hold it)."""
    table = _LAYOUT_WRITERS[format_name]

    def write(prompt: Storable, path: Path) -> list[Path]:
        return table[_layout(prompt, format_name)](prompt, path)

    return write


WRITERS: dict[str, _Writer] = {
    "native": _write_native,
    **{name: _by_layout(name) for name in _LAYOUT_WRITERS},
    "comfyui": _write_comfyui,
}
WRITERS = {name: WRITERS[name] for name in FORMATS}  # in FORMATS' order
