"""Load soft prompts into a diffusers pipeline's tokenizer(s) and text encoder(s), and take them out again.

Each vector becomes one added token in the tokenizer and one row in the matching encoder's input
embedding table, so `pipe("[v1][v2][v3] mountain view")` works with the pipeline's own prompt encoding.
What was there before the first load is remembered, so unloading restores the tokenizer and the table
exactly, and nothing in the pipeline is touched when a load is refused.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from dataclasses import replace as replace_

import torch

from ..errors import ConfigError, SourceError, TokenCollisionError, WidthMismatchError, listed, shorten
from ..families import Encoder, Family, detect_family, tokenizer_of
from ..files.convert import load_all
from ..files.keys import UNASSIGNED
from ..files.softprompt import SoftPrompt, check_source
from .token_checks import (
    check_fits_dtype,
    check_lowercase,
    check_shadowing,
    check_token_names,
    present_tokens,
    shadowed_word,
)
from .vocab import (
    add_rows,
    embedding_table,
    encoder_states,
    encoder_width,
    foreign_rows,
    loaded_tokens,
    put_back,
    restore_encoder,
    token_ids,
)

# Re-exported: the loader is where callers look for these.
__all__ = [
    "LoadedSoftPrompt",
    "assign_encoders",
    "check_token_names",
    "encoder_width",
    "load_soft_prompt",
    "load_soft_prompts",
    "loaded_soft_prompts",
    "loaded_tokens",
    "prompt_overflow",
    "shadowed_word",
    "token_ids",
    "unload_soft_prompt",
]


def assign_encoders(
    pipe, family: Family, soft: SoftPrompt, source: str = "soft prompt"
) -> list[tuple[Encoder, torch.Tensor]]:
    """Match each of the soft prompt's tensors to one of the pipeline's encoders, checking widths.

    A single-tensor file (diffusers, A1111, kohya...) does not say which encoder it is for: it goes to the
    encoder of the same width.
    """
    widths = {e.key: encoder_width(pipe, e) for e in family.encoders}
    described = ", ".join(f"{e.key} ({e.text_encoder}) {widths[e.key]}" for e in family.encoders)
    pairs = []
    for key, vectors in soft.vectors.items():
        width = vectors.shape[-1]
        if key == UNASSIGNED or (len(soft.vectors) == 1 and key not in widths):
            match = [e for e in family.encoders if widths[e.key] == width]
            if not match:
                raise WidthMismatchError(
                    f"{source}: its vectors are {width} wide but the {family.name} pipeline's encoders are "
                    f"{described}; the file was probably trained for another model family"
                )
            pairs.append((match[0], vectors))
        elif key not in widths:
            raise WidthMismatchError(
                f"{source}: it has vectors for {key}, which a {family.name} pipeline does not have "
                f"(its encoders: {described}); the file was trained for another model family ({shorten(soft.family, 40)})"
            )
        elif widths[key] != width:
            raise WidthMismatchError(
                f"{source}: {key} vectors are {width} wide but this pipeline's {family.encoder(key).text_encoder} "
                f"is {widths[key]} wide; the file was probably trained for another model family ({shorten(soft.family, 40)})"
            )
        else:
            pairs.append((family.encoder(key), vectors))
    return pairs


@dataclass(frozen=True)
class LoadedSoftPrompt:
    """One loaded file (or in-memory soft prompt), as `loaded_soft_prompts` lists it."""

    tokens: tuple[str, ...]  # its tokens still loaded, in order
    source: str  # the path as given, or "<memory>: name"
    family: str | None
    metadata: dict[str, str]
    encoders: tuple[str, ...]  # encoder keys that got rows
    alias: str | None = None
    blank: tuple[str, ...] = ()  # encoder keys that got the tokens as zero rows (`encoders=` left them out)


_LOADED_ATTR = "_sd_softprompt_loaded"


def _loaded(pipe) -> list[LoadedSoftPrompt]:
    if _LOADED_ATTR not in pipe.__dict__:
        object.__setattr__(pipe, _LOADED_ATTR, [])
    return pipe.__dict__[_LOADED_ATTR]


def loaded_soft_prompts(pipe) -> list[LoadedSoftPrompt]:
    """What is loaded into `pipe`, one entry per file (or in-memory soft prompt), in load order."""
    return list(_loaded(pipe))


@dataclass
class _Plan:
    """One soft prompt, read and checked against the pipeline, not loaded yet."""

    source: str
    soft: SoftPrompt
    pairs: list[tuple[Encoder, torch.Tensor]]
    tokens: list[str]
    alias: str | None
    blank: list[Encoder] = field(default_factory=list)  # encoders that get the tokens as zero rows


Source = SoftPrompt | str | os.PathLike | Sequence[str | os.PathLike]


def _read(source: Source) -> list[SoftPrompt]:
    """The soft prompts a source stands for: a LoRA file may bundle several, anything else is one."""
    check_source(source, soft_prompt_ok=True)
    if isinstance(source, SoftPrompt):
        return [source]
    return load_all(source)


def _plan(
    pipe,
    family: Family,
    soft: SoftPrompt,
    tokens: Sequence[str] | None,
    alias: str | None,
    allow_shadowing: bool,
    encoders: Sequence[str] | None = None,
) -> _Plan:
    name = soft.origin or f"<memory>: {soft.name}"  # origin: the file(s) it was read from
    soft.validate(name)  # an in-memory SoftPrompt gets a file's checks (a no-op for one already checked)
    pairs = assign_encoders(pipe, family, soft, name)
    blank: list[Encoder] = []
    if encoders is not None:
        pairs, blank = _only_encoders(family, pairs, list(encoders), name)
    tokens = list(tokens) if tokens is not None else list(soft.tokens)
    if len(tokens) != soft.num_vectors or len(set(tokens)) != len(tokens):
        raise TokenCollisionError(f"{name}: need {soft.num_vectors} distinct token names, got {listed(tokens)}")
    check_token_names(tokens, name)
    check_lowercase(family, tokens, name)
    if not allow_shadowing:
        check_shadowing(pipe, family, tokens, name)
    for encoder, vectors in pairs:
        embedding_table(pipe, encoder)  # rows on the meta device (sequential offload): refused, not loaded to no effect
        check_fits_dtype(pipe, encoder, vectors, name)
    return _Plan(name, soft, pairs, tokens, alias, blank)


def _only_encoders(
    family: Family, pairs: list[tuple[Encoder, torch.Tensor]], keys: list[str], name: str
) -> tuple[list[tuple[Encoder, torch.Tensor]], list[Encoder]]:
    """The pairs of the chosen encoders, and the pipeline's other encoders (they get the tokens as zero rows)."""
    unknown = [k for k in keys if k not in family.keys]
    if unknown:
        raise ConfigError(
            f"encoders {listed(unknown)}: a {family.name} pipeline's encoders are {', '.join(family.keys)}"
        )
    has = [encoder.key for encoder, _ in pairs]
    missing = [k for k in keys if k not in has]
    if missing:
        raise ConfigError(f"{name}: it has no {listed(missing)} vectors (it has {', '.join(has)}); choose among those")
    return [p for p in pairs if p[0].key in keys], [e for e in family.encoders if e.key not in keys]


