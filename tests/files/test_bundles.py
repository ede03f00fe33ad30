"""Soft prompts bundled in LoRA files (bundle_emb.NAME.KEY): read as A1111/OneTrainer write them, written by
convert --to bundle with the LoRA untouched, loaded beside diffusers' load_lora_weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sd_softprompt import cli
from sd_softprompt.errors import FormatError, TokenCollisionError
from sd_softprompt.families import detect_family
from sd_softprompt.files.bundles import lora_weights
from sd_softprompt.files.convert import bundle_into_lora
from sd_softprompt.files.softprompt import SoftPrompt, load_bundle
from sd_softprompt.inject.loader import load_soft_prompt, loaded_soft_prompts, unload_soft_prompt
from sd_softprompt.models import tiny

peft = pytest.importorskip("peft")  # diffusers' load_lora_weights needs it; a [test]/[dev] dependency


def read_all(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata() or {})  # noqa: SIM118


def bits(tensor: torch.Tensor) -> bytes:
    return tensor.contiguous().view(torch.uint8).numpy().tobytes()


@pytest.fixture(scope="module")
def lora(tmp_path_factory) -> Path:
    """A real diffusers LoRA for the tiny SD1 UNet (peft adapter, non-zero weights), in fp16 as often shipped."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(0)
    pipe = tiny.build_sd(1)
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    pipe.unet.add_adapter(config)
    layers = {k: v.half() for k, v in convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet)).items()}
    folder = tmp_path_factory.mktemp("lora")
    type(pipe).save_lora_weights(folder, unet_lora_layers=layers)
    return folder / "pytorch_lora_weights.safetensors"


def soft(n=3, seed=0, name="<sunrise>", keys=(("clip_l", 32),), family="sd1") -> SoftPrompt:
    g = torch.Generator().manual_seed(seed)
    return SoftPrompt(
        {k: torch.randn(n, w, generator=g) * 0.4 for k, w in keys}, metadata={"name": name, "family": family}
    )


def unet_out(pipe) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x, states = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, 32, generator=g)
    with torch.no_grad():
        return pipe.unet(x, torch.tensor([10]), states).sample


def test_convert_to_bundle_keeps_the_lora_bit_for_bit_and_diffusers_loads_it(lora, tmp_path, capsys):
    source = tmp_path / "sunrise.safetensors"
    soft().save(source)
    out = tmp_path / "bundled.safetensors"
    assert cli.main(["convert", str(source), "--to", "bundle", "--lora", str(lora), "--out", str(out)]) == 0
    before, header_before = read_all(lora)
    after, header_after = read_all(out)
    assert set(after) == set(before) | {"bundle_emb.<sunrise>.clip_l"}
    for key, tensor in before.items():
        assert (
            after[key].dtype == tensor.dtype and after[key].shape == tensor.shape and bits(after[key]) == bits(tensor)
        )
    assert {k: header_after[k] for k in header_before} == header_before  # the LoRA's header kept
    assert json.loads(header_after["sd_softprompt.bundle_emb.<sunrise>"])["family"] == "sd1"
    assert torch.equal(after["bundle_emb.<sunrise>.clip_l"], soft().vectors["clip_l"])
    assert list(tmp_path.glob(".*.tmp")) == []  # written through a temp file

    # the LoRA weights: diffusers' load_lora_weights, given the file's LoRA tensors (it refuses a path whose
    # keys do not all contain "lora", which every bundle_emb.* key breaks), gives the same UNet as the original
    original, bundled, plain = tiny.build_sd(1), tiny.build_sd(1), tiny.build_sd(1)
    original.load_lora_weights(str(lora))
    bundled.load_lora_weights(lora_weights(out))
    assert torch.equal(unet_out(bundled), unet_out(original))
    assert not torch.equal(unet_out(bundled), unet_out(plain))  # the LoRA does something
    with pytest.raises(ValueError, match="lora"):
        plain.load_lora_weights(str(out))  # diffusers' own refusal, documented in the README

    # the soft prompt: our loader, from the same file; NAME in a prompt expands to its N tokens
    tokens = load_soft_prompt(bundled, str(out))
    assert tokens == ["<sunrise>", "<sunrise>_1", "<sunrise>_2"]
    (entry,) = loaded_soft_prompts(bundled)
    assert entry.source == f"{out}::<sunrise>" and entry.family == "sd1"
    encode = detect_family(bundled).encode
    via_name = encode(bundled, ["<sunrise> lake"])["states"]
    unload_soft_prompt(bundled)
    load_soft_prompt(bundled, soft(), tokens=["<x1>", "<x2>", "<x3>"])
    assert torch.equal(via_name, encode(bundled, ["<x1><x2><x3> lake"])["states"])
    unload_soft_prompt(bundled)
    # a bundle named like a vocabulary word would take that word over: refused unless asked for
    worded = bundle_into_lora(soft(name="sunrise"), lora, tmp_path / "worded.safetensors")
    with pytest.raises(TokenCollisionError, match="already the word 'sunrise'"):
        load_soft_prompt(bundled, str(worded))
    assert load_soft_prompt(bundled, str(worded), allow_shadowing=True)[0] == "sunrise"


