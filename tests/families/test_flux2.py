"""Flux.2 [dev] (Flux2Pipeline: Mistral 3 behind a processor, the system message and chat template around the
prompt, padding on the left): what tests/families/test_llm_families.py and test_qwen_families.py show of the
other LLM families, on the tiny pipeline (the real diffusers/transformers classes, random weights, a tokenizer
built in memory; a text-only stand-in for the PixtralProcessor, whose image side needs torchvision).

The loader gives the states of vectors placed by hand where the prompt's words go; unload restores the encoder
and the tokenizer inside the processor bit for bit; the soft tokens stay one token each in the template and sit
between [INST] and [/INST], not in the system turn; text mode beats the baselines and images mode lowers its
fixed-batch loss; one denoising step of the unmodified pipeline is the family's `predict`; grid, inspect and
convert (native and ComfyUI's key) run."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE

from sd_softprompt import cli
from sd_softprompt.errors import ConfigError
from sd_softprompt.families import FAMILIES, detect_family, tokenizer_of
from sd_softprompt.families.flux2 import flux2_state_ids
from sd_softprompt.files.softprompt import SoftPrompt
from sd_softprompt.inject.loader import load_soft_prompt, unload_soft_prompt
from sd_softprompt.train import TrainConfig, train

HARD = "image of serene landscape at sunrise with trees mountains and lake"
FAST = ["--steps", "2", "--height", "64", "--width", "64"]
WINDOW = 64  # the tiny tokenizer's (the pipeline's default: 512)
FAMILY = FAMILIES["flux2"]


def _expected(pipe, prompt: str, table: torch.Tensor, soft: dict[int, torch.Tensor]) -> torch.Tensor:
    """The states built by hand: Mistral 3's chat template of the system message and the prompt, padded on the
    left to the window, embedded from the table the model came with except the soft tokens' rows, through the
    language model with the mask, layers 10, 20 and 30 side by side at each position."""
    text = f"<s>[SYSTEM_PROMPT]{SYSTEM_MESSAGE}[/SYSTEM_PROMPT][INST]{prompt}[/INST]"
    tokenizer = pipe.tokenizer.tokenizer
    tok = tokenizer(text, add_special_tokens=False, padding="max_length", max_length=WINDOW, return_tensors="pt")
    assert tok.input_ids[0, 0] == tokenizer.pad_token_id  # padded on the left
    embeds = torch.stack([soft[int(i)] if int(i) in soft else table[int(i)] for i in tok.input_ids[0]])[None]
    out = pipe.text_encoder(
        inputs_embeds=embeds, attention_mask=tok.attention_mask, output_hidden_states=True, use_cache=False
    )
    return torch.cat([out.hidden_states[k] for k in (10, 20, 30)], dim=-1)


def test_detected_with_comfyuis_key_and_the_real_width(flux2):
    from sd_softprompt.files.keys import FAMILY_BY_KEYS, WIDTH_TO_KEY

    family = detect_family(flux2)
    assert family is FAMILY and family.keys == ("mistral3_24b",) and family.encoders[0].width == 5120
    # no textual-inversion loader in diffusers for this pipeline: native files, and ComfyUI's (its Flux.2
    # tokenizer reads embeddings under mistral3_24b)
    assert not hasattr(flux2, "load_textual_inversion") and family.formats == ("native", "comfyui")
    assert FAMILY_BY_KEYS[frozenset({"mistral3_24b"})] == "flux2" and WIDTH_TO_KEY[5120] == "mistral3_24b"
    # the pipeline keeps a processor as its tokenizer; soft tokens go into the tokenizer inside it
    assert tokenizer_of(flux2, "tokenizer") is flux2.tokenizer.tokenizer is not flux2.tokenizer


def test_loaded_states_equal_vectors_placed_by_hand_and_unload_restores(flux2):
    pipe = flux2
    vectors = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    table = pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    tokenizer = pipe.tokenizer.tokenizer
    vocab_before, text = tokenizer.get_vocab(), "x[v1]y [v2][v3] mountain view"
    ids_before = tokenizer(text).input_ids

    tokens = load_soft_prompt(pipe, SoftPrompt({"mistral3_24b": vectors}))
    assert pipe.tokenizer.tokenizer is tokenizer  # the processor still holds the same tokenizer
    soft = dict(zip(tokenizer.convert_tokens_to_ids(tokens), vectors))
    with torch.no_grad():
        got = FAMILY.encode(pipe, [text])
        want = _expected(pipe, text, table, soft)
    assert got["states"].shape == want.shape == (1, WINDOW, 96)
    torch.testing.assert_close(got["states"], want, rtol=1e-5, atol=1e-5)

    unload_soft_prompt(pipe)
    after = pipe.text_encoder.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
    assert pipe.tokenizer.tokenizer is tokenizer
    assert tokenizer.get_vocab() == vocab_before and tokenizer(text).input_ids == ids_before
    assert "[v1]" not in flux2_state_ids(pipe, "[v1]")  # the processor's template tokenizes without them again


def test_soft_tokens_stay_whole_in_the_template_and_sit_in_the_user_turn(flux2):
    pipe = flux2
    tokenizer = pipe.tokenizer.tokenizer
    rows = pipe.text_encoder.get_input_embeddings().weight.shape[0]
    tokens = load_soft_prompt(pipe, SoftPrompt({"mistral3_24b": torch.randn(2, 32)}))
    ids = tokenizer.convert_tokens_to_ids(tokens)
    assert len(set(ids)) == 2 and min(ids) >= rows  # new rows
    prompt = "lake[v1]x[v2] mountain view"
    state_ids = flux2_state_ids(pipe, prompt)  # through the processor's own apply_chat_template
    assert len(state_ids) == WINDOW and all(state_ids.count(i) == 1 for i in ids)  # one token each, BPE kept out
    start, n = FAMILY.prompt_span(pipe, prompt)
    names = tokenizer.convert_ids_to_tokens(state_ids)
    # the prompt between [INST] and [/INST], the system turn before it, the padding on the left
    assert names[start - 1] == "[INST]" and names[start + n :] == ["[/INST]"] and start + n + 1 == WINDOW
    assert names[start : start + n] == ["lake", "[v1]", "x", "[v2]", "Ġmountain", "Ġview"]
    system = names.index("[SYSTEM_PROMPT]")
    assert names[system - 1] == "<s>" and set(names[: system - 1]) == {"<pad>"}
    assert all(start <= state_ids.index(i) < start + n for i in ids)
    # the states: the template's head the same whatever the prompt (at its place after the padding), the
    # prompt's positions not; the same in any batch
    with torch.no_grad():
        soft, hard = FAMILY.encode(pipe, [prompt, "red house on a hill"])["states"]
        alone = FAMILY.encode(pipe, [prompt])["states"][0]
    torch.testing.assert_close(alone, soft, rtol=1e-5, atol=1e-5)
    hard_start, _ = FAMILY.prompt_span(pipe, "red house on a hill")
    head = start - system + 1  # <s> [SYSTEM_PROMPT] ... [INST]
    torch.testing.assert_close(soft[start - head : start], hard[hard_start - head : hard_start], rtol=0, atol=1e-6)
    assert not torch.allclose(soft[start : start + n], hard[hard_start : hard_start + n], atol=1e-3)
    assert FAMILY.prompt_window(pipe) == WINDOW - (head + 1)  # all but the template's tokens
    unload_soft_prompt(pipe)


# soft / baseline bounds: 0.9 and 0.6 here (0.6 and 0.5 elsewhere). Left padding moves the whole template by the
# prompt's token count, and the tiny random DiT reads text by absolute position: most of D between prompts of
# different lengths is that shift, which 3 vectors for an 11-token prompt share with the first 3 words (the
# same tiny tokenizer padding on the right gives 0.168 / 0.087 alone, 0.300 / 0.146 composed).
FIRST_N_BOUND, EMPTY_BOUND = 0.9, 0.6


def test_text_mode_beats_baselines(flux2, tmp_path):
    cfg = TrainConfig(
        model="tiny-flux2",
        out=str(tmp_path / "s.safetensors"),
        target=HARD,
        vectors=3,
        steps=30,
        progress=False,
        probe_size=64,
        eval_samples=6,
        checkpoint_every=0,
    )
    result = train(cfg, pipe=flux2)
    soft = SoftPrompt.load(result.soft_prompt)
    assert set(soft.vectors) == {"mistral3_24b"} and soft.metadata["family"] == "flux2"
    for where in ("alone", "composed"):
        d = result.metrics["distance"][where]
        assert d["ratio_to_first_n_words"] < FIRST_N_BOUND and d["ratio_to_empty"] < EMPTY_BOUND, (where, d)


def test_the_state_losses_are_refused_the_prompt_moves_with_its_length(flux2, tmp_path):
    cfg = TrainConfig(model="tiny-flux2", out=str(tmp_path / "s.safetensors"), target=HARD, vectors=3, steps=2,
                      loss="sequence", progress=False, checkpoint_every=0)  # fmt: skip
    with pytest.raises(ConfigError, match="pads on the left.*use --loss denoiser"):
        train(cfg, pipe=flux2)


def test_images_mode_lowers_its_fixed_batch_loss(flux2, images_mode_fixed_batch):
    fixed = images_mode_fixed_batch(flux2, "flux2")
    assert fixed["after"] < fixed["before"], fixed


def test_predict_is_the_pipelines_own_denoising_step(flux2):
    """An Euler step of the unmodified pipeline (embedded guidance 4.0, its default), with soft tokens in the
    prompt, is x + dsigma * predict."""
    pipe = flux2
    load_soft_prompt(pipe, SoftPrompt({"mistral3_24b": torch.randn(2, 32, generator=torch.Generator().manual_seed(1))}))
    prompt = "[v1][v2] lake at sunrise"
    x = torch.randn(1, *FAMILY.latent_shape(pipe, 64, 64), generator=torch.Generator().manual_seed(0))
    b, c, h, w = x.shape
    seen = []

    def keep(p, i, t, tensors):
        seen.append(tensors["latents"].clone())
        return {}

    pipe(prompt=prompt, latents=x, num_inference_steps=2, height=64, width=64, output_type="latent",
         max_sequence_length=WINDOW, callback_on_step_end=keep)  # fmt: skip
    after = seen[0].permute(0, 2, 1).reshape(b, c, h, w)
    sigma, sigma_next = pipe.scheduler.sigmas[:2]
    with torch.no_grad():
        v = FAMILY.predict(pipe, x, sigma.reshape(1), FAMILY.encode(pipe, [prompt]))
    torch.testing.assert_close(after, x + (sigma_next - sigma) * v, rtol=1e-4, atol=1e-5)


def test_latents_are_the_pipelines_reference_image_latents(flux2):
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        ours = FAMILY.vae_latents(flux2, image)
        theirs = flux2._encode_vae_image(image, generator=None)
    torch.testing.assert_close(ours, theirs)
    assert ours.shape[1:] == FAMILY.latent_shape(flux2, 64, 64)


def test_guidance_distilled_no_negative_prompt(flux2):
    assert FAMILY.guidance == 4.0 and FAMILY.guidance_arg == "guidance_scale"
    assert flux2.transformer.config.guidance_embeds and FAMILY.no_negative(flux2, 2) is None
    assert FAMILY.call_kwargs(flux2, None) == {"max_sequence_length": WINDOW}
    with pytest.raises(ConfigError, match="guidance-distilled"):
        FAMILY.call_kwargs(flux2, "blurry")


def test_long_prompts_are_encoded_whole(flux2):
    long = " ".join([HARD] * 4)  # 44 prompt tokens, past the tiny window's 32
    start, n = FAMILY.prompt_span(flux2, long)
    assert n == 44 > FAMILY.prompt_window(flux2) and start == 31  # no padding: the template's head first
    with torch.no_grad():
        cut, whole = FAMILY.encode(flux2, [long])["states"], FAMILY.encode_long(flux2, [long])["states"]
    assert cut.shape[1] == WINDOW and whole.shape[1] == n + WINDOW - FAMILY.prompt_window(flux2)  # no padding


def test_grid_inspect_convert(tiny_dirs, tmp_path, capsys):
    model = tiny_dirs("flux2")  # saved with save_pretrained, loaded back by the CLI
    soft = tmp_path / "s.safetensors"
    SoftPrompt({"mistral3_24b": torch.randn(2, 32, generator=torch.Generator().manual_seed(0))}).save(soft)
    out = tmp_path / "grid.png"
    argv = ["grid", "--model", model, "--soft", soft, "--prompt", "[v1][v2] lake", "--seeds", "0", *FAST, "--out", out]
    assert cli.main([str(a) for a in argv]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["family"] == "flux2" and record["guidance"] == 4.0
    capsys.readouterr()
    assert cli.main(["inspect", str(soft), "--model", model, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"]["family"] == "flux2" and report["encoders"][0]["text_encoder"] == "text_encoder"
    vectors = SoftPrompt.load(soft).vectors["mistral3_24b"]
    for target in ("comfyui", "native"):  # ComfyUI's file, and back
        written = tmp_path / f"{target}.safetensors"
        assert cli.main(["convert", str(soft), "--to", target, "--out", str(written)]) == 0
        assert torch.equal(SoftPrompt.load(written).vectors["mistral3_24b"], vectors)
        soft = written
    assert cli.main(["convert", str(soft), "--to", "a1111", "--out", str(tmp_path / "c.pt")]) != 0  # no A1111 here


def test_hub_id_gets_bf16_where_the_gpu_has_it():
    from sd_softprompt.models.pipeline import _pipeline_class, resolve_dtype

    assert resolve_dtype(None, "mps", _pipeline_class("black-forest-labs/FLUX.2-dev", None)) == torch.bfloat16
