import pytest
import torch

from sd_softprompt.errors import TokenCollisionError, WidthMismatchError
from sd_softprompt.families import detect_family
from sd_softprompt.files.softprompt import SoftPrompt
from sd_softprompt.inject.loader import load_soft_prompt, loaded_tokens, unload_soft_prompt


def soft_for(pipe, n=3, seed=0, scale=0.5) -> SoftPrompt:
    g = torch.Generator().manual_seed(seed)
    family = detect_family(pipe)
    vectors = {
        e.key: torch.randn(n, getattr(pipe, e.text_encoder).get_input_embeddings().weight.shape[1], generator=g) * scale
        for e in family.encoders
    }
    return SoftPrompt(vectors=vectors, metadata={"name": "sunrise", "family": family.name})


def encode(pipe, prompt):
    return detect_family(pipe).encode(pipe, [prompt])


def snapshot(pipe):
    family = detect_family(pipe)
    out = {}
    for e in family.encoders:
        tok = getattr(pipe, e.tokenizer)
        out[e.key] = (
            len(tok),
            tok.get_vocab(),
            (tok("[v1] mountain view").input_ids, tok.decode(tok("a photo of a lake").input_ids)),
            getattr(pipe, e.text_encoder).get_input_embeddings().weight.detach().clone(),
        )
    return out


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k][:3] == b[k][:3]
        assert a[k][3].shape == b[k][3].shape
        assert torch.equal(a[k][3], b[k][3])


def test_matches_diffusers_load_textual_inversion(sd1):
    soft = soft_for(sd1)
    ref = type(sd1)(**sd1.components)  # same modules: load into a twin after we're done
    load_soft_prompt(sd1, soft)
    ours = encode(sd1, "[v1][v2][v3] mountain view")["states"]
    unload_soft_prompt(sd1)
    ref.load_textual_inversion([v for v in soft.vectors["clip_l"]], token=["[v1]", "[v2]", "[v3]"])
    theirs = encode(ref, "[v1][v2][v3] mountain view")["states"]
    assert torch.equal(ours, theirs)
    # and the soft tokens really changed the encoding
    assert not torch.allclose(ours, encode(ref, "mountain view")["states"])


def test_with_and_without_spaces(sd1):
    load_soft_prompt(sd1, soft_for(sd1))
    a = sd1.tokenizer("[v1][v2][v3] mountain view").input_ids
    b = sd1.tokenizer("[v1] [v2] [v3] mountain view").input_ids
    ids = sd1.tokenizer.convert_tokens_to_ids(["[v1]", "[v2]", "[v3]"])
    assert a == b and a[1:4] == ids
    assert torch.equal(
        encode(sd1, "[v1][v2][v3] mountain view")["states"], encode(sd1, "[v1] [v2] [v3] mountain view")["states"]
    )


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl", "flux", "sd3"])
def test_unload_restores_exactly_and_repeats(family, request):
    pipe = request.getfixturevalue(family)
    before = snapshot(pipe)
    enc_before = encode(pipe, "[v1] mountain view")
    for i in range(3):
        load_soft_prompt(pipe, soft_for(pipe, seed=i))
        assert loaded_tokens(pipe) == ["[v1]", "[v2]", "[v3]"]
        assert not torch.equal(encode(pipe, "[v1] mountain view")["states"], enc_before["states"])
        unload_soft_prompt(pipe)
        assert_same(snapshot(pipe), before)
    assert torch.equal(encode(pipe, "[v1] mountain view")["states"], enc_before["states"])


def test_unload_some_keeps_the_others(sd1):
    a = soft_for(sd1, n=2, seed=1)
    b = soft_for(sd1, n=2, seed=2)
    load_soft_prompt(sd1, a, tokens=["<a1>", "<a2>"])
    load_soft_prompt(sd1, b, tokens=["<b1>", "<b2>"])
    want = encode(sd1, "<b1><b2> lake")["states"]
    unload_soft_prompt(sd1, ["<a1>", "<a2>"])
    assert loaded_tokens(sd1) == ["<b1>", "<b2>"]
    assert torch.equal(encode(sd1, "<b1><b2> lake")["states"], want)
    assert "<a1>" not in sd1.tokenizer.get_vocab()


def test_collision_refused_and_pipeline_untouched(sd1):
    load_soft_prompt(sd1, soft_for(sd1, seed=1))
    before = snapshot(sd1)
    with pytest.raises(TokenCollisionError, match=r"\[v1\]"):
        load_soft_prompt(sd1, soft_for(sd1, seed=2))
    assert_same(snapshot(sd1), before)
    # replace=True swaps the vectors
    new = soft_for(sd1, seed=2)
    load_soft_prompt(sd1, new, replace=True)
    row = sd1.text_encoder.get_input_embeddings().weight[sd1.tokenizer.convert_tokens_to_ids("[v1]")]
    assert torch.equal(row, new.vectors["clip_l"][0])


def test_existing_word_collision(sd1):
    soft = soft_for(sd1, n=1)
    with pytest.raises(TokenCollisionError, match="mountain"):
        load_soft_prompt(sd1, soft, tokens=["mountain</w>"])


