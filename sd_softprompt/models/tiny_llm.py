"""The tiny pipelines' decoder-only text side, built in code: BPE tokenizers with the real classes' structure
(Gemma: sentencepiece-style "▁" pieces with byte fallback; Qwen: GPT-2 byte-level pieces with chat special
tokens and a chat template; Mistral 3: Tekken's split and control tokens, padded on the left, behind a text-only
processor) over a small word list, and decoder configs a few dozen wide."""

from __future__ import annotations

import re

from .tiny_text import WORDS, _bytes_to_unicode

# Qwen3's chat template for what the pipelines send (one user turn, generation prompt, thinking off), as
# its real template writes it: the empty think block follows the assistant header when enable_thinking=False.
QWEN3_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]


def _words_of(texts: list[str]) -> list[str]:
    """WORDS, then every word of `texts` (the pipelines' instruction and system templates), in order."""
    found = [w for t in texts for w in re.findall(r"[A-Za-z]+", t)]
    return list(dict.fromkeys(WORDS + found + [w.lower() for w in found]))


def _merges_for(pieces: list[list[str]], vocab: dict[str, int]) -> list[tuple[str, str]]:
    """Left-to-right merges that make each piece (a list of symbols) one token, each earlier piece kept whole."""
    ranks: dict[tuple[str, str], int] = {}
    for symbols in pieces:
        while True:  # run the merges made so far
            pairs = [(ranks[p], i) for i, p in enumerate(zip(symbols, symbols[1:])) if p in ranks]
            if not pairs:
                break
            _, i = min(pairs)
            symbols = symbols[:i] + [symbols[i] + symbols[i + 1]] + symbols[i + 2 :]
        while len(symbols) > 1:
            ranks.setdefault((symbols[0], symbols[1]), len(ranks))
            symbols = [symbols[0] + symbols[1]] + symbols[2:]
            vocab.setdefault(symbols[0], len(vocab))
    return sorted(ranks, key=ranks.__getitem__)


def gemma_tokenizer(texts: list[str] = (), model_max_length: int = 8192):
    """A GemmaTokenizer (BPE, byte fallback, spaces as "▁", <bos> added, no <eos>) whose whole words are WORDS
    and those of `texts`; Gemma's ids for <pad>=0, <eos>=1, <bos>=2, <unk>=3."""
    from transformers import GemmaTokenizer

    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"])}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for c in "▁" + "".join(chr(i) for i in range(33, 127)):
        vocab.setdefault(c, len(vocab))
    words = _words_of(list(texts))
    merges = _merges_for([list("▁" + w) for w in words] + [list(w) for w in words], vocab)
    return GemmaTokenizer(
        vocab=vocab, merges=merges, model_max_length=model_max_length, padding_side="right", add_bos_token=True
    )


def qwen_tokenizer(texts: list[str] = (), model_max_length: int = 64, chat_template: str | None = None):
    """A Qwen2Tokenizer (GPT-2 byte-level BPE, no <bos>, <|endoftext|> pads) with Qwen's chat special tokens."""
    from transformers import Qwen2Tokenizer

    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    words = _words_of(list(texts))
    merges = _merges_for([list("Ġ" + w) for w in words] + [list(w) for w in words] + [list("ĊĊ")], vocab)
    for token in QWEN_SPECIALS:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_SPECIALS[1:]})
    if chat_template:
        tokenizer.chat_template = chat_template
    return tokenizer


def gemma2_config(vocab_size: int, hidden: int = 32, layers: int = 2):
    from transformers import Gemma2Config

    return Gemma2Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=1024,
        sliding_window=64,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )


def qwen3_config(vocab_size: int, hidden: int = 32, layers: int = 2, eos_token_id: int | None = None):
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos_token_id,
    )


# Lumina2Pipeline sets its system prompt in __init__; its words, and the separator the pipeline writes after it.
LUMINA2_SYSTEM_WORDS = (
    "You are an assistant designed to generate superior images with the superior degree of image-text alignment "
    "based on textual prompts or user prompts. <Prompt Start>"
)


# ---- Qwen encoders (Qwen-Image, Flux.2 Klein) ----------------------------------------------------------------
# QwenImagePipeline sets its chat template in __init__; its words, so that the tiny tokenizer gives the real
# tokenizer's 34 template tokens before the prompt (prompt_template_encode_start_idx). "user" and "assistant",
# the roles Qwen3's chat template writes, are one token each as in the real vocabulary.
QWEN_IMAGE_TEMPLATE_WORDS = (
    "system Describe the image by detailing the color, shape, size, texture, quantity, text, spatial relationships "
    "of the objects and background: user assistant"
)
QWEN3_CHAT_WORDS = "user assistant"