def _check_between(plans: list[_Plan]) -> None:
    """Two files of one call may not share a token name: say which files and which tokens."""
    owner: dict[str, _Plan] = {}
    for plan in plans:
        for token in plan.tokens:
            first = owner.setdefault(token, plan)
            if first is not plan:
                shared = [t for t in plan.tokens if t in first.tokens]
                raise TokenCollisionError(
                    f"{first.source} and {plan.source} both use tokens {listed(shared)}; give one of them other names "
                    f"(tokens=[...] per file in Python, FILE=t1,t2,... with --soft)"
                )


def _check_vocab(pipe, plans: list[_Plan], replace: bool) -> list[str]:
    """Refuse tokens already in a tokenizer (unless ours and `replace`); return the ones to unload first."""
    ours = set(loaded_tokens(pipe))
    swap: list[str] = []
    for plan in plans:
        for encoder in [*(enc for enc, _ in plan.pairs), *plan.blank]:
            taken = present_tokens(tokenizer_of(pipe, encoder.tokenizer), plan.tokens)
            if taken and not (replace and set(taken) <= ours):
                hint = (
                    "pass replace=True (--replace) to swap them" if set(taken) <= ours else "choose other token names"
                )
                raise TokenCollisionError(
                    f"{plan.source}: tokens {listed(taken)} are already in {encoder.tokenizer}; {hint}"
                )
        swap += [t for t in plan.tokens if t in ours]
    return swap


