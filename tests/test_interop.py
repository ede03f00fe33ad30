"""Every written format loads in unmodified diffusers and gives the prompt embeddings our loader gives."""

import pytest
import torch
from diffusers.loaders.textual_inversion import TextualInversionLoaderMixin
from safetensors.torch import load_file

from sd_softprompt.families import FAMILIES
from sd_softprompt.files.convert import convert
from sd_softprompt.files.softprompt import SoftPrompt
from sd_softprompt.inject.loader import load_soft_prompt
from sd_softprompt.models import tiny

PROMPT = "{} mountain view"
CLIP = ["native", "diffusers", "a1111", "kohya", "onetrainer", "comfyui", "invokeai"]
WRITABLE = {
    "sd1": CLIP,
    "sd2": CLIP,
    "sdxl": CLIP,
    "flux": ["native", "diffusers", "onetrainer", "comfyui"],
    "sd3": ["native", "onetrainer", "comfyui"],  # ComfyUI (native keys) and OneTrainer ("t5") hold SD3 files
    "chroma": ["native", "diffusers", "onetrainer", "comfyui"],  # T5-only families
    "pixart_sigma": ["native", "onetrainer", "comfyui"],
    "hidream": ["native", "onetrainer", "comfyui"],  # ComfyUI (native keys) and OneTrainer ("t5", the others as ours)
}
CASES = [(f, fmt) for f, fmts in WRITABLE.items() for fmt in fmts]


def trained_like(pipe, family: str) -> SoftPrompt:
    g = torch.Generator().manual_seed(3)
    vectors = {}
    for e in FAMILIES[family].encoders:
        w = getattr(pipe, e.text_encoder).get_input_embeddings().weight
        vectors[e.key] = torch.randn(3, w.shape[1], generator=g) * w.norm(dim=1).mean() / w.shape[1] ** 0.5
    return SoftPrompt(vectors=vectors, metadata={"name": "sunrise", "family": family, "steps": "120"})


def diffusers_load(pipe, family: str, paths: list) -> str:
    """Load written files the way a diffusers user does; return diffusers' trigger token.

    SD3's pipelines lack diffusers' TextualInversionLoaderMixin; mixed into the pipeline's class, as a user
    would, its unmodified load_textual_inversion loads them one encoder at a time, as on SDXL and Flux."""
    token = "<sunrise>"
    if not isinstance(pipe, TextualInversionLoaderMixin):
        cls = type(pipe)
        pipe.__class__ = type(cls.__name__, (cls, TextualInversionLoaderMixin), {})
    load = TextualInversionLoaderMixin.load_textual_inversion
    enc = FAMILIES[family].encoders
    if len(enc) == 1:  # one file, one tensor: the plain call
        load(pipe, str(paths[0]), token=token)
        return token
    if len(paths) == 2:  # diffusers' SDXL pair: one call per file and encoder
        parts = [load_file(p) for p in paths]
        tensors = [next(iter(p.values())) for p in parts]
    else:  # a two-encoder file: diffusers needs one call per key (it cannot read both at once)
        sd = load_file(paths[0])
        aliases = {"t5xxl": ["t5xxl", "t5"]}
        tensors = [next(sd[k] for k in aliases.get(e.key, [e.key]) if k in sd) for e in enc]
    for e, t in zip(enc, tensors):
        load(pipe, t, token=token, tokenizer=getattr(pipe, e.tokenizer), text_encoder=getattr(pipe, e.text_encoder))
    return token


