"""inspect_file / format_inspection: file facts, vocabulary norm stats, nearest tokens."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from sd_softprompt.errors import FormatError, WidthMismatchError
from sd_softprompt.files.softprompt import SoftPrompt
from sd_softprompt.inject.inspection import format_inspection, inspect_file, readable_token
from sd_softprompt.inject.loader import load_soft_prompt


def _row(pipe, tokenizer: str, encoder: str, text: str) -> torch.Tensor:
    """The input embedding row of a whole-word token."""
    tok = getattr(pipe, tokenizer)
    (token_id,) = tok(text, add_special_tokens=False).input_ids
    return getattr(pipe, encoder).get_input_embeddings().weight.detach()[token_id].clone()


def _write(path, vectors, **metadata):
    SoftPrompt(vectors, metadata=metadata).save(path)
    return path


def test_without_a_pipeline(tmp_path):
    vectors = torch.tensor([[3.0, 4.0] + [0.0] * 30, [0.0, 0.0, 1.0] + [0.0] * 29])
    path = _write(tmp_path / "two.safetensors", {"clip_l": vectors}, name="two", steps="10")
    report = inspect_file(path)
    assert report["format"] == "native" and report["family"] == "sd1"
    assert report["tokens"] == ["[v1]", "[v2]"] and report["num_vectors"] == 2
    assert report["metadata"]["steps"] == "10" and report["name"] == "two"
    (entry,) = report["encoders"]
    assert entry["key"] == "clip_l" and entry["shape"] == [2, 32]
    assert entry["norms"] == pytest.approx([5.0, 1.0])
    assert "vocab" not in entry and "model" not in report
    json.dumps(report)  # plain data, for --json
    text = format_inspection(report)
    assert "native" in text and "clip_l: 2 x 32" in text and "steps = 10" in text and "norm 5" in text


def test_vocabulary_stats_and_nearest_tokens(sd1, tmp_path):
    mountain = _row(sd1, "tokenizer", "text_encoder", "mountain")
    lake = _row(sd1, "tokenizer", "text_encoder", "lake")
    path = _write(tmp_path / "near.safetensors", {"clip_l": torch.stack([mountain * 3, -lake + 0.01 * mountain, lake])})
    report = inspect_file(path, sd1, top_k=3)

    assert report["model"] == {"pipeline": "StableDiffusionPipeline", "family": "sd1"}
    (entry,) = report["encoders"]
    assert entry["text_encoder"] == "text_encoder"
    table = sd1.text_encoder.get_input_embeddings().weight.detach()[: sd1.tokenizer.vocab_size]
    norms = table.norm(dim=1)
    assert entry["vocab"]["rows"] == sd1.tokenizer.vocab_size
    assert entry["vocab"]["mean"] == pytest.approx(float(norms.mean()), rel=1e-4)
    assert entry["vocab"]["median"] == pytest.approx(float(norms.median()), rel=1e-4)
    assert entry["vocab"]["std"] == pytest.approx(float(norms.std()), rel=1e-4)
    assert entry["norm_ratio"][0] == pytest.approx(3 * float(mountain.norm()) / float(norms.mean()), rel=1e-3)

    first = entry["nearest"][0]
    assert len(first) == 3
    assert first[0]["token"] == "mountain" and first[0]["cosine"] == pytest.approx(1.0, abs=1e-4)  # no "</w>"
    assert [n["cosine"] for n in first] == sorted((n["cosine"] for n in first), reverse=True)
    assert "lake" not in [n["token"] for n in entry["nearest"][1]]
    assert entry["nearest"][2][0]["token"] == "lake"
    assert "nearest: mountain 1.00" in format_inspection(report)


def test_loaded_soft_tokens_are_not_vocabulary(sd1, tmp_path):
    lake = _row(sd1, "tokenizer", "text_encoder", "lake")
    path = _write(tmp_path / "lake.safetensors", {"clip_l": torch.stack([lake, lake * 2])})
    before = inspect_file(path, sd1)["encoders"][0]
    load_soft_prompt(sd1, path)  # its rows now sit in the table, nearest to themselves
    after = inspect_file(path, sd1)["encoders"][0]
    assert after["vocab"] == before["vocab"]
    assert after["nearest"] == before["nearest"]
    assert not {"[v1]", "[v2]"} & {n["token"] for near in after["nearest"] for n in near}


def test_every_encoder_of_flux_with_t5_words_read_plainly(flux, tmp_path):
    clip = _row(flux, "tokenizer", "text_encoder", "sunrise")
    t5 = _row(flux, "tokenizer_2", "text_encoder_2", "sunrise")
    path = _write(tmp_path / "flux.safetensors", {"clip_l": clip[None], "t5xxl": t5[None]})
    report = inspect_file(path, flux, top_k=2)
    assert [e["key"] for e in report["encoders"]] == ["clip_l", "t5xxl"]
    assert [e["text_encoder"] for e in report["encoders"]] == ["text_encoder", "text_encoder_2"]
    assert [e["nearest"][0][0]["token"] for e in report["encoders"]] == ["sunrise", "sunrise"]  # no "▁"
    assert report["encoders"][1]["vocab"]["rows"] == flux.tokenizer_2.vocab_size


def test_single_tensor_file_goes_to_the_encoder_of_its_width(sdxl, tmp_path):
    path = tmp_path / "learned_embeds.safetensors"
    save_file({"<thing>": torch.randn(2, 48)}, str(path))  # diffusers layout, no encoder named
    report = inspect_file(path, sdxl)
    assert report["format"] == "diffusers"
    assert [(e["key"], e["text_encoder"]) for e in report["encoders"]] == [("clip_g", "text_encoder_2")]
    assert "width-matched" in format_inspection(inspect_file(path))  # without a model: not known yet


def test_width_mismatch_names_the_file(sd1, tmp_path):
    path = _write(tmp_path / "xl.safetensors", {"clip_l": torch.randn(2, 32), "clip_g": torch.randn(2, 48)})
    with pytest.raises(WidthMismatchError, match="xl.safetensors.*clip_g"):
        inspect_file(path, sd1)


def test_unreadable_file(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"\x00garbage" * 20)
    with pytest.raises(FormatError, match="junk.safetensors"):
        inspect_file(path)


def test_readable_token_falls_back_to_the_raw_piece(sd1):
    tokenizer = sd1.tokenizer
    mountain = tokenizer.convert_tokens_to_ids("mountain</w>")
    assert readable_token(tokenizer, mountain) == "mountain"
    # A lone byte of a multi-byte character does not decode: show its printable byte-level symbol.
    piece = next(t for t in tokenizer.get_vocab() if len(t) == 1 and ord(t) > 0x80 + 0x40)
    assert readable_token(tokenizer, tokenizer.convert_tokens_to_ids(piece)) == piece