def load_soft_prompts(
    pipe,
    sources: Sequence[Source],
    tokens: Sequence[Sequence[str] | None] | None = None,
    *,
    replace: bool = False,
    aliases: Sequence[str | None] | None = None,
    family: Family | None = None,
    allow_shadowing: bool = False,
    encoders: Sequence[Sequence[str] | None] | None = None,
) -> list[list[str]]:
    """Load several soft prompts at once, each with its own tokens; return each one's tokens.

    Every file is read and checked before anything changes: a token two of them share, or one already in a
    tokenizer, is refused naming the files. Each embedding table is then grown once for all of them (one
    copy of a 49k-row table instead of one per file). `tokens[i]` renames file i's tokens; `aliases[i]`
    gives it an alias (see `load_soft_prompt`). Each source may be a path, a `SoftPrompt`, or a
    [clip_l file, clip_g file] diffusers SDXL pair; a LoRA file with bundled soft prompts loads every one of
    them, each as its own entry, under the tokens `NAME, NAME_1, ...` (see `format.load_bundle`). `family`: the
    pipeline's, when the caller has it already. `allow_shadowing`, `encoders[i]` (file i's): see
    `load_soft_prompt`.
    """
    if isinstance(sources, (str, os.PathLike, SoftPrompt)) or not isinstance(sources, Sequence):
        raise SourceError(
            f"load_soft_prompts takes a list of sources, not a {type(sources).__name__}; load_soft_prompt loads one"
        )
    sources = list(sources)
    tokens = list(tokens) if tokens is not None else [None] * len(sources)
    aliases = list(aliases) if aliases is not None else [None] * len(sources)
    chosen = list(encoders) if encoders is not None else [None] * len(sources)
    if len(tokens) != len(sources) or len(aliases) != len(sources) or len(chosen) != len(sources):
        raise TokenCollisionError(
            f"{len(sources)} soft prompts but {len(tokens)} token lists, {len(aliases)} aliases and {len(chosen)} "
            f"encoder lists; give one entry (or None) per soft prompt"
        )
    family = family or detect_family(pipe)
    if any(aliases) and not callable(getattr(pipe, "maybe_convert_prompt", None)):
        # SD3's pipelines never pass prompts through diffusers' hook: an alias would silently do nothing
        raise ConfigError(
            f"alias {listed([a for a in aliases if a])}: {type(pipe).__name__} has no prompt hook "
            f"(maybe_convert_prompt) to expand an alias in; leave the alias out and write the tokens in the prompt"
        )
    plans: list[_Plan] = []
    counts: list[int] = []  # plans per source: a LoRA file may bundle several soft prompts
    for source, names, alias, keys in zip(sources, tokens, aliases, chosen):
        softs = _read(source)
        if len(softs) > 1 and (names is not None or alias is not None):
            raise TokenCollisionError(
                f"{source}: bundles {len(softs)} soft prompts, each loaded under its own name; tokens and aliases "
                f"rename one soft prompt: pick it with sd_softprompt.format.load_bundle(path)[name]"
            )
        plans += [_plan(pipe, family, soft, names, alias, allow_shadowing, keys) for soft in softs]
        counts.append(len(softs))
    _check_between(plans)
    swap = _check_vocab(pipe, plans, replace)
    if swap:
        unload_soft_prompt(pipe, swap, family=family)

    for encoder in family.encoders:
        names: list[str] = []
        rows: list[torch.Tensor] = []
        for plan in plans:
            for enc, vectors in plan.pairs:
                if enc.key == encoder.key:
                    names += plan.tokens
                    rows.append(vectors)
            if encoder in plan.blank:  # the tokens still tokenize there, as one position each with no content
                names += plan.tokens
                rows.append(torch.zeros(len(plan.tokens), encoder_width(pipe, encoder)))
        if names:
            dtype = getattr(pipe, encoder.text_encoder).get_input_embeddings().weight.dtype
            add_rows(pipe, encoder, names, torch.cat([r.to(dtype) for r in rows]))
    for plan in plans:
        _loaded(pipe).append(
            LoadedSoftPrompt(
                tokens=tuple(plan.tokens),
                source=plan.source,
                family=plan.soft.family,
                metadata=dict(plan.soft.metadata),
                encoders=tuple(enc.key for enc, _ in plan.pairs),
                alias=plan.alias,
                blank=tuple(e.key for e in plan.blank),
            )
        )
        if plan.alias:
            _aliases(pipe)[plan.alias] = plan.tokens
    out, start = [], 0
    for count in counts:
        out.append([t for plan in plans[start : start + count] for t in plan.tokens])
        start += count
    return out


