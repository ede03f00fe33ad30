"""What is in a soft prompt file and, given a pipeline, how its vectors sit among the vocabulary's.

`inspect_file` returns a plain dict (JSON-serialisable); `format_inspection` turns it into text.
Norms are compared with the encoder's input embedding rows of the original vocabulary (no added
tokens), and the nearest tokens are by cosine similarity over those same rows. Norms are computed in
float64, so a file of 1e38s reports its real norm (not inf) and is flagged.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..errors import ConfigError, printable
from ..families import Encoder, Family, detect_family, tokenizer_of
from ..files.keys import UNASSIGNED
from ..files.softprompt import SoftPrompt
from .loader import assign_encoders, loaded_tokens
from .vocab import embedding_table

_CHUNK = 8192  # vocabulary rows per matmul, so a 32k x 4096 T5 table is never copied whole to fp32
# A vector this many times the vocabulary's mean norm (or this fraction of it) is flagged: trained vectors sit
# within a few times the mean (docs/cli.md, inspect), a prompt word near 1x.
FAR_OUTSIDE = 10.0


def inspect_file(
    source: str | os.PathLike | SoftPrompt, pipe=None, top_k: int = 5, family: Family | None = None
) -> dict[str, Any]:
    """Describe a soft prompt (a file, or one already read); with ``pipe``, add vocabulary norm stats and
    nearest tokens. ``family``: the pipeline's, when the caller has it already (else detected)."""
    if top_k < 0:
        raise ConfigError(f"--top-k {top_k}: give 0 (no nearest tokens) or more")
    soft = source if isinstance(source, SoftPrompt) else SoftPrompt.load(source)
    path = soft.origin or soft.name if isinstance(source, SoftPrompt) else str(source)
    report: dict[str, Any] = {
        "file": path,
        "format": soft.source_format,
        "family": soft.family,
        "name": soft.name,
        "num_vectors": soft.num_vectors,
        "tokens": list(soft.tokens),
        "metadata": dict(soft.metadata),
        "notes": list(soft.notes),
        "encoders": [],
    }
    if pipe is None:
        report["encoders"] = [_vector_entry(key, vectors) for key, vectors in soft.vectors.items()]
        return report
    family = family or detect_family(pipe)
    report["model"] = {"pipeline": type(pipe).__name__, "family": family.name}
    for encoder, vectors in assign_encoders(pipe, family, soft, path):
        entry = _vector_entry(encoder.key, vectors)
        entry["text_encoder"] = encoder.text_encoder
        entry.update(_against_vocabulary(pipe, encoder, vectors, top_k))
        entry["flags"] += _norm_flags(entry["norm_ratio"], soft.tokens)
        report["encoders"].append(entry)
    return report


def _vector_entry(key: str, vectors: torch.Tensor) -> dict[str, Any]:
    return {
        "key": key,
        "shape": list(vectors.shape),
        "dtype": str(vectors.dtype).replace("torch.", ""),
        "norms": [_round(float(n)) for n in vectors.double().norm(dim=1)],
        "flags": _range_flags(vectors),
    }


def _round(value: float) -> float:
    return float(f"{value:.7g}")  # 7 significant digits: 0.1234567 and 1.234567e+38 alike


def _range_flags(vectors: torch.Tensor) -> list[str]:
    """Half-precision dtypes that cannot hold these values (a pipeline in that dtype refuses the file)."""
    biggest = float(vectors.double().abs().max())
    beyond = [name for name, dtype in _HALF.items() if biggest > torch.finfo(dtype).max]
    if not beyond:
        return []
    return [f"values up to {biggest:.3g} do not fit {' or '.join(beyond)}: a pipeline in that dtype refuses this file"]


_HALF = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def _norm_flags(ratios: list[float | None], tokens: list[str]) -> list[str]:
    flags = []
    for token, ratio in zip(tokens, ratios):
        if ratio is not None and not 1 / FAR_OUTSIDE <= ratio <= FAR_OUTSIDE:
            flags.append(
                f"{token}: norm {ratio:.3g}x the vocabulary's mean, far outside it "
                f"({'it will drown the rest of the prompt' if ratio > 1 else 'it will barely register'})"
            )
    return flags


def _vocabulary_ids(pipe, encoder: Encoder, rows: int) -> torch.Tensor:
    """Row ids of the original vocabulary: no added tokens, no spare (untrained) rows past it."""
    tokenizer = tokenizer_of(pipe, encoder.tokenizer)
    ids = torch.arange(min(tokenizer.vocab_size, rows))
    soft = loaded_tokens(pipe)
    if soft:
        # Soft tokens may sit in spare rows inside the table (T5 has some); they are not vocabulary.
        soft_ids = torch.tensor([i for i in tokenizer.convert_tokens_to_ids(soft) if i is not None])
        ids = ids[~torch.isin(ids, soft_ids)]
    return ids