def test_several_embeddings_in_one_bundle(lora, tmp_path, sd1, capsys):
    one = bundle_into_lora(soft(n=2, seed=1, name="dawn"), lora, tmp_path / "one.safetensors")
    two = bundle_into_lora(soft(n=1, seed=2, name="dusk"), one, tmp_path / "two.safetensors")
    bundled = load_bundle(two)
    assert list(bundled) == ["dawn", "dusk"]
    assert bundled["dawn"].tokens == ["dawn", "dawn_1"] and bundled["dusk"].tokens == ["dusk"]
    assert torch.equal(bundled["dawn"].vectors["clip_l"], soft(n=2, seed=1).vectors["clip_l"])
    with pytest.raises(FormatError, match=r"2 bundled embeddings \(dawn, dusk\).*--embedding"):
        SoftPrompt.load(two)
    # the loader takes them all, one entry each
    assert load_soft_prompt(sd1, str(two)) == ["dawn", "dawn_1", "dusk"]
    assert [e.source for e in loaded_soft_prompts(sd1)] == [f"{two}::dawn", f"{two}::dusk"]
    unload_soft_prompt(sd1, ["dawn", "dawn_1"])
    assert [e.source for e in loaded_soft_prompts(sd1)] == [f"{two}::dusk"]
    unload_soft_prompt(sd1)
    with pytest.raises(TokenCollisionError, match="bundles 2 soft prompts"):
        load_soft_prompt(sd1, str(two), tokens=["a", "b"])
    # convert picks one by name; a name already in the LoRA is refused
    out = tmp_path / "dusk.safetensors"
    assert cli.main(["convert", str(two), "--embedding", "dusk", "--to", "native", "--out", str(out)]) == 0
    assert torch.equal(SoftPrompt.load(out).vectors["clip_l"], soft(n=1, seed=2).vectors["clip_l"])
    capsys.readouterr()
    code = cli.main(
        ["convert", str(out), "--to", "bundle", "--lora", str(two), "--out", str(tmp_path / "x.safetensors")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "already holds a bundled embedding 'dusk'" in err[0]
    assert not (tmp_path / "x.safetensors").exists()
    # inspect lists each
    assert cli.main(["inspect", str(two)]) == 0
    assert "2 bundled soft prompt(s): dawn, dusk" in capsys.readouterr().out


def test_reads_onetrainer_and_a1111_bundle_keys(tmp_path):
    g = torch.Generator().manual_seed(0)
    lv, l_out, gw, h = (torch.randn(2, w, generator=g) for w in (768, 768, 1280, 1024))
    lora_key = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.randn(4, 8, generator=g)}
    path = tmp_path / "ot.safetensors"
    save_file(
        {
            **lora_key,
            "bundle_emb.<ot_sd1>.clip_l": lv,  # OneTrainer SD 1.5, with its output vectors
            "bundle_emb.<ot_sd1>.clip_l_out": l_out,
            "bundle_emb.ot_xl.clip_l": lv.clone(),  # OneTrainer / A1111 SDXL
            "bundle_emb.ot_xl.clip_g": gw,
            "bundle_emb.a1111.string_to_param.*": h,  # A1111's .pt layout, flattened (an SD2 embedding)
            "bundle_emb.ot_flux.clip_l": lv.clone(),  # OneTrainer Flux: T5 under "t5"
            "bundle_emb.ot_flux.t5": torch.randn(2, 4096, generator=g),
        },
        str(path),
    )
    bundled = load_bundle(path)
    assert set(bundled["<ot_sd1>"].vectors) == {"clip_l"} and torch.equal(bundled["<ot_sd1>"].vectors["clip_l"], lv)
    assert any("clip_l_out" in note for note in bundled["<ot_sd1>"].notes)
    assert bundled["<ot_sd1>"].tokens == ["<ot_sd1>", "<ot_sd1>_1"]
    assert bundled["ot_xl"].family == "sdxl" and torch.equal(bundled["ot_xl"].vectors["clip_g"], gw)
    assert set(bundled["a1111"].vectors) == {"clip_h"} and torch.equal(bundled["a1111"].vectors["clip_h"], h)
    assert set(bundled["ot_flux"].vectors) == {"clip_l", "t5xxl"}


def test_a_lora_without_bundle_and_bad_bundle_targets_get_one_line(lora, tmp_path, capsys):
    with pytest.raises(FormatError, match="a LoRA file without bundled embeddings.*load_lora_weights"):
        SoftPrompt.load(lora)
    source = tmp_path / "s.safetensors"
    soft().save(source)
    pt = tmp_path / "lora.pt"
    torch.save({"unet.x.lora_A.weight": torch.ones(2, 2)}, pt)
    cases = [
        (["convert", source, "--to", "bundle", "--out", tmp_path / "o.safetensors"], "needs --lora"),
        (["convert", source, "--to", "bundle", "--lora", pt, "--out", tmp_path / "o.safetensors"], "not a safetensors"),
        (
            ["convert", source, "--to", "bundle", "--lora", tmp_path / "no.safetensors", "--out", tmp_path / "o"],
            "no such",
        ),
        (["convert", source, "--to", "native", "--lora", lora, "--out", tmp_path / "o.safetensors"], "--lora is for"),
        (["convert", lora, "--to", "native", "--out", tmp_path / "o.safetensors"], "without bundled embeddings"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        code = cli.main([str(a) for a in argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0], (argv, err)
    assert not list(tmp_path.glob("o*"))
