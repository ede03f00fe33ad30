"""Families that condition on a decoder-only language model (Sana, Lumina 2): prompt tuning inside an image model.

On each tiny pipeline (the real diffusers/transformers classes, random weights, tokenizers built in memory with
the real structure): the loader gives the states of vectors placed by hand where the prompt's words go, never in
the pipeline's template; unload restores the encoder and the tokenizer; added tokens survive the merges; text
mode beats the baselines, images mode lowers its fixed-batch loss; grid, inspect and convert run."""

from __future__ import annotations

import json

import pytest
import torch

from sd_softprompt import cli
from sd_softprompt.families import FAMILIES, detect_family
from sd_softprompt.families.flux2_klein import klein_state_ids
from sd_softprompt.families.lumina2 import PROMPT_START, lumina2_state_ids
from sd_softprompt.families.qwen_image import qwen_image_state_ids
from sd_softprompt.families.sana import instruction, sana_state_ids
from sd_softprompt.files.softprompt import SoftPrompt
from sd_softprompt.inject.loader import load_soft_prompt, unload_soft_prompt
from sd_softprompt.models.tiny_llm import QWEN3_CHAT_TEMPLATE
from sd_softprompt.train import TrainConfig, train

HARD = "image of serene landscape at sunrise with trees mountains and lake"
FAST = ["--steps", "2", "--height", "64", "--width", "64"]