def _against_vocabulary(pipe, encoder: Encoder, vectors: torch.Tensor, top_k: int) -> dict[str, Any]:
    table = embedding_table(pipe, encoder).detach()  # meta (sequential offload): one line, not a meta matmul
    ids = _vocabulary_ids(pipe, encoder, table.shape[0]).to(table.device)
    # Normalised in float64: a float32 norm of huge values is inf, which would zero every cosine.
    queries = torch.nn.functional.normalize(vectors.to(table.device).double(), dim=1).float()
    norms, cosines = [], []
    for chunk in ids.split(_CHUNK):
        rows = table[chunk].float()
        norms.append(rows.double().norm(dim=1))
        cosines.append(queries @ torch.nn.functional.normalize(rows, dim=1).T)
    norms_all, cos_all = torch.cat(norms), torch.cat(cosines, dim=1)
    mean = float(norms_all.mean())
    k = min(top_k, len(ids))
    best = cos_all.topk(k, dim=1) if k > 0 else None
    tokenizer = tokenizer_of(pipe, encoder.tokenizer)
    nearest = []
    for row in range(vectors.shape[0]):
        if best is None:
            nearest.append([])
            continue
        picked = ids[best.indices[row]].tolist()
        nearest.append(
            [
                {"token": readable_token(tokenizer, i), "id": i, "cosine": round(float(c), 4)}
                for i, c in zip(picked, best.values[row])
            ]
        )
    own_norms = vectors.double().norm(dim=1)
    return {
        "vocab": {
            "rows": len(ids),
            "mean": round(mean, 6),
            "median": round(float(norms_all.median()), 6),
            "std": round(float(norms_all.std()), 6),
            "min": round(float(norms_all.min()), 6),
            "max": round(float(norms_all.max()), 6),
        },
        "norm_ratio": [_round(float(n) / mean) if mean else None for n in own_norms],
        "nearest": nearest,
    }


def readable_token(tokenizer, token_id: int) -> str:
    """A vocabulary entry as a person reads it: no '</w>' word-end mark, no '▁' word-start mark."""
    text = tokenizer.decode([token_id]).strip()
    if text and text.isprintable() and "\ufffd" not in text:
        return text
    # Byte-level pieces of a multi-byte character decode to U+FFFD, control bytes to nothing visible:
    # show the raw piece instead.
    raw = tokenizer.convert_ids_to_tokens(token_id) or ""
    cleaned = raw.replace("</w>", "").replace("▁", " ").strip()
    return cleaned if cleaned and cleaned.isprintable() else repr(raw)


def format_inspection(report: dict[str, Any]) -> str:
    """The report as text for a terminal. What the file supplies (names, tokens, metadata, notes) is data from
    strangers: control characters are escaped and each value capped (`printable`), so no file can paint the
    terminal or forge a line."""
    lines = [printable(report["file"], 400)]
    field = lambda label, value: lines.append(f"  {label:<9} {value}")  # noqa: E731
    field("format", printable(report["format"]))
    field("family", printable(report["family"]) if report["family"] else "unknown (set by width when loaded)")
    field("vectors", f"{report['num_vectors']} per encoder; tokens {' '.join(map(printable, report['tokens']))}")
    meta = {k: v for k, v in report["metadata"].items() if k != "format"}
    for i, (key, value) in enumerate(sorted(meta.items())):
        field("metadata" if i == 0 else "", f"{printable(key, 60)} = {_short(value)}")
    for note in report["notes"]:
        field("note", printable(note, 300))
    if "model" in report:
        field("model", f"{report['model']['pipeline']} ({report['model']['family']})")
    for entry in report["encoders"]:
        lines += [""] + _format_encoder(entry, [printable(t) for t in report["tokens"]])
    return "\n".join(lines)


def _format_encoder(entry: dict[str, Any], tokens: list[str]) -> list[str]:
    key = "width-matched encoder" if entry["key"] == UNASSIGNED else entry["key"]
    where = f" -> {entry['text_encoder']}" if "text_encoder" in entry else ""
    n, width = entry["shape"]
    lines = [f"{key}{where}: {n} x {width} ({entry['dtype']})"]
    vocab = entry.get("vocab")
    if vocab:
        lines.append(
            f"  vocabulary norms over {vocab['rows']} rows: mean {vocab['mean']:.4g}, median {vocab['median']:.4g}, "
            f"std {vocab['std']:.4g} (min {vocab['min']:.4g}, max {vocab['max']:.4g})"
        )
    pad = max(len(t) for t in tokens) if tokens else 0
    for flag in entry.get("flags", []):
        lines.append(f"  warning: {flag}")
    for i, norm in enumerate(entry["norms"]):
        text = f"  {tokens[i]:<{pad}}  norm {norm:.4g}"
        if vocab:
            ratio = entry["norm_ratio"][i]
            text += f" ({ratio:.3g}x vocab mean)" if ratio is not None else ""
            near = ", ".join(f"{t['token']} {t['cosine']:.2f}" for t in entry["nearest"][i])
            text += f"  nearest: {near}" if near else ""
        lines.append(text)
    return lines


def _short(value: Any, limit: int = 60) -> str:
    return printable(str(value).replace("\n", " "), limit)