def test_width_mismatch_refused_and_pipeline_untouched(sd1, sdxl):
    before = snapshot(sd1)
    wrong = soft_for(sdxl)  # clip_l + clip_g
    with pytest.raises(WidthMismatchError, match="clip_g"):
        load_soft_prompt(sd1, wrong)
    narrow = SoftPrompt(vectors={"clip_l": torch.randn(2, 768)})
    with pytest.raises(WidthMismatchError, match=r"768 wide.*32 wide"):
        load_soft_prompt(sd1, narrow)
    assert_same(snapshot(sd1), before)
    assert loaded_tokens(sd1) == []


def test_single_tensor_goes_to_encoder_of_its_width(sdxl):
    g_width = sdxl.text_encoder_2.get_input_embeddings().weight.shape[1]
    soft = SoftPrompt(vectors={"*": torch.randn(2, g_width)})
    load_soft_prompt(sdxl, soft)
    assert "[v1]" in sdxl.tokenizer_2.get_vocab() and "[v1]" not in sdxl.tokenizer.get_vocab()


def test_fp16_pipeline(sd1):
    sd1.to(dtype=torch.float16)
    soft = soft_for(sd1)
    load_soft_prompt(sd1, soft)
    emb = sd1.text_encoder.get_input_embeddings().weight
    assert emb.dtype == torch.float16
    row = emb[sd1.tokenizer.convert_tokens_to_ids("[v2]")]
    assert torch.equal(row, soft.vectors["clip_l"][1].half())
    unload_soft_prompt(sd1)
    assert sd1.text_encoder.get_input_embeddings().weight.dtype == torch.float16


def test_pooled_output_at_end_of_text_with_legacy_config(sdxl):
    assert sdxl.text_encoder_2.config.eos_token_id == 2  # the legacy config of the real checkpoints
    prompt = "[v1][v2][v3] mountain view"
    load_soft_prompt(sdxl, soft_for(sdxl))
    ids = sdxl.tokenizer_2(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
    eos_pos = (ids[0] == sdxl.tokenizer_2.eos_token_id).nonzero()[0].item()
    out = sdxl.text_encoder_2(ids, output_hidden_states=True)
    # pooled = projection of the final-norm state at end-of-text, not at the highest id (a soft token)
    assert ids[0].argmax().item() != eos_pos
    expected = sdxl.text_encoder_2.text_projection(out.last_hidden_state[0, eos_pos])
    assert torch.allclose(out.text_embeds[0], expected, atol=1e-6)
    pooled = encode(sdxl, prompt)["pooled"][0]
    assert torch.allclose(pooled, expected, atol=1e-6)
    unload_soft_prompt(sdxl)
    assert sdxl.text_encoder_2.text_model.eos_token_id == 2


def test_flux_t5_vectors_change_prompt_embeds(flux):
    soft = soft_for(flux)
    load_soft_prompt(flux, soft)
    assert flux.tokenizer_2.tokenize("[v1][v2][v3] mountain") == ["[v1]", "[v2]", "[v3]", "▁mountain"]
    a = encode(flux, "[v1][v2][v3] mountain view")
    unload_soft_prompt(flux)
    soft.vectors["t5xxl"] = soft.vectors["t5xxl"] + 1.0
    load_soft_prompt(flux, soft)
    b = encode(flux, "[v1][v2][v3] mountain view")
    assert not torch.allclose(a["states"], b["states"])
    assert torch.equal(a["pooled"], b["pooled"])  # CLIP untouched


def test_prompt_overflow_counts_soft_tokens(sd1):
    from sd_softprompt.inject.loader import prompt_overflow

    load_soft_prompt(sd1, soft_for(sd1, n=3))
    words = " ".join(["lake"] * 73)  # 73 words + 3 soft tokens = 76 > 75 positions between start and end
    assert prompt_overflow(sd1, "[v1][v2][v3] " + " ".join(["lake"] * 72)) == []
    (warning,) = prompt_overflow(sd1, "[v1][v2][v3] " + words)
    assert "76 tokens" in warning and "3 of them soft" in warning and "last 1 were cut" in warning


@pytest.mark.parametrize("family", ["sd1", "sdxl", "flux"])
def test_alias_expands_to_all_tokens(family, request):
    pipe = request.getfixturevalue(family)
    plain = encode(pipe, "<sunrise> mountain view")["states"]
    load_soft_prompt(pipe, soft_for(pipe), alias="<sunrise>")
    via_alias = encode(pipe, "<sunrise> mountain view")["states"]
    assert torch.equal(via_alias, encode(pipe, "[v1][v2][v3] mountain view")["states"])
    assert not torch.allclose(via_alias, plain)
    unload_soft_prompt(pipe)
    assert "maybe_convert_prompt" not in pipe.__dict__
    assert torch.equal(encode(pipe, "<sunrise> mountain view")["states"], plain)


def test_in_memory_soft_prompt_is_validated(sd1):
    from sd_softprompt.errors import InvalidVectorsError

    bad = SoftPrompt(vectors={"clip_l": torch.tensor([[float("nan")] * 32])})
    with pytest.raises(InvalidVectorsError, match="non-finite|NaN|finite"):
        load_soft_prompt(sd1, bad)
    assert loaded_tokens(sd1) == []


def test_alias_refused_where_the_pipeline_has_no_prompt_hook(sd3):
    from sd_softprompt.errors import ConfigError

    with pytest.raises(ConfigError, match="StableDiffusion3Pipeline has no prompt hook"):
        load_soft_prompt(sd3, soft_for(sd3), alias="<sunrise>")
    assert loaded_tokens(sd3) == []
