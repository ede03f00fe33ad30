"""The T5-conditioned families (Chroma, PixArt-Sigma) and HiDream: detection, keys, the loader against vectors
placed by hand, unload, other tools' loaders, tokenization, images mode, grids, inspect and convert."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from sd_softprompt.families import FAMILIES, detect_family
from sd_softprompt.files.convert import convert
from sd_softprompt.files.softprompt import SoftPrompt
from sd_softprompt.inject.inspection import inspect_file
from sd_softprompt.inject.loader import load_soft_prompt, unload_soft_prompt
from sd_softprompt.models import tiny

T5_FAMILIES = ["chroma", "pixart_sigma"]
ALL = [*T5_FAMILIES, "hidream"]
# ComfyUI's embedding keys for these encoders (comfy/text_encoders/chroma.py, pixart_t5.py, hidream.py)
KEYS = {"chroma": ("t5xxl",), "pixart_sigma": ("t5xxl",), "hidream": ("clip_l", "clip_g", "t5xxl", "llama")}
WORDS = "mountain view"
SOFT = "[v1][v2][v3]"


def soft_for(pipe, n: int = 3, seed: int = 0) -> SoftPrompt:
    g = torch.Generator().manual_seed(seed)
    family = detect_family(pipe)
    vectors = {}
    for e in family.encoders:
        table = getattr(pipe, e.text_encoder).get_input_embeddings().weight.detach()
        v = torch.randn(n, table.shape[1], generator=g)
        vectors[e.key] = v / v.norm(dim=1, keepdim=True) * table.norm(dim=1).mean()
    return SoftPrompt(vectors, metadata={"name": "sunrise", "family": family.name})


def snapshot(pipe) -> dict:
    out = {}
    for e in detect_family(pipe).encoders:
        tok = getattr(pipe, e.tokenizer)
        table = getattr(pipe, e.text_encoder).get_input_embeddings().weight.detach().clone()
        out[e.key] = (len(tok), tok.get_vocab(), tok(f"{SOFT} {WORDS}").input_ids, table)
    return out


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k][:3] == b[k][:3]
        assert a[k][3].shape == b[k][3].shape and torch.equal(a[k][3], b[k][3])


def t5_by_hand(tokenizer, encoder, vectors: torch.Tensor, words: str, window: int):
    """T5 states of `vectors` followed by `words`: the prompt's ids with placeholder rows, those rows replaced
    by the vectors in inputs_embeds, the tokenizer's attention mask (words, end-of-text)."""
    n = vectors.shape[0]
    ids = [0] * n + tokenizer(words, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    mask = torch.zeros(1, window, dtype=torch.long)
    mask[0, : len(ids)] = 1
    ids = torch.tensor([ids + [tokenizer.pad_token_id] * (window - len(ids))])
    embeds = encoder.get_input_embeddings()(ids).detach().clone()
    embeds[0, :n] = vectors
    with torch.no_grad():
        return encoder(inputs_embeds=embeds, attention_mask=mask).last_hidden_state, mask


def by_hand(pipe, family: str, soft: SoftPrompt, words: str) -> dict:
    """The conditioning the family's pipeline should make of SOFT + words, built without our loader."""
    if family == "chroma":
        states, mask = t5_by_hand(pipe.tokenizer, pipe.text_encoder, soft.vectors["t5xxl"], words, 64)
        # the transformer sees one padding position past end-of-text
        length = int(mask.sum())
        mask = mask.clone()
        mask[0, length] = 1
        return {"states": states, "mask": mask.float()}
    if family == "pixart_sigma":
        states, mask = t5_by_hand(pipe.tokenizer, pipe.text_encoder, soft.vectors["t5xxl"], words.lower(), 64)
        return {"states": states, "mask": mask}
    if family == "hidream":
        v = soft.vectors
        states, _ = t5_by_hand(pipe.tokenizer_3, pipe.text_encoder_3, v["t5xxl"], words, 64)
        pooled = [clip_pooled_by_hand(pipe, i, v[key], words) for i, key in ((1, "clip_l"), (2, "clip_g"))]
        return {"states": states, "llama": llama_by_hand(pipe, v["llama"], words), "pooled": torch.cat(pooled, -1)}
    raise AssertionError(family)


def llama_by_hand(pipe, vectors: torch.Tensor, words: str, window: int = 64) -> torch.Tensor:
    """Every Llama layer's states [1, layers, L, D]: <|begin_of_text|>, the vectors, the words (their first
    space inside the first word's token, "Ġmountain"), padded with the pad (= eot) token and masked."""
    tok, enc = pipe.tokenizer_4, pipe.text_encoder_4
    n = vectors.shape[0]
    ids = [tok.bos_token_id] + [0] * n + tok(" " + words, add_special_tokens=False).input_ids
    mask = torch.zeros(1, window, dtype=torch.long)
    mask[0, : len(ids)] = 1
    ids = torch.tensor([ids + [tok.pad_token_id] * (window - len(ids))])
    embeds = enc.get_input_embeddings()(ids).detach().clone()
    embeds[0, 1 : 1 + n] = vectors
    with torch.no_grad():
        hidden = enc(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True).hidden_states[1:]
    return torch.stack(hidden, dim=1)


def clip_pooled_by_hand(pipe, index: int, vectors: torch.Tensor, words: str) -> torch.Tensor:
    """A CLIP's projected pooled vector at end-of-text, the vectors placed in its token embeddings' output (a
    hook: transformers' CLIP takes no inputs_embeds) at the positions after start-of-text."""
    tok = getattr(pipe, "tokenizer" if index == 1 else f"tokenizer_{index}")
    enc = getattr(pipe, "text_encoder" if index == 1 else f"text_encoder_{index}")
    n = vectors.shape[0]
    placeholder = tok("a", add_special_tokens=False).input_ids  # any one-token word below end-of-text
    ids = [tok.bos_token_id] + placeholder * n + tok(words, add_special_tokens=False).input_ids + [tok.eos_token_id]
    ids = torch.tensor([ids + [tok.pad_token_id] * (64 - len(ids))])  # the tiny window (the real one: 128)

    def place(module, args, out):
        out = out.clone()
        out[0, 1 : 1 + n] = vectors
        return out

    handle = enc.get_input_embeddings().register_forward_hook(place)
    try:
        with torch.no_grad():
            return enc(ids)[0]  # text_embeds: pooled at argmax(ids), the end-of-text here (the placeholders are lower)
    finally:
        handle.remove()


@pytest.mark.parametrize("family", ALL)
def test_detected_with_comfyui_keys(family, request):
    pipe = request.getfixturevalue(family)
    assert detect_family(pipe).name == family
    assert FAMILIES[family].keys == KEYS[family]


@pytest.mark.parametrize("family", ALL)
def test_loader_matches_vectors_placed_by_hand_and_unload_restores(family, request):
    pipe = request.getfixturevalue(family)
    twin = tiny.BUILDERS[family](seed=0)  # the same weights, never loaded into
    soft = soft_for(pipe)
    before = snapshot(pipe)
    plain = FAMILIES[family].encode(pipe, [f"{SOFT} {WORDS}"])

    load_soft_prompt(pipe, soft)
    mine = FAMILIES[family].encode(pipe, [f"{SOFT} {WORDS}"])
    expected = by_hand(twin, family, soft, WORDS)
    assert mine.keys() == expected.keys()
    for key in mine:
        assert torch.allclose(mine[key], expected[key], atol=1e-5), key
    assert not torch.allclose(mine["states"], plain["states"])

    unload_soft_prompt(pipe)
    assert_same(snapshot(pipe), before)
    again = FAMILIES[family].encode(pipe, [f"{SOFT} {WORDS}"])
    assert all(torch.equal(again[k], plain[k]) for k in plain)


@pytest.mark.parametrize("family", T5_FAMILIES)
def test_sentencepiece_keeps_soft_tokens_whole(family, request):
    pipe = request.getfixturevalue(family)
    tokenizer = getattr(pipe, FAMILIES[family].encoders[0].tokenizer)
    assert tokenizer.tokenize(SOFT)[:2] == ["▁[", "v"]  # unloaded: plain characters
    load_soft_prompt(pipe, soft_for(pipe))
    for text in (f"{SOFT} {WORDS}", "[v1] [v2] [v3] mountain view", "[v1][v2][v3]mountain view"):
        assert tokenizer.tokenize(text)[:3] == ["[v1]", "[v2]", "[v3]"], text
    assert tokenizer.tokenize(f"a lake {SOFT}")[-3:] == ["[v1]", "[v2]", "[v3]"]


def test_chroma_unmodified_diffusers_loads_our_files_with_the_same_states(chroma, tmp_path):
    """ChromaPipeline has diffusers' TextualInversionLoaderMixin: its own load_textual_inversion reads our
    native file (one t5xxl tensor) and our diffusers file, and its prompt encoding expands <sunrise> to the
    three tokens: the states and mask are ours."""
    soft = soft_for(chroma)
    native = soft.save(tmp_path / "sunrise.safetensors")[0]
    written = {"native": native, "diffusers": convert(native, to="diffusers", out=tmp_path / "d")[0]}
    load_soft_prompt(chroma, soft)
    mine = FAMILIES["chroma"].encode(chroma, [f"{SOFT} {WORDS}"])
    for name, path in written.items():
        theirs = tiny.build_chroma(seed=0)
        theirs.load_textual_inversion(str(path), token="<sunrise>")
        ref = FAMILIES["chroma"].encode(theirs, [f"<sunrise> {WORDS}"])
        assert torch.allclose(mine["states"], ref["states"], atol=1e-6), name
        assert torch.equal(mine["mask"], ref["mask"]), name


def test_chroma_variants_take_soft_prompts(chroma):
    from diffusers import ChromaImg2ImgPipeline, ChromaInpaintPipeline

    for cls in (ChromaImg2ImgPipeline, ChromaInpaintPipeline):
        pipe = cls(**{k: v for k, v in chroma.components.items() if v is not None})
        assert detect_family(pipe).name == "chroma"
        assert load_soft_prompt(pipe, soft_for(pipe)) == ["[v1]", "[v2]", "[v3]"]
        unload_soft_prompt(pipe)


def test_pixart_lowercases_prompts_and_refuses_tokens_with_capitals(pixart_sigma):
    """PixArt's pipeline lowercases every prompt before T5's tokenizer: words match in any case, and a
    token with capitals, which could never match, is refused before anything changes."""
    from sd_softprompt.errors import TokenCollisionError

    soft = soft_for(pixart_sigma)
    with pytest.raises(TokenCollisionError, match=r"capitals.*PixArt-Sigma.*lowercases"):
        load_soft_prompt(pixart_sigma, soft, tokens=["<Sun1>", "<sun2>", "<sun3>"])
    assert len(pixart_sigma.tokenizer) == len(tiny.t5_tokenizer())
    load_soft_prompt(pixart_sigma, soft)
    encode = FAMILIES["pixart_sigma"].encode
    upper, lower = encode(pixart_sigma, [f"{SOFT} Mountain VIEW"]), encode(pixart_sigma, [f"{SOFT} {WORDS}"])
    assert torch.equal(upper["states"], lower["states"])


def test_pixart_calls_skip_the_caption_cleaning_that_takes_soft_tokens_apart(pixart_sigma):
    """The pipeline's default clean_caption=True (with bs4 and ftfy installed) turns brackets into spaces
    (its bad_punct_regex): [v1] would reach T5 as 'v1'. Our calls switch it off; the window follows the
    tokenizer, and the tiny model (no resolution bins for its size) draws at the size asked."""
    assert pixart_sigma.bad_punct_regex.sub(" ", SOFT).split() == ["v1", "v2", "v3"]
    kwargs = FAMILIES["pixart_sigma"].call_kwargs(pixart_sigma, "blurry")
    assert kwargs == {
        "negative_prompt": "blurry",
        "clean_caption": False,
        "max_sequence_length": 64,
        "use_resolution_binning": False,
    }


def test_hidream_tokens_whole_in_every_tokenizer_and_right_after_begin_of_text(hidream):
    """Byte-level BPE (Llama 3) and CLIP's BPE keep [vN] whole; HiDream's pipeline gives Llama the prompt
    with no chat template: the vectors sit right after <|begin_of_text|>, where the user's words start."""
    load_soft_prompt(hidream, soft_for(hidream))
    prompt = f"{SOFT} {WORDS}"
    llama = hidream.tokenizer_4
    assert llama.tokenize(prompt) == ["[v1]", "[v2]", "[v3]", "Ġmountain", "Ġview"]
    ids = llama(prompt).input_ids
    assert ids[0] == llama.bos_token_id and ids[1:4] == llama.convert_tokens_to_ids(["[v1]", "[v2]", "[v3]"])
    for name in ("tokenizer", "tokenizer_2", "tokenizer_3"):
        assert getattr(hidream, name).tokenize(prompt)[:3] == ["[v1]", "[v2]", "[v3]"], name


def test_hidream_pooled_vector_is_read_at_end_of_text_not_at_a_soft_token(hidream):
    """The pooled-output trap: both CLIPs carry the legacy eos id 2, with which transformers pools at the
    highest id, a soft token once loaded; the loader makes them pool at end-of-text (by_hand checks the value)."""
    load_soft_prompt(hidream, soft_for(hidream))
    for tok, enc in ((hidream.tokenizer, hidream.text_encoder), (hidream.tokenizer_2, hidream.text_encoder_2)):
        ids = tok(f"{SOFT} {WORDS}").input_ids
        assert enc.config.eos_token_id == 2 and tok.convert_ids_to_tokens(max(ids)) == "[v3]"
        assert enc.text_model.eos_token_id == tok.eos_token_id
    unload_soft_prompt(hidream)
    assert hidream.text_encoder.text_model.eos_token_id == 2  # put back


@pytest.mark.parametrize("family", ["pixart_sigma", "sdxl"])
def test_image_mode_noises_as_ddpm_training_did_whatever_the_sampler(family, request):
    """PixArt ships DPM-Solver, SDXL Euler: their add_noise is not the forward process the denoiser learned
    (DPM-Solver's noise levels are misaligned with t until set_timesteps; Euler's x0 + sigma * noise is
    unscaled). Images mode noises with sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) noise, before and after the
    pipeline has sampled."""
    from sd_softprompt.train.losses import noisy_and_target

    pipe = request.getfixturevalue(family)
    g = torch.Generator().manual_seed(0)
    x0, noise, t = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g), torch.tensor([50, 900])
    alpha = pipe.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = alpha.sqrt() * x0 + (1 - alpha).sqrt() * noise
    assert not torch.allclose(pipe.scheduler.add_noise(x0, noise, t), expected, atol=1e-3)
    for _ in range(2):
        x_t, target = noisy_and_target(pipe, FAMILIES[family], x0, noise, t)
        assert torch.allclose(x_t, expected, atol=1e-6) and torch.equal(target, noise)
        pipe.scheduler.set_timesteps(4)  # as a pipeline call leaves it