@pytest.mark.parametrize("family, fmt", CASES)
def test_written_format_loads_in_diffusers_with_same_embeddings(family, fmt, tmp_path):
    ours, theirs = tiny.BUILDERS[family](seed=0), tiny.BUILDERS[family](seed=0)
    soft = trained_like(ours, family)
    native = soft.save(tmp_path / "sunrise.safetensors")[0]
    written = convert(native, to=fmt, out=tmp_path / fmt)

    back = SoftPrompt.load(written if len(written) > 1 else written[0])
    if set(back.vectors) == {"*"}:  # a single-tensor file: its encoder is found by width when loading
        assert torch.equal(back.vectors["*"], next(iter(soft.vectors.values())))
    else:
        assert set(back.vectors) == set(soft.vectors)
        assert all(torch.equal(back.vectors[k], soft.vectors[k]) for k in soft.vectors)
    assert back.name == "sunrise"

    tokens = load_soft_prompt(ours, back)
    mine = FAMILIES[family].encode(ours, [PROMPT.format("".join(tokens))])
    hooked = isinstance(theirs, TextualInversionLoaderMixin)  # its prompt encoding expands <sunrise> itself
    token = diffusers_load(theirs, family, written)
    prompt = PROMPT.format(token)
    if not hooked:  # SD3 never calls maybe_convert_prompt: expand <sunrise> as diffusers' hook does
        prompt = theirs.maybe_convert_prompt(prompt, theirs.tokenizer)
    ref = FAMILIES[family].encode(theirs, [prompt])
    # diffusers expands <sunrise> to <sunrise> <sunrise>_1 <sunrise>_2: the same vectors in the same places
    assert torch.allclose(mine["states"], ref["states"], atol=1e-6)
    plain = FAMILIES[family].encode(theirs, [PROMPT.format("")])
    assert not torch.allclose(mine["states"], plain["states"])


def test_diffusers_pools_at_a_soft_token_and_we_do_not(tmp_path):
    """The pooled-output trap: diffusers' SDXL text_embeds are read at the soft token; ours at end-of-text."""
    ours, theirs = tiny.build_sdxl(seed=0), tiny.build_sdxl(seed=0)
    soft = trained_like(ours, "sdxl")
    paths = soft.save(tmp_path / "pair", format="diffusers")
    load_soft_prompt(ours, soft)
    token = diffusers_load(theirs, "sdxl", paths)
    mine = FAMILIES["sdxl"].encode(ours, ["[v1][v2][v3] mountain view"])["pooled"]
    ref = FAMILIES["sdxl"].encode(theirs, [f"{token} mountain view"])["pooled"]
    assert not torch.allclose(mine, ref)
    ids = ours.tokenizer_2(
        "[v1][v2][v3] mountain view", padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    eos = (ids[0] == ours.tokenizer_2.eos_token_id).nonzero()[0].item()
    out = ours.text_encoder_2(ids)
    expected = ours.text_encoder_2.text_projection(out.last_hidden_state[0, eos])
    assert torch.allclose(mine[0], expected, atol=1e-6)


def test_sd3_pools_both_clips_at_end_of_text(tmp_path):
    """The pooled-output trap on SD3: both CLIPs' pooled projections (joined) are read at end-of-text with our
    loader; diffusers' loader leaves them at the highest id, a soft token."""
    ours, theirs = tiny.build_sd3(seed=0), tiny.build_sd3(seed=0)
    soft = trained_like(ours, "sd3")
    load_soft_prompt(ours, soft)
    token = diffusers_load(theirs, "sd3", soft.save(tmp_path / "s.safetensors", "onetrainer"))
    prompt = "[v1][v2][v3] mountain view"
    mine = FAMILIES["sd3"].encode(ours, [prompt])["pooled"]
    ref = FAMILIES["sd3"].encode(theirs, [theirs.maybe_convert_prompt(f"{token} mountain view", theirs.tokenizer)])
    assert not torch.allclose(mine, ref["pooled"])
    expected = []
    for tokenizer, encoder in ((ours.tokenizer, ours.text_encoder), (ours.tokenizer_2, ours.text_encoder_2)):
        ids = tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
        eos = (ids[0] == tokenizer.eos_token_id).nonzero()[0].item()
        expected.append(encoder.text_projection(encoder(ids).last_hidden_state[0, eos]))
    assert torch.allclose(mine[0], torch.cat(expected), atol=1e-5)
