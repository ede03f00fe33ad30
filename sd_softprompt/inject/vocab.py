"""The edits a soft prompt makes to a pipeline: added tokens in a tokenizer, added rows in its encoder's input
embedding table, and the pooled-output fix; with a snapshot of each encoder as it was, so that taking the
last soft token out restores it exactly."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ConfigError
from ..families import Encoder, tokenizer_of

_STATE_ATTR = "_sd_softprompt_state"


@dataclass
class _EncoderState:
    """What one tokenizer/encoder pair looked like before the first soft token went in."""

    tokenizer: object  # a deep copy, restored in place on unload
    rows: int  # embedding rows before loading
    saved_rows: dict[int, torch.Tensor] = field(default_factory=dict)  # spare rows we overwrote (T5 has some)
    eos_patches: list[tuple[nn.Module, int]] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)  # loaded tokens, in load order


def encoder_states(pipe) -> dict[str, _EncoderState]:
    if not hasattr(pipe, _STATE_ATTR):
        # object.__setattr__: diffusers pipelines treat attribute assignment as config registration.
        object.__setattr__(pipe, _STATE_ATTR, {})
    return getattr(pipe, _STATE_ATTR)


def loaded_tokens(pipe) -> list[str]:
    """The soft tokens currently loaded into `pipe`, in load order."""
    seen: dict[str, None] = {}
    for state in encoder_states(pipe).values():
        seen.update(dict.fromkeys(state.tokens))
    return list(seen)


def encoder_width(pipe, encoder: Encoder) -> int:
    return getattr(pipe, encoder.text_encoder).get_input_embeddings().weight.shape[1]


def embedding_table(pipe, encoder: Encoder) -> torch.Tensor:
    """The encoder's input embedding rows; ConfigError when they are not in memory (the meta device: sequential
    CPU offload keeps them elsewhere, or the model is not materialised yet), where an edit would have no effect."""
    weight = getattr(pipe, encoder.text_encoder).get_input_embeddings().weight
    if weight.is_meta:
        raise ConfigError(
            f"{encoder.text_encoder}: its input embeddings are not in memory (meta device: sequential CPU offload, "
            f"or a model not loaded yet); load soft prompts before pipe.enable_sequential_cpu_offload()"
        )
    return weight.data


def foreign_rows(pipe, encoder: Encoder, state: _EncoderState) -> tuple[list[str], torch.Tensor | None]:
    """Tokens another tool added since our first load (diffusers' load_textual_inversion), with their rows:
    rebuilding the table from our snapshot must put them back, not drop them."""
    tokenizer = tokenizer_of(pipe, encoder.tokenizer)
    before, ours = state.tokenizer.get_added_vocab(), set(state.tokens)
    added = sorted(tokenizer.get_added_vocab().items(), key=lambda item: item[1])
    theirs = [(token, i) for token, i in added if token not in before and token not in ours]
    if not theirs:
        return [], None
    weight = embedding_table(pipe, encoder)
    return [token for token, _ in theirs], weight[[i for _, i in theirs]].clone()


def put_back(pipe, encoder: Encoder, tokens: list[str], rows: torch.Tensor) -> None:
    """Re-add another tool's tokens and rows after a rebuild; they stay theirs (not recorded as soft tokens)."""
    tokenizer = tokenizer_of(pipe, encoder.tokenizer)
    text_encoder = getattr(pipe, encoder.text_encoder)
    tokenizer.add_tokens(tokens)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    weight = text_encoder.get_input_embeddings().weight.data
    if max(ids) >= weight.shape[0]:
        weight = torch.cat([weight, weight.new_zeros(max(ids) + 1 - weight.shape[0], weight.shape[1])])
    else:
        weight = weight.clone()
    weight[ids] = rows.to(device=weight.device, dtype=weight.dtype)
    _set_rows(text_encoder, weight)


def _patch_pooled_eos(text_encoder: nn.Module, eos_id: int) -> list[tuple[nn.Module, int]]:
    """Make CLIP take its pooled output at the first end-of-text token, not at argmax(input_ids).

    Real SD/SDXL text encoder configs carry the legacy eos_token_id = 2, with which transformers pools at the
    highest token id: an added soft token, whose id is above end-of-text. With the real id it pools at the
    first end-of-text position, which is right for both end-of-text and "!" padding.
    """
    patched = []
    for module in text_encoder.modules():
        if getattr(module, "eos_token_id", None) == 2 and eos_id != 2:
            patched.append((module, module.eos_token_id))
            module.eos_token_id = eos_id
    return patched


def _set_rows(text_encoder: nn.Module, weight: torch.Tensor) -> None:
    old = text_encoder.get_input_embeddings()
    # _weight: take the table as it is, without first filling a fresh one with random numbers.
    new = nn.Embedding(
        weight.shape[0],
        weight.shape[1],
        padding_idx=old.padding_idx,
        _weight=weight,
        _freeze=not old.weight.requires_grad,
    )
    text_encoder.set_input_embeddings(new)
    text_encoder.config.vocab_size = weight.shape[0]


def add_rows(pipe, encoder: Encoder, tokens: list[str], vectors: torch.Tensor) -> None:
    tokenizer = tokenizer_of(pipe, encoder.tokenizer)
    text_encoder = getattr(pipe, encoder.text_encoder)
    states = encoder_states(pipe)
    weight = embedding_table(pipe, encoder)
    if encoder.key not in states:
        states[encoder.key] = _EncoderState(tokenizer=copy.deepcopy(tokenizer), rows=weight.shape[0])
        if tokenizer.eos_token_id is not None:
            states[encoder.key].eos_patches = _patch_pooled_eos(text_encoder, tokenizer.eos_token_id)
    state = states[encoder.key]

    tokenizer.add_tokens(tokens)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    if max(ids) >= weight.shape[0]:
        weight = torch.cat([weight, weight.new_zeros(max(ids) + 1 - weight.shape[0], weight.shape[1])])
    else:
        weight = weight.clone()
    for i in ids:
        if i < state.rows and i not in state.saved_rows:
            state.saved_rows[i] = weight[i].clone()
    weight[ids] = vectors.to(device=weight.device, dtype=weight.dtype)
    _set_rows(text_encoder, weight)
    state.tokens += tokens


def restore_encoder(pipe, encoder: Encoder, state: _EncoderState) -> None:
    tokenizer = tokenizer_of(pipe, encoder.tokenizer)
    # In place, so that references the caller holds to the tokenizer see the restored one. The snapshot is
    # used up (its state is dropped after a reset), so its insides move over without another copy.
    tokenizer.__dict__.clear()
    tokenizer.__dict__.update(state.tokenizer.__dict__)
    # transformers' CLIPTokenizer patches its Rust backend's decode (to drop "</w>") in __init__; a copied
    # backend loses that patch, so apply it again.
    rewrap = getattr(tokenizer, "_wrap_decode_method_backend_tokenizer", None)
    if callable(rewrap):
        rewrap()
    text_encoder = getattr(pipe, encoder.text_encoder)
    weight = text_encoder.get_input_embeddings().weight.data[: state.rows].clone()
    for i, row in state.saved_rows.items():
        weight[i] = row
    _set_rows(text_encoder, weight)
    for module, value in state.eos_patches:
        module.eos_token_id = value


def token_ids(pipe, encoder: Encoder, tokens: list[str]) -> list[int]:
    """Ids of loaded soft tokens in one encoder's tokenizer."""
    return tokenizer_of(pipe, encoder.tokenizer).convert_tokens_to_ids(tokens)