@pytest.mark.parametrize("family", ALL)
def test_image_mode_lowers_its_fixed_batch_loss(family, request, images_mode_fixed_batch):
    fixed = images_mode_fixed_batch(request.getfixturevalue(family), family, steps=30)
    assert fixed["after"] < fixed["before"], fixed


@pytest.mark.parametrize("family", ALL)
def test_grid_inspect_and_convert(family, request, tmp_path):
    from sd_softprompt.render.generate import run_grid

    pipe = request.getfixturevalue(family)
    pipe.set_progress_bar_config(disable=True)
    soft = soft_for(pipe)
    native = soft.save(tmp_path / "sunrise.safetensors")[0]
    load_soft_prompt(pipe, native)
    grid, record = run_grid(
        pipe,
        [f"{SOFT} {WORDS}", WORDS],
        [0],
        steps=2,
        guidance=4.0,
        height=64,
        width=64,
        negative_prompt="blurry",
        model_name=f"tiny-{family}",
        out=tmp_path / "grid.png",
    )
    assert Image.open(grid).size[1] > 2 * 64 and record.exists()

    report = inspect_file(native, pipe)
    assert sorted((e["key"], e["text_encoder"]) for e in report["encoders"]) == sorted(
        (e.key, e.text_encoder) for e in FAMILIES[family].encoders
    )
    for fmt in FAMILIES[family].formats:
        written = convert(native, to=fmt, out=tmp_path / fmt)
        back = SoftPrompt.load(written[0])
        if set(back.vectors) == {"*"}:  # diffusers' one-tensor file: its encoder is found by width on loading
            assert torch.equal(back.vectors["*"], soft.vectors["t5xxl"]), fmt
        else:
            assert back.vectors.keys() == soft.vectors.keys(), fmt
            assert all(torch.equal(back.vectors[k], soft.vectors[k]) for k in soft.vectors), fmt
        unload_soft_prompt(pipe)
        load_soft_prompt(pipe, back, family=detect_family(pipe))  # loads back into the pipeline
    unload_soft_prompt(pipe)
