"""The tiny pipelines' text side, built in code: a word list, a byte-level BPE CLIP tokenizer over it, a unigram
T5 tokenizer, and CLIP text configs with the legacy ids the real SD/SDXL checkpoints carry."""

from __future__ import annotations

# Words the tiny tokenizers know as whole tokens; anything else falls back to byte-level pieces.
WORDS = [
    "a",
    "an",
    "and",
    "at",
    "of",
    "on",
    "in",
    "with",
    "the",
    "to",
    "by",
    "for",
    "from",
    "is",
    "as",
    "or",
    "over",
    "under",
    "near",
    "into",
    "its",
    "image",
    "photo",
    "picture",
    "painting",
    "drawing",
    "portrait",
    "render",
    "illustration",
    "sketch",
    "style",
    "art",
    "view",
    "scene",
    "serene",
    "calm",
    "quiet",
    "bright",
    "dark",
    "misty",
    "golden",
    "soft",
    "sharp",
    "detailed",
    "vivid",
    "colorful",
    "old",
    "new",
    "small",
    "big",
    "tall",
    "landscape",
    "sunrise",
    "sunset",
    "morning",
    "evening",
    "night",
    "day",
    "sky",
    "cloud",
    "clouds",
    "sun",
    "moon",
    "star",
    "stars",
    "light",
    "tree",
    "trees",
    "forest",
    "mountain",
    "mountains",
    "hill",
    "hills",
    "lake",
    "river",
    "sea",
    "ocean",
    "beach",
    "water",
    "snow",
    "rain",
    "field",
    "flower",
    "flowers",
    "garden",
    "grass",
    "rock",
    "rocks",
    "valley",
    "city",
    "street",
    "house",
    "castle",
    "bridge",
    "road",
    "cat",
    "dog",
    "bird",
    "horse",
    "person",
    "woman",
    "man",
    "child",
    "face",
    "hair",
    "eyes",
    "red",
    "green",
    "blue",
    "yellow",
    "orange",
    "purple",
    "white",
    "black",
    "pink",
    "brown",
    "gray",
    "highly",
    "quality",
    "masterpiece",
    "cinematic",
    "lighting",
    "oil",
    "watercolor",
    "digital",
    "studio",
]

_SPECIAL_BOS, _SPECIAL_EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    while len(symbols) > 1:
        pairs = [(ranks.get(p, len(ranks)), i) for i, p in enumerate(zip(symbols, symbols[1:]))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        symbols = symbols[:i] + [symbols[i] + symbols[i + 1]] + symbols[i + 2 :]
    return symbols


def clip_vocab_and_merges(words: list[str] | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE vocabulary like CLIP's, with whole-word merges for ``words`` (default WORDS).

    Every byte (and byte + '</w>') is in the vocabulary, so any text tokenizes; the end-of-text token
    is the last id, as in the real CLIP vocabulary (49407), which the pooled-output trap depends on.
    """
    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for piece in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(piece, len(vocab))
    ranks: dict[tuple[str, str], int] = {}
    for word in WORDS if words is None else words:
        # Run the merges made so far, then join what is left: appending a word's merges after the
        # earlier ones keeps every earlier word whole.
        symbols = _bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks)
        while len(symbols) > 1:
            ranks.setdefault((symbols[0], symbols[1]), len(ranks))
            symbols = [symbols[0] + symbols[1]] + symbols[2:]
            vocab.setdefault(symbols[0], len(vocab))
    merges = sorted(ranks, key=ranks.__getitem__)
    vocab[_SPECIAL_BOS] = len(vocab)
    vocab[_SPECIAL_EOS] = len(vocab)
    return vocab, merges


def clip_tokenizer(pad_token: str = _SPECIAL_EOS, words: list[str] | None = None):
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges(words)
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad_token, model_max_length=77)


def t5_tokenizer():
    """A unigram (sentencepiece-style) tokenizer with T5's special ids: <pad>=0, </s>=1, <unk>=2."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + w, -5.0) for w in WORDS]
    letters = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-:;()[]<>"
    pieces += [(c, -10.0) for c in letters] + [("▁" + c, -10.0) for c in letters]
    # 64 positions instead of the real 512: the same code path, an eighth of the cost
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=64)


def clip_text_config(vocab_size: int, hidden: int, *, gelu: bool = False, projection: int | None = None):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="gelu" if gelu else "quick_gelu",  # OpenCLIP (SD2, SDXL's encoder 2) uses gelu
        projection_dim=projection or hidden,
        # Legacy ids, as in the real SD 1.x / SDXL text encoder configs: pooled output at argmax(ids).
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )


# ---------------------------------------------------------------- Llama 3 (HiDream's fourth encoder)
LLAMA_BOS, LLAMA_EOS, LLAMA_EOT = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"


def llama_tokenizer(model_max_length: int = 131072):
    """A byte-level BPE tokenizer like Llama 3's: spaces as "Ġ" inside the following word's token, whole-word
    merges for WORDS (with and without the space), <|begin_of_text|> prepended, the special tokens last."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(_bytes_to_unicode().values())}
    ranks: dict[tuple[str, str], int] = {}
    for word in WORDS:
        for form in (word, "Ġ" + word):  # "Ġ": the byte-level form of a space
            symbols = _bpe(list(form), ranks)
            while len(symbols) > 1:
                ranks.setdefault((symbols[0], symbols[1]), len(ranks))
                symbols = [symbols[0] + symbols[1]] + symbols[2:]
                vocab.setdefault(symbols[0], len(vocab))
    merges = sorted(ranks, key=ranks.__getitem__)
    for special in (LLAMA_BOS, LLAMA_EOS, LLAMA_EOT):
        vocab[special] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{LLAMA_BOS} $A", pair=f"{LLAMA_BOS} $A {LLAMA_BOS} $B", special_tokens=[(LLAMA_BOS, vocab[LLAMA_BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=LLAMA_BOS, eos_token=LLAMA_EOT, model_max_length=model_max_length
    )