def qwen2_5_vl_config(vocab_size: int, pad_token_id: int, eos_token_id: int, hidden: int = 32, layers: int = 2):
    """Qwen2.5-VL with a 1-block vision tower (the pipelines never run it) and multimodal rotary sections
    that fit the 16-wide heads."""
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=2048,
            rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
            bos_token_id=None,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
        ),
        vision_config=dict(
            depth=1,
            hidden_size=16,
            intermediate_size=32,
            num_heads=2,
            out_hidden_size=hidden,
            fullatt_block_indexes=[0],
        ),
    )


# ---- Mistral 3 (Flux.2 [dev]) ----------------------------------------------------------------------------------
# Tekken's control tokens at their real ids (<s> 1, [INST] 3, [/INST] 4, [IMG] 10, <pad> 11, [SYSTEM_PROMPT] 17,
# [/SYSTEM_PROMPT] 18; ComfyUI's Flux.2 tokenizer starts with 1 and pads with 11), then the 256 bytes, then words.
MISTRAL_SPECIALS = [
    "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]", "[PREFIX]", "[MIDDLE]",
    "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]",
]  # fmt: skip
# Tekken's pre-tokenizer split (words with their leading space or punctuation, single digits, punctuation runs,
# newlines, spaces), before the byte-level pieces.
TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
# What Mistral Small 3's chat template (3.1's, 3.2's) writes for the messages Flux2Pipeline sends (a system and a
# user message, content as lists of text parts): <s>[SYSTEM_PROMPT]...[/SYSTEM_PROMPT][INST]...[/INST].
MISTRAL3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% set content = message['content'] %}"
    "{% if content is not string %}{% set content = content | selectattr('type', 'equalto', 'text') "
    "| map(attribute='text') | join('') %}{% endif %}"
    "{% if message['role'] == 'system' %}[SYSTEM_PROMPT]{{ content }}[/SYSTEM_PROMPT]"
    "{% elif message['role'] == 'user' %}[INST]{{ content }}[/INST]"
    "{% else %}{{ content }}{{ eos_token }}{% endif %}{% endfor %}"
)


def mistral_tokenizer(texts: list[str] = (), model_max_length: int = 64):
    """A byte-level BPE tokenizer split as Tekken splits (Mistral 3's), whose whole words are WORDS and those of
    `texts`; <s> added in front, padded on the left with <pad> as Flux.2's tokenizer pads."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(MISTRAL_SPECIALS)}
    for c in _bytes_to_unicode().values():
        vocab.setdefault(c, len(vocab))
    words = _words_of(list(texts))
    merges = _merges_for([list("Ġ" + w) for w in words] + [list(w) for w in words], vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(TEKKEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        add_bos_token=True,
        padding_side="left",
        model_max_length=model_max_length,
    )
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [t for t in MISTRAL_SPECIALS if t not in ("<unk>", "<s>", "</s>", "<pad>")]}
    )
    return tokenizer


def text_processor(tokenizer, chat_template: str):
    """A processor with only a tokenizer and a chat template: the text side of Flux.2's PixtralProcessor, whose
    image processor needs torchvision. The pipeline's `apply_chat_template(...)` runs transformers' own
    ProcessorMixin code either way: the template rendered, then tokenized by the inner tokenizer."""
    return __getattr__("TextProcessor")(tokenizer=tokenizer, chat_template=chat_template)


def __getattr__(name: str):
    """`TextProcessor`, made on first use (transformers' ProcessorMixin takes seconds to import). A saved tiny
    Flux.2 names this module and class for its tokenizer; diffusers loads it from here, with the load method of
    the transformers base class this module also has (`ProcessorMixin`: from_pretrained)."""
    if name not in ("TextProcessor", "ProcessorMixin"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from transformers import ProcessorMixin

    class TextProcessor(ProcessorMixin):
        def __init__(self, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(tokenizer, chat_template=chat_template)

    TextProcessor.__module__, TextProcessor.__qualname__ = __name__, "TextProcessor"
    globals().update(TextProcessor=TextProcessor, ProcessorMixin=ProcessorMixin)
    return globals()[name]


def mistral3_config(vocab_size: int, hidden: int = 32, layers: int = 31):
    """Mistral 3 (Mistral Small 3's layout) with a 1-layer Pixtral vision tower the pipeline never runs: the
    language model a few dozen wide, deep enough that layer 30's states are not the last, normed ones."""
    from transformers import Mistral3Config

    ids = dict(bos_token_id=1, eos_token_id=2, pad_token_id=11)
    return Mistral3Config(
        text_config=dict(
            model_type="mistral",
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=1024,
            sliding_window=None,
            **ids,
        ),
        vision_config=dict(
            model_type="pixtral",
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=16,
        ),
        image_token_index=10,
        **ids,
    )