def load_soft_prompt(
    pipe,
    source: Source,
    tokens: list[str] | None = None,
    *,
    replace: bool = False,
    alias: str | None = None,
    family: Family | None = None,
    allow_shadowing: bool = False,
    encoders: Sequence[str] | None = None,
) -> list[str]:
    """Register a soft prompt's tokens in every text encoder it has vectors for; return the tokens.

    `source` is a file (any format `SoftPrompt.load` reads), a [clip_l file, clip_g file] diffusers SDXL
    pair, or a `SoftPrompt`. `tokens` overrides the placeholder names (default: those stored in the file,
    `[v1]..[vN]`). Tokens already present are refused unless `replace=True` and they were loaded by this
    package. Tokens with whitespace are refused, and so are tokens that are a word of any of the pipeline's
    tokenizers unless `allow_shadowing=True` (loaded, they would replace that word in every prompt); so are
    vectors the encoders' dtype cannot hold. `alias` (e.g. "<sunrise>") is a name that the pipeline's
    prompt encoding expands to all N tokens. `family`: the pipeline's, when the caller has it already (else
    detected). `encoders` (e.g. ["clip_l"]): load only these encoders' vectors; every other encoder of the
    pipeline gets the tokens as rows of zeros, so a prompt tokenizes alike in every encoder (each soft token
    one position) and those positions carry no learned content there: what the pictures show is what the
    chosen encoders' vectors do. A key the pipeline or the file lacks is refused. Several files at once:
    `load_soft_prompts`.

    Example:

    ```py
    from sd_softprompt import load_soft_prompt, unload_soft_prompt
    from sd_softprompt.models.pipeline import load_pipeline

    pipe = load_pipeline("toyworld")  # offline; any diffusers pipeline of a supported family works the same
    tokens = load_soft_prompt(pipe, "sunrise.safetensors")  # ["[v1]", "[v2]", "[v3]"]
    image = pipe("[v1][v2][v3] mountain view").images[0]
    unload_soft_prompt(pipe, tokens)  # the tokenizers and encoders as they were, bit for bit
    ```
    """
    return load_soft_prompts(
        pipe,
        [source],
        [tokens],
        replace=replace,
        aliases=[alias],
        family=family,
        allow_shadowing=allow_shadowing,
        encoders=[encoders],
    )[0]


_ALIASES_ATTR = "_sd_softprompt_aliases"


def _aliases(pipe) -> dict[str, list[str]]:
    """alias -> tokens. The pipelines pass every prompt through `maybe_convert_prompt` (diffusers' own hook
    for multi-vector tokens); an instance-level wrapper expands the aliases there first."""
    if _ALIASES_ATTR not in pipe.__dict__:
        aliases: dict[str, list[str]] = {}
        original = getattr(pipe, "maybe_convert_prompt", None)

        def maybe_convert_prompt(prompt, tokenizer):
            prompt = [_expand(p, aliases) for p in prompt] if isinstance(prompt, list) else _expand(prompt, aliases)
            return original(prompt, tokenizer) if original else prompt

        # object.__setattr__: diffusers pipelines treat attribute assignment as config registration.
        object.__setattr__(pipe, _ALIASES_ATTR, aliases)
        object.__setattr__(pipe, "maybe_convert_prompt", maybe_convert_prompt)
    return pipe.__dict__[_ALIASES_ATTR]