def _sana_expected(pipe, prompt: str, table: torch.Tensor, soft: dict[int, torch.Tensor]) -> torch.Tensor:
    """Sana's states built by hand: the pipeline's tokens of instruction + prompt, embedded from the table the
    model came with except the soft tokens' rows, through Gemma with the mask, <bos> and the last 299 kept."""
    chi = "\n".join(instruction(pipe))
    window = 300
    length = len(pipe.tokenizer.encode(chi)) + window - 2
    tok = pipe.tokenizer(chi + prompt, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    ids = tok.input_ids[0]
    embeds = torch.stack([soft[int(i)] if int(i) in soft else table[int(i)] for i in ids])[None]
    states = pipe.text_encoder(inputs_embeds=embeds, attention_mask=tok.attention_mask)[0]
    keep = [0, *range(length - window + 1, length)]
    return states[:, keep]


def _embed(ids: torch.Tensor, table: torch.Tensor, soft: dict[int, torch.Tensor]) -> torch.Tensor:
    return torch.stack([soft[int(i)] if int(i) in soft else table[int(i)] for i in ids])[None]


def _lumina2_expected(pipe, prompt: str, table: torch.Tensor, soft: dict[int, torch.Tensor]) -> torch.Tensor:
    """Lumina 2's states built by hand: system prompt, separator, prompt padded on the right to 256 tokens,
    through Gemma with the mask, the penultimate layer's states."""
    text = pipe.system_prompt + PROMPT_START + prompt
    tok = pipe.tokenizer(text, padding="max_length", max_length=256, truncation=True, return_tensors="pt")
    out = pipe.text_encoder(
        inputs_embeds=_embed(tok.input_ids[0], table, soft),
        attention_mask=tok.attention_mask,
        output_hidden_states=True,
    )
    return out.hidden_states[-2]


def _qwen_image_expected(pipe, prompt: str, table: torch.Tensor, soft: dict[int, torch.Tensor]) -> torch.Tensor:
    """Qwen-Image's states built by hand: the chat template around the prompt through Qwen2.5-VL, the last
    layer's states, the template's first 34 positions dropped, zeros after the prompt to the family's window."""
    tok = pipe.tokenizer(pipe.prompt_template_encode.format(prompt), return_tensors="pt")
    out = pipe.text_encoder(
        inputs_embeds=_embed(tok.input_ids[0], table, soft),
        attention_mask=tok.attention_mask,
        output_hidden_states=True,
    )
    states = out.hidden_states[-1][:, 34:]
    return torch.nn.functional.pad(states, (0, 0, 0, 64 - states.shape[1]))  # the tiny window: 64


def _klein_expected(pipe, prompt: str, table: torch.Tensor, soft: dict[int, torch.Tensor]) -> torch.Tensor:
    """Flux.2 Klein's states built by hand: Qwen3's chat template (thinking off) padded on the right to the
    window, through Qwen3 with the mask, layers 9, 18 and 27 side by side at each position."""
    text = QWEN3_CHAT_TEMPLATE.replace("{{ message['role'] }}", "user").replace("{{ message['content'] }}", prompt)
    text = text.split("{% endfor %}")[0].split("%}")[-1] + "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    tok = pipe.tokenizer(text, padding="max_length", max_length=48, truncation=True, return_tensors="pt")  # tiny
    out = pipe.text_encoder(
        inputs_embeds=_embed(tok.input_ids[0], table, soft),
        attention_mask=tok.attention_mask,
        output_hidden_states=True,
    )
    return torch.cat([out.hidden_states[k] for k in (9, 18, 27)], dim=-1)


# family -> (its ComfyUI/native key, real width, hand-built states, the ids its states stand on)
CASES = {
    "sana": ("gemma2_2b", 2304, _sana_expected, sana_state_ids),
    "lumina2": ("gemma2_2b", 2304, _lumina2_expected, lumina2_state_ids),
}
# Qwen encoders
CASES |= {
    "qwen_image": ("qwen25_7b", 3584, _qwen_image_expected, qwen_image_state_ids),
    "flux2_klein": ("qwen3_4b", 2560, _klein_expected, klein_state_ids),
}


TEXT_STEPS = {"sana": 30, "lumina2": 80}  # a step costs Sana's long instruction 4x Lumina 2's system prompt
TEXT_STEPS |= {"qwen_image": 80, "flux2_klein": 30}
# soft / first-N bound: 0.6 but on the tiny Qwen-Image, where the first three words already take D half the way
# from the empty prompt to the hard one and three vectors settle at ~0.63 of them (the same from lr 5e-3 to 5e-2,
# 80 to 150 steps, hard or random init: an optimum, not a slow start)
FIRST_N_BOUND = {"qwen_image": 0.8}


@pytest.fixture(params=list(CASES))
def case(request):
    return request.param, request.getfixturevalue(request.param)


def test_detected_with_its_key_and_real_width(case):
    name, pipe = case
    key, width, _, _ = CASES[name]
    family = detect_family(pipe)
    assert family.name == name and family.keys == (key,) and family.encoders[0].width == width
    # no textual-inversion loader in diffusers for these pipelines: files are native (ComfyUI keys) only, and
    # --to comfyui where ComfyUI reads embeddings for the model (Lumina 2, Flux.2 Klein; not Sana, not Qwen-Image)
    comfy = ("comfyui",) if name in ("lumina2", "flux2_klein") else ()
    assert not hasattr(pipe, "load_textual_inversion") and family.formats == ("native", *comfy)


def test_loaded_states_equal_vectors_placed_by_hand_and_unload_restores(case):
    name, pipe = case
    key, _, expected, _ = CASES[name]
    family = FAMILIES[name]
    g = torch.Generator().manual_seed(0)
    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    vectors = torch.randn(3, width, generator=g)
    before = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    table = pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    vocab_before, text = pipe.tokenizer.get_vocab(), "x[v1]y [v2][v3] mountain view"
    ids_before = pipe.tokenizer(text).input_ids

    tokens = load_soft_prompt(pipe, SoftPrompt({key: vectors}))
    soft = dict(zip(pipe.tokenizer.convert_tokens_to_ids(tokens), vectors))
    with torch.no_grad():
        got = family.encode(pipe, [text])
        want = expected(pipe, text, table, soft)
    assert got["states"].shape == want.shape
    torch.testing.assert_close(got["states"], want, rtol=1e-5, atol=1e-5)

    unload_soft_prompt(pipe)
    after = pipe.text_encoder.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
    assert pipe.tokenizer.get_vocab() == vocab_before and pipe.tokenizer(text).input_ids == ids_before


def test_soft_tokens_survive_merges_and_sit_where_the_words_do(case):
    name, pipe = case
    key, _, _, state_ids = CASES[name]
    family = FAMILIES[name]
    rows, width = pipe.text_encoder.get_input_embeddings().weight.shape
    tokens = load_soft_prompt(pipe, SoftPrompt({key: torch.randn(2, width)}))
    ids = pipe.tokenizer.convert_tokens_to_ids(tokens)
    assert len(set(ids)) == 2 and min(ids) >= rows  # new rows, one token each
    for prompt in ("[v1][v2]", "lake[v1]x[v2]y", "a [v1] [v2]."):
        assert pipe.tokenizer(prompt, add_special_tokens=False).input_ids.count(ids[0]) == 1, prompt
    prompt = "lake[v1]x[v2] mountain view"
    states_ids = state_ids(pipe, prompt)
    start, n = family.prompt_span(pipe, prompt)
    # in the prompt's part of the states, none in the template's
    assert [states_ids.index(i) for i in ids] == sorted(states_ids.index(i) for i in ids)
    assert all(start <= states_ids.index(i) < start + n for i in ids)
    # the template's positions before the prompt: the same states whatever the prompt (the pipeline's own)
    with torch.no_grad():
        soft, hard = family.encode(pipe, [prompt, "red house on a hill"])["states"]
        alone = family.encode(pipe, [prompt])
    if "mask" in alone:  # the states stand on those ids (Klein passes no mask: its padding's states count)
        assert int(alone["mask"][0].sum()) == len(states_ids)
    torch.testing.assert_close(alone["states"][0], soft, rtol=1e-5, atol=1e-5)  # the same in any batch
    assert torch.equal(soft[:start], hard[:start]) and not torch.allclose(
        soft[start : start + n], hard[start : start + n]
    )
    unload_soft_prompt(pipe)


def test_text_mode_beats_baselines(case, tmp_path):
    name, pipe = case
    cfg = TrainConfig(
        model=f"tiny-{name}",
        out=str(tmp_path / "s.safetensors"),
        target=HARD,
        vectors=3,
        steps=TEXT_STEPS[name],
        progress=False,
        probe_size=64,
        eval_samples=6,
        checkpoint_every=0,
    )
    result = train(cfg, pipe=pipe)
    soft = SoftPrompt.load(result.soft_prompt)
    assert set(soft.vectors) == set(FAMILIES[name].keys) and soft.metadata["family"] == name
    for where in ("alone", "composed"):
        d = result.metrics["distance"][where]
        assert d["ratio_to_first_n_words"] < FIRST_N_BOUND.get(name, 0.6) and d["ratio_to_empty"] < 0.5, (where, d)


def test_images_mode_lowers_its_fixed_batch_loss(case, images_mode_fixed_batch):
    name, pipe = case
    fixed = images_mode_fixed_batch(pipe, name)
    assert fixed["after"] < fixed["before"], fixed


@pytest.mark.parametrize("name", list(CASES))
def test_grid_inspect_convert(name, tiny_dirs, tmp_path, capsys):
    key, _, _, _ = CASES[name]
    model = tiny_dirs(name)
    soft = tmp_path / "s.safetensors"
    SoftPrompt({key: torch.randn(2, 32, generator=torch.Generator().manual_seed(0))}).save(soft)
    out = tmp_path / "grid.png"
    argv = ["grid", "--model", model, "--soft", soft, "--prompt", "[v1][v2] lake", "--seeds", "0", *FAST, "--out", out]
    assert cli.main([str(a) for a in argv]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["family"] == name and record["guidance"] == FAMILIES[name].guidance
    capsys.readouterr()
    assert cli.main(["inspect", str(soft), "--model", model, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"]["family"] == name and report["encoders"][0]["text_encoder"] == "text_encoder"
    assert cli.main(["convert", str(soft), "--to", "native", "--out", str(tmp_path / "c.safetensors")]) == 0
    assert torch.equal(SoftPrompt.load(tmp_path / "c.safetensors").vectors[key], SoftPrompt.load(soft).vectors[key])
    assert cli.main(["convert", str(soft), "--to", "a1111", "--out", str(tmp_path / "c.pt")]) != 0  # no A1111 here


def test_a_key_two_families_share_names_neither_and_shared_widths_keep_the_first_key():
    from sd_softprompt.files.keys import FAMILY_BY_KEYS, WIDTH_TO_KEY

    # Sana and Lumina 2 both read Gemma 2 2B: a bare gemma2_2b file's family comes from metadata or the pipeline
    assert SoftPrompt({"gemma2_2b": torch.zeros(1, 2304)}).family is None
    assert SoftPrompt({"gemma2_2b": torch.zeros(1, 2304)}, metadata={"family": "lumina2"}).family == "lumina2"
    assert frozenset({"clip_l", "t5xxl"}) in FAMILY_BY_KEYS and WIDTH_TO_KEY[4096] == "t5xxl"
    assert WIDTH_TO_KEY[2304] == "gemma2_2b"