def _expand(prompt: str, aliases: dict[str, list[str]]) -> str:
    for alias, tokens in aliases.items():
        prompt = prompt.replace(alias, "".join(tokens))
    return prompt


def unload_soft_prompt(pipe, tokens: list[str] | str | None = None, *, family: Family | None = None) -> None:
    """Remove soft tokens (default: all) from every tokenizer and encoder; with none left, restore exactly."""
    if isinstance(tokens, str):
        tokens = [tokens]
    family = family or detect_family(pipe)
    states = encoder_states(pipe)
    if tokens is not None:
        unknown = [t for t in tokens if t not in loaded_tokens(pipe)]
        if unknown:
            raise TokenCollisionError(
                f"tokens {listed(unknown)} are not loaded; loaded: {listed(loaded_tokens(pipe)) or 'none'}"
            )
    for key, state in list(states.items()):
        encoder = family.encoder(key)
        keep = [t for t in state.tokens if tokens is not None and t not in tokens]
        if len(keep) == len(state.tokens):
            continue
        # Rebuild rather than delete rows in place: restoring the snapshot and re-adding the tokens that
        # stay keeps ids dense and the untouched state bitwise identical. Tokens another tool added since
        # (diffusers' load_textual_inversion) are not ours to drop: they go back in after ours.
        table = embedding_table(pipe, encoder)
        vocab = tokenizer_of(pipe, encoder.tokenizer).get_vocab()
        keep = [t for t in keep if t in vocab]  # another tool may have taken some of ours out
        kept = table[[vocab[t] for t in keep]].clone()
        theirs, their_rows = foreign_rows(pipe, encoder, state)
        restore_encoder(pipe, encoder, state)
        del states[key]
        if keep:
            add_rows(pipe, encoder, keep, kept)
        if theirs:
            put_back(pipe, encoder, theirs, their_rows)
    _forget(pipe, set(loaded_tokens(pipe)))


def _forget(pipe, loaded: set[str]) -> None:
    """Drop unloaded tokens from the per-file records (an entry with none left goes) and from the aliases."""
    entries = _loaded(pipe)
    entries[:] = [
        replace_(entry, tokens=tuple(t for t in entry.tokens if t in loaded))
        for entry in entries
        if any(t in loaded for t in entry.tokens)
    ]
    _drop_aliases(pipe, loaded)


def _drop_aliases(pipe, loaded: set[str]) -> None:
    """Forget aliases whose tokens are gone; with none left, take the prompt hook off the pipeline."""
    aliases = pipe.__dict__.get(_ALIASES_ATTR)
    if aliases is None:
        return
    for alias in [a for a, toks in aliases.items() if not set(toks) <= loaded]:
        del aliases[alias]
    if not aliases:
        del pipe.__dict__[_ALIASES_ATTR]
        del pipe.__dict__["maybe_convert_prompt"]


def prompt_overflow(pipe, prompt: str, family: Family | None = None) -> list[str]:
    """Warnings for each encoder whose window the prompt overflows once the soft tokens are counted.

    The pipelines cut such prompts silently (or in a log line); a soft prompt makes it easier to miss,
    since `[v1]` reads as one word but each soft token takes one position of the window.
    """
    soft = set(loaded_tokens(pipe))
    out = []
    for encoder in (family or detect_family(pipe)).encoders:
        tokenizer = tokenizer_of(pipe, encoder.tokenizer)
        ids = tokenizer(prompt, add_special_tokens=False).input_ids
        specials = len(tokenizer("").input_ids)  # start/end-of-text the tokenizer adds
        window = tokenizer.model_max_length - specials
        if len(ids) > window:
            n_soft = sum(t in soft for t in tokenizer.convert_ids_to_tokens(ids))
            out.append(
                f"prompt is {len(ids)} tokens for {encoder.tokenizer} ({n_soft} of them soft tokens); "
                f"the last {len(ids) - window} were cut to fit its {tokenizer.model_max_length}-token window"
            )
    return out
