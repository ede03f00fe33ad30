"""sd_softprompt.format: round trips, every tool's layout, hostile and broken files, atomic writes."""

from __future__ import annotations

import base64
import errno
import json
import os
import pickle
import random
from pathlib import Path

import pytest
import torch
from PIL import Image, PngImagePlugin
from safetensors.torch import save_file

from sd_softprompt.errors import FormatError, InvalidVectorsError, SoftPromptError, UnsafeFileError, WriteError
from sd_softprompt.files import safe_read, writers
from sd_softprompt.files.convert import convert
from sd_softprompt.files.keys import ENCODER_KEYS, FORMAT_VERSION, FORMATS, MAX_VECTORS, UNASSIGNED, default_tokens
from sd_softprompt.files.softprompt import SoftPrompt

FAMILY_KEYS = {
    "sd1": {"clip_l": 768},
    "sd2": {"clip_h": 1024},
    "sdxl": {"clip_l": 768, "clip_g": 1280},
    "flux": {"clip_l": 768, "t5xxl": 4096},
    "sd3": {"clip_l": 768, "clip_g": 1280, "t5xxl": 4096},
}
HOLDERS = {
    "flux": "native, diffusers, onetrainer, comfyui",
    "sd3": "native, onetrainer, comfyui",
}  # the formats that can
IMPOSSIBLE = {("a1111", "flux"), ("kohya", "flux"), ("diffusers", "sd3"), ("a1111", "sd3"), ("kohya", "sd3")}
IMPOSSIBLE |= {("invokeai", "flux"), ("invokeai", "sd3")}  # InvokeAI has embeddings for SD 1.x/2.x and SDXL only


def vectors(n: int, width: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, width, generator=generator).to(dtype)


def make_prompt(family: str, n: int = 3, **metadata: str) -> SoftPrompt:
    tensors = {key: vectors(n, width, seed=i) for i, (key, width) in enumerate(FAMILY_KEYS[family].items())}
    return SoftPrompt(tensors, metadata={"name": "cat", "steps": "500", **metadata})


def reload(paths: list) -> SoftPrompt:
    return SoftPrompt.load(paths if len(paths) == 2 else paths[0])


def assert_same_vectors(loaded: SoftPrompt, original: SoftPrompt) -> None:
    assert set(loaded.vectors) == set(original.vectors)
    for key, tensor in original.vectors.items():
        assert loaded.vectors[key].dtype == tensor.dtype
        assert torch.equal(loaded.vectors[key], tensor), key


# ---- the type itself ---------------------------------------------------------------------------


def test_constants():
    # built from the family table: every family's keys, each once, in registration order
    from sd_softprompt.families import FAMILIES

    assert tuple(dict.fromkeys(e.key for f in FAMILIES.values() for e in f.encoders)) == ENCODER_KEYS
    assert ENCODER_KEYS[:4] == ("clip_l", "clip_h", "clip_g", "t5xxl")
    assert FORMATS == ("native", "diffusers", "a1111", "kohya", "onetrainer", "comfyui", "invokeai")
    assert MAX_VECTORS == 75 and UNASSIGNED == "*" and FORMAT_VERSION == "sd-softprompt/1"
    assert default_tokens(3) == ["[v1]", "[v2]", "[v3]"]
    assert tuple(writers.WRITERS) == FORMATS  # the writer table covers exactly the public formats


def test_post_init_coerces_1d_and_fills_tokens():
    prompt = SoftPrompt({"clip_l": vectors(1, 768)[0]})
    assert prompt.vectors["clip_l"].shape == (1, 768)
    assert prompt.tokens == ["[v1]"] and prompt.num_vectors == 1
    assert prompt.name == "softprompt"


@pytest.mark.parametrize("family", FAMILY_KEYS)
def test_family_inferred_from_keys(family):
    assert make_prompt(family).family == family


def test_family_from_metadata_and_unknown(tmp_path):
    # keys name a family only when they are exactly one family's; t5xxl alone is a part of several
    t5_only = SoftPrompt({"t5xxl": vectors(2, 4096)})
    assert t5_only.family is None
    assert SoftPrompt.load(t5_only.save(tmp_path / "t5", "onetrainer")[0]).vectors.keys() == {"t5xxl"}
    assert SoftPrompt({"t5xxl": vectors(2, 4096)}, metadata={"family": "flux"}).family == "flux"
    # Flux's, SD3's, Chroma's and PixArt's: only the formats all hold, unless the family is said
    with pytest.raises(SoftPromptError, match=r"diffusers cannot hold a sd3/flux\S* .* set metadata\['family'\]"):
        t5_only.save(tmp_path / "t5d", "diffusers")
    t5_only.metadata["family"] = "flux"
    assert t5_only.save(tmp_path / "t5d", "diffusers")[0].name == "learned_embeds.safetensors"
    assert SoftPrompt({"clip_l": vectors(2, 768)}, metadata={"family": "sdxl"}).family == "sdxl"
    assert SoftPrompt({"clip_l": vectors(2, 768), "clip_h": vectors(2, 1024)}).family is None


# ---- round trips: every format x family --------------------------------------------------------


@pytest.mark.parametrize("family", FAMILY_KEYS)
@pytest.mark.parametrize("format_name", FORMATS)
def test_round_trip(tmp_path, format_name, family):
    original = make_prompt(family)
    target = tmp_path / "out" / f"{format_name}-{family}"
    if (format_name, family) in IMPOSSIBLE:
        with pytest.raises(
            SoftPromptError, match=f"{format_name} cannot hold a {family} .*formats that can: {HOLDERS[family]}$"
        ):
            original.save(target, format_name)
        assert not (tmp_path / "out").exists()
        return
    paths = original.save(target, format_name)
    assert all(path.is_file() for path in paths)
    loaded = reload(paths)
    assert_same_vectors(loaded, original)
    assert loaded.family == family
    assert loaded.name == "cat"
    assert loaded.metadata["steps"] == "500"
    assert loaded.tokens == ["[v1]", "[v2]", "[v3]"]


def test_native_keeps_tokens_metadata_and_dtype(tmp_path):
    original = SoftPrompt(
        {"clip_l": vectors(2, 768, dtype=torch.float16), "clip_g": vectors(2, 1280, dtype=torch.bfloat16)},
        tokens=["<a>", "<b>"],
        metadata={"name": "style", "base_model": "sdxl-base-1.0", "lr": "0.005"},
    )
    (path,) = original.save(tmp_path / "style.safetensors")
    loaded = SoftPrompt.load(path)
    assert_same_vectors(loaded, original)
    assert loaded.tokens == ["<a>", "<b>"]
    assert loaded.source_format == "native"
    assert loaded.metadata["format"] == FORMAT_VERSION
    assert loaded.metadata["base_model"] == "sdxl-base-1.0" and loaded.metadata["lr"] == "0.005"
    assert loaded.metadata["family"] == "sdxl"
    assert "tokens" not in loaded.metadata  # lives in .tokens, not twice


def test_native_into_existing_folder_uses_name(tmp_path):
    (path,) = make_prompt("sd1").save(tmp_path)
    assert path == tmp_path / "cat.safetensors"


def test_source_format_reported(tmp_path):
    sd1, sdxl = make_prompt("sd1"), make_prompt("sdxl")
    assert reload(sd1.save(tmp_path / "d1", "diffusers")).source_format == "diffusers"
    assert reload(sdxl.save(tmp_path / "dx", "diffusers")).source_format == "diffusers-sdxl-pair"
    assert reload(sd1.save(tmp_path / "a.pt", "a1111")).source_format == "a1111"
    assert reload(sd1.save(tmp_path / "k", "kohya")).source_format == "kohya"
    assert reload(sd1.save(tmp_path / "o", "onetrainer")).source_format == "onetrainer"


def test_diffusers_file_names(tmp_path):
    sdxl = make_prompt("sdxl")
    assert [p.name for p in sdxl.save(tmp_path / "folder", "diffusers")] == [
        "learned_embeds.safetensors",
        "learned_embeds_2.safetensors",
    ]
    assert [p.name for p in sdxl.save(tmp_path / "x.safetensors", "diffusers")] == ["x.safetensors", "x_2.safetensors"]
    loaded = SoftPrompt.load(tmp_path / "folder")  # the folder, as diffusers users pass it
    assert_same_vectors(loaded, sdxl)
    (flux_path,) = make_prompt("flux").save(tmp_path / "fluxdir", "diffusers")
    assert set(_safetensors_keys(flux_path)) == {"clip_l", "t5"}


def test_a1111_pt_layout_is_plain_data(tmp_path):
    original = make_prompt("sd2", base_model="v2-1_768")
    (path,) = original.save(tmp_path / "cat", "a1111")
    assert path.suffix == ".pt"
    data = torch.load(path, map_location="cpu", weights_only=True)
    assert set(data) == {"string_to_token", "string_to_param", "name", "step", "sd_checkpoint", "sd_checkpoint_name"}
    assert data["string_to_token"] == {"*": 265}
    assert torch.equal(data["string_to_param"]["*"], original.vectors["clip_h"])
    assert (data["name"], data["step"], data["sd_checkpoint"], data["sd_checkpoint_name"]) == (
        "cat",
        500,
        None,
        "v2-1_768",
    )


@pytest.mark.parametrize(
    ("format_name", "family", "keys"),
    [
        ("kohya", "sd1", {"emb_params"}),
        ("onetrainer", "sd1", {"emp_params"}),
        ("kohya", "sdxl", {"clip_l", "clip_g"}),
        ("a1111", "sdxl", {"clip_l", "clip_g"}),
        ("onetrainer", "flux", {"clip_l", "t5"}),
        ("native", "flux", {"clip_l", "t5xxl"}),
        ("onetrainer", "sd3", {"clip_l", "clip_g", "t5"}),
        ("native", "sd3", {"clip_l", "clip_g", "t5xxl"}),
    ],
)
def test_written_keys(tmp_path, format_name, family, keys):
    (path,) = make_prompt(family).save(tmp_path / "f.safetensors", format_name)
    assert set(_safetensors_keys(path)) == keys


def test_files_readable_by_diffusers_loader(tmp_path):
    from diffusers.loaders.textual_inversion import TextualInversionLoaderMixin, load_textual_inversion_state_dicts

    class NoVocab:
        def get_vocab(self):
            return {}

    sd1 = make_prompt("sd1")
    folder = tmp_path / "diff"
    sd1.save(folder, "diffusers")
    sd1.save(tmp_path / "cat.pt", "a1111")
    states = load_textual_inversion_state_dicts([str(folder)], local_files_only=True)
    states += load_textual_inversion_state_dicts([str(tmp_path)], weight_name="cat.pt", local_files_only=True)
    tokens, embeddings = TextualInversionLoaderMixin._retrieve_tokens_and_embeddings([None, None], states, NoVocab())
    assert tokens == ["<cat>", "cat"]
    assert all(torch.equal(e, sd1.vectors["clip_l"]) for e in embeddings)


def test_convert_keeps_metadata(tmp_path):
    src = make_prompt("sdxl", base_model="sdxl-base")
    src.save(tmp_path / "in", "diffusers")
    (out,) = convert(tmp_path / "in", "native", tmp_path / "out.safetensors")
    loaded = SoftPrompt.load(out)
    assert_same_vectors(loaded, src)
    assert loaded.metadata["base_model"] == "sdxl-base" and loaded.source_format == "native"


def test_unknown_format_lists_formats(tmp_path):
    with pytest.raises(SoftPromptError, match="native, diffusers, a1111, kohya, onetrainer"):
        make_prompt("sd1").save(tmp_path / "x", "comfy")


def test_family_mismatch_refused(tmp_path):
    two = SoftPrompt({"clip_l": vectors(2, 768), "clip_g": vectors(2, 1280)}, metadata={"family": "sd1"})
    with pytest.raises(SoftPromptError, match=r"sd1 soft prompt holds clip_l, this one holds clip_g \+ clip_l"):
        two.save(tmp_path / "x.pt", "a1111")
    odd = SoftPrompt({"clip_l": vectors(2, 768), "clip_h": vectors(2, 1024)})
    with pytest.raises(SoftPromptError, match="save as native"):
        odd.save(tmp_path / "y", "kohya")
    assert list(tmp_path.iterdir()) == []


def test_unassigned_width(tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_file({"emb_params": vectors(2, 32)}, str(path))
    loaded = SoftPrompt.load(path)
    assert set(loaded.vectors) == {UNASSIGNED} and loaded.family is None
    with pytest.raises(SoftPromptError, match="load it into a pipeline first"):
        loaded.save(tmp_path / "native.safetensors")
    (out,) = loaded.save(tmp_path / "again", "kohya")  # single-tensor layouts need no encoder name
    assert torch.equal(SoftPrompt.load(out).vectors[UNASSIGNED], loaded.vectors[UNASSIGNED])


# ---- each tool's files, written the way the tool writes them ----------------------------------


def test_read_diffusers_multi_vector(tmp_path):
    path = tmp_path / "learned_embeds.safetensors"
    save_file({"<cat>": vectors(2, 768)}, str(path), metadata={"format": "pt"})
    loaded = SoftPrompt.load(path)
    assert set(loaded.vectors) == {"clip_l"} and loaded.num_vectors == 2
    assert loaded.name == "cat" and loaded.source_format == "diffusers"
    assert loaded.tokens == ["[v1]", "[v2]"]


def test_read_diffusers_single_vector_bin_folder(tmp_path):
    torch.save({"<cat>": vectors(1, 768)[0]}, tmp_path / "learned_embeds.bin")
    loaded = SoftPrompt.load(tmp_path)
    assert loaded.vectors["clip_l"].shape == (1, 768) and loaded.name == "cat"


def test_read_bare_tensor(tmp_path):
    torch.save(vectors(2, 1024), tmp_path / "dog.pt")
    assert SoftPrompt.load(tmp_path / "dog.pt", token="<puppy>").name == "puppy"
    loaded = SoftPrompt.load(tmp_path / "dog.pt")
    assert loaded.name == "dog" and set(loaded.vectors) == {"clip_h"}


def test_read_diffusers_sdxl_pair(tmp_path):
    first, second = vectors(2, 768, 1), vectors(2, 1280, 2)
    save_file({"<cat>": first}, str(tmp_path / "learned_embeds.safetensors"))
    save_file({"<cat>": second}, str(tmp_path / "learned_embeds_2.safetensors"))
    for source in (tmp_path, [tmp_path / "learned_embeds.safetensors", tmp_path / "learned_embeds_2.safetensors"]):
        loaded = SoftPrompt.load(source)
        assert loaded.source_format == "diffusers-sdxl-pair" and loaded.family == "sdxl"
        assert torch.equal(loaded.vectors["clip_l"], first) and torch.equal(loaded.vectors["clip_g"], second)
        assert loaded.name == "cat"


@pytest.mark.parametrize("zipped", [True, False])
def test_read_a1111_pt(tmp_path, zipped):
    tensor = vectors(4, 768)
    data = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": torch.nn.Parameter(tensor.clone())},
        "name": "pekora",
        "step": 19500,
        "sd_checkpoint": "45dee52b",
        "sd_checkpoint_name": "wd-1-2",
    }
    torch.save(data, tmp_path / "pekora.pt", _use_new_zipfile_serialization=zipped)
    loaded = SoftPrompt.load(tmp_path / "pekora.pt")
    assert torch.equal(loaded.vectors["clip_l"], tensor)
    assert type(loaded.vectors["clip_l"]) is torch.Tensor  # not a Parameter
    assert loaded.metadata == {
        "name": "pekora",
        "steps": "19500",
        "base_model": "wd-1-2",
        "base_model_hash": "45dee52b",
    }
    assert loaded.source_format == "a1111"


class _EmbeddingEncoder(json.JSONEncoder):
    # A1111's EmbeddingEncoder (modules/textual_inversion/image_embedding.py).
    def default(self, obj):
        if isinstance(obj, torch.Tensor):
            return {"TORCHTENSOR": obj.cpu().detach().numpy().tolist()}
        return json.JSONEncoder.default(self, obj)


def save_embedding_png(path, chunk=None) -> None:
    """A preview PNG as A1111's training writes it: the .pt dict in an sd-ti-embedding text chunk."""
    info = PngImagePlugin.PngInfo()
    if chunk is not None:
        info.add_text("sd-ti-embedding", chunk)
    Image.new("RGB", (64, 64), (90, 120, 200)).save(path, "PNG", pnginfo=info)


def a1111_b64(data: dict) -> bytes:
    return base64.b64encode(json.dumps(data, cls=_EmbeddingEncoder).encode())  # embedding_to_b64


@pytest.mark.parametrize("width, key", [(768, "clip_l"), (1024, "clip_h")])
def test_read_a1111_embedding_png(tmp_path, width, key):
    tensor = vectors(3, width)
    data = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": torch.nn.Parameter(tensor.clone())},
        "name": "pekora",
        "step": 1500,
        "sd_checkpoint": "45dee52b",
        "sd_checkpoint_name": "wd-1-2",
    }
    path = tmp_path / "pekora-1500.png"
    save_embedding_png(path, a1111_b64(data))
    loaded = SoftPrompt.load(path)
    assert set(loaded.vectors) == {key} and loaded.vectors[key].dtype == torch.float32
    assert torch.equal(loaded.vectors[key], tensor)
    assert loaded.metadata == {"name": "pekora", "steps": "1500", "base_model": "wd-1-2", "base_model_hash": "45dee52b"}
    assert loaded.source_format == "a1111-png"
    assert SoftPrompt.load(path, token="<usada>").name == "usada"
    path.rename(tmp_path / "renamed.pt")  # content, not the extension, decides
    assert SoftPrompt.load(tmp_path / "renamed.pt").source_format == "a1111-png"


def test_embedding_png_without_chunk_or_with_garbage(tmp_path):
    plain = tmp_path / "preview.png"
    save_embedding_png(plain)
    with pytest.raises(FormatError, match=r"preview\.png: a PNG without an sd-ti-embedding text chunk; .*pixels"):
        SoftPrompt.load(plain)
    chunks = {
        "not-base64": "this is %%% not base64!",
        "not-json": base64.b64encode(b"{not json").decode(),
        "ragged": a1111_b64({"string_to_param": {"*": {"TORCHTENSOR": [[1.0, 2.0], [3.0]]}}}).decode(),
        "strings": a1111_b64({"string_to_param": {"*": {"TORCHTENSOR": ["x"]}}}).decode(),
    }
    for stem, chunk in chunks.items():
        save_embedding_png(tmp_path / f"{stem}.png", chunk)
        with pytest.raises(FormatError, match=rf"{stem}\.png: the sd-ti-embedding chunk is not base64"):
            SoftPrompt.load(tmp_path / f"{stem}.png")
    save_embedding_png(tmp_path / "other.png", a1111_b64({"emb_params": vectors(1, 768)}))
    with pytest.raises(FormatError, match=r"other\.png: the sd-ti-embedding chunk holds no string_to_param"):
        SoftPrompt.load(tmp_path / "other.png")


def test_embedding_png_size_guard_and_broken_png(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    save_embedding_png(path, a1111_b64({"string_to_param": {"*": vectors(2, 768)}, "name": "big"}))
    monkeypatch.setattr(safe_read, "MAX_PNG_EMBEDDING", 1024)
    with pytest.raises(FormatError, match=r"big\.png: the sd-ti-embedding chunk decodes to .* refused"):
        SoftPrompt.load(path)
    cut = tmp_path / "cut.png"
    cut.write_bytes(path.read_bytes()[:40])
    with pytest.raises(FormatError, match=r"cut\.png: unreadable PNG"):
        SoftPrompt.load(cut)


def test_read_kohya_emb_params(tmp_path):
    save_file({"emb_params": vectors(3, 1024)}, str(tmp_path / "k.safetensors"), metadata={"modelspec.title": "k"})
    loaded = SoftPrompt.load(tmp_path / "k.safetensors")
    assert set(loaded.vectors) == {"clip_h"} and loaded.source_format == "kohya"
    assert loaded.metadata["modelspec.title"] == "k"
    torch.save({"emb_params": vectors(3, 768)}, tmp_path / "k.pt")
    assert set(SoftPrompt.load(tmp_path / "k.pt").vectors) == {"clip_l"}


def test_read_onetrainer_sd1_with_out_key(tmp_path):
    save_file({"emp_params": vectors(2, 768), "emp_params_out": vectors(2, 768, 9)}, str(tmp_path / "o.safetensors"))
    loaded = SoftPrompt.load(tmp_path / "o.safetensors")
    assert set(loaded.vectors) == {"clip_l"} and loaded.source_format == "onetrainer"
    assert any("emp_params_out" in note for note in loaded.notes)


def test_read_onetrainer_sdxl_and_flux_out_keys(tmp_path):
    save_file(
        {
            k: vectors(2, w, i)
            for i, (k, w) in enumerate({"clip_l": 768, "clip_g": 1280, "clip_l_out": 768, "clip_g_out": 1280}.items())
        },
        str(tmp_path / "xl.safetensors"),
    )
    xl = SoftPrompt.load(tmp_path / "xl.safetensors")
    assert set(xl.vectors) == {"clip_l", "clip_g"} and xl.source_format == "onetrainer"
    assert xl.notes == ["ignored OneTrainer output-embedding keys clip_g_out, clip_l_out"]
    save_file(
        {"clip_l": vectors(2, 768), "t5": vectors(2, 4096, 1), "t5_out": vectors(2, 4096, 2)},
        str(tmp_path / "fx.safetensors"),
    )
    flux = SoftPrompt.load(tmp_path / "fx.safetensors")
    assert set(flux.vectors) == {"clip_l", "t5xxl"} and flux.family == "flux"
    assert torch.equal(flux.vectors["t5xxl"], vectors(2, 4096, 1))
    assert flux.notes == ["ignored OneTrainer output-embedding keys t5_out"]


def test_read_comfyui_style_keys(tmp_path):
    save_file({"clip_l": vectors(2, 768), "clip_g": vectors(2, 1280)}, str(tmp_path / "xl.safetensors"))
    assert SoftPrompt.load(tmp_path / "xl.safetensors").source_format == "comfyui"
    # ComfyUI looks SD2 embeddings up under "clip_l": 1024-wide vectors there are OpenCLIP-H.
    save_file({"clip_l": vectors(2, 1024)}, str(tmp_path / "sd2.safetensors"))
    sd2 = SoftPrompt.load(tmp_path / "sd2.safetensors")
    assert set(sd2.vectors) == {"clip_h"} and sd2.family == "sd2" and sd2.notes


def test_content_sniffing_ignores_extension(tmp_path):
    path = tmp_path / "misleading.safetensors"
    torch.save({"string_to_param": {"*": vectors(2, 768)}, "name": "m", "step": 1}, path)
    loaded = SoftPrompt.load(path)
    assert loaded.source_format == "a1111" and loaded.num_vectors == 2
    other = tmp_path / "really_safetensors.pt"
    save_file({"clip_l": vectors(1, 768)}, str(other))
    assert SoftPrompt.load(other).num_vectors == 1


def test_unknown_layout_lists_keys(tmp_path):
    save_file({"foo": vectors(1, 768), "bar": vectors(1, 768)}, str(tmp_path / "u.safetensors"))
    with pytest.raises(FormatError, match=r"u\.safetensors: unknown embedding layout \(2 keys: bar, foo\)"):
        SoftPrompt.load(tmp_path / "u.safetensors")


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(FormatError, match="nope.pt: no such file"):
        SoftPrompt.load(tmp_path / "nope.pt")
    with pytest.raises(FormatError, match="learned_embeds.safetensors .*learned_embeds.bin"):
        SoftPrompt.load(tmp_path)


# ---- hostile and broken files ------------------------------------------------------------------


class _OpensFile:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _RunsShell:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _dump_torch(obj, path):
    torch.save(obj, path)


def _dump_pickle(protocol):
    def dump(obj, path):
        with open(path, "wb") as handle:
            pickle.dump(obj, handle, protocol=protocol)

    return dump


@pytest.mark.parametrize("payload", [_OpensFile, _RunsShell])
@pytest.mark.parametrize(
    "dump", [_dump_torch, _dump_pickle(2), _dump_pickle(4)], ids=["torch.save", "pickle-2", "pickle-4"]
)
def test_malicious_pickle_refused_and_not_run(tmp_path, payload, dump):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    dump({"emb_params": vectors(1, 768), "x": payload(marker)}, path)
    with pytest.raises(
        UnsafeFileError, match=r"evil\.pt: refused: the pickle asks to run code \((io\.open|posix\.system)"
    ):
        SoftPrompt.load(path)
    assert not marker.exists()


def test_truncated_safetensors(tmp_path):
    path = tmp_path / "cut.safetensors"
    save_file({"clip_l": vectors(3, 768)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match=r"cut\.safetensors: unreadable safetensors file") as caught:
        SoftPrompt.load(path)
    assert not isinstance(caught.value, UnsafeFileError)


def test_truncated_torch_file(tmp_path):
    path = tmp_path / "cut.pt"
    torch.save({"emb_params": vectors(3, 768)}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(FormatError, match=r"cut\.pt"):
        SoftPrompt.load(path)


def test_garbage_and_empty_files(tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"GARBAGE!" + random.Random(0).randbytes(512))
    with pytest.raises(FormatError, match=r"garbage\.safetensors: not an embedding file; understood are"):
        SoftPrompt.load(garbage)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(FormatError, match=r"empty\.pt: empty file"):
        SoftPrompt.load(empty)


def test_empty_dict(tmp_path):
    save_file({}, str(tmp_path / "none.safetensors"))
    with pytest.raises(InvalidVectorsError, match=r"none\.safetensors: holds no tensors"):
        SoftPrompt.load(tmp_path / "none.safetensors")
    with pytest.raises(InvalidVectorsError, match="holds no vectors"):
        SoftPrompt({}).validate()


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (torch.tensor([[1.0, float("nan")], [float("inf"), 2.0]]), "clip_l has 2 non-finite values"),
        (torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, 4.0]]), "vector 2 of clip_l is all zeros"),
        (torch.ones(2, 3, 768), r"clip_l has shape \[2, 3, 768\]; expected \[N, width\]"),
        (torch.ones(2, 768, dtype=torch.int64), r"clip_l is int64 \(not floating point\); re-export"),
        (torch.ones(3, 0), r"clip_l has zero width \(shape \[3, 0\]\)"),
        (torch.ones(0, 768), r"clip_l holds 0 vectors"),
        (torch.ones(80, 768), "80 vectors, more than the 75 a 77-token CLIP window can hold"),
    ],
    ids=["nan-inf", "zero-vector", "3d", "integer", "zero-width", "no-vectors", "too-many"],
)
def test_invalid_vectors_in_file(tmp_path, tensor, message):
    path = tmp_path / "bad.safetensors"
    save_file({"clip_l": tensor}, str(path))
    with pytest.raises(InvalidVectorsError, match=rf"bad\.safetensors: {message}"):
        SoftPrompt.load(path)


def test_invalid_in_memory_prompts(tmp_path):
    with pytest.raises(InvalidVectorsError, match=r"encoders disagree on the number of vectors \(clip_l 2, clip_g 3\)"):
        SoftPrompt({"clip_l": vectors(2, 768), "clip_g": vectors(3, 1280)}).validate()
    with pytest.raises(InvalidVectorsError, match="1 tokens for 2 vectors"):
        SoftPrompt({"clip_l": vectors(2, 768)}, tokens=["a"]).validate()
    with pytest.raises(InvalidVectorsError, match=r"tokens repeat a;"):
        SoftPrompt({"clip_l": vectors(2, 768)}, tokens=["a", "a"]).validate()
    with pytest.raises(InvalidVectorsError, match="non-empty strings"):
        SoftPrompt({"clip_l": vectors(2, 768)}, tokens=["a", " "]).validate()
    with pytest.raises(InvalidVectorsError, match="unknown encoder key 'clip_x'"):
        SoftPrompt({"clip_x": vectors(2, 768)}).validate()
    with pytest.raises(InvalidVectorsError, match=r"out\.safetensors: 80 vectors"):
        SoftPrompt({"clip_l": vectors(80, 768)}).save(tmp_path / "out.safetensors")
    assert list(tmp_path.iterdir()) == []


# ---- atomic writes -------------------------------------------------------------------------------


def test_save_leaves_no_temp_files(tmp_path):
    make_prompt("sdxl").save(tmp_path, "diffusers")
    make_prompt("sd1").save(tmp_path / "cat.pt", "a1111")
    make_prompt("flux").save(tmp_path / "flux.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cat.pt",
        "flux.safetensors",
        "learned_embeds.safetensors",
        "learned_embeds_2.safetensors",
    ]


def test_save_creates_parent_folders(tmp_path):
    (path,) = make_prompt("sd1").save(tmp_path / "a" / "b" / "c.safetensors")
    assert path.is_file()


def _disk_full_after(monkeypatch, n_ok: int) -> None:
    """Every temp-file write after the first ``n_ok`` writes a few bytes, then runs out of space."""
    real = Path.write_bytes
    calls = []

    def write_bytes(self, data):
        calls.append(self)
        if len(calls) > n_ok:
            real(self, data[:7])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "keep.safetensors"
    make_prompt("sd1").save(path)
    before = path.read_bytes()
    _disk_full_after(monkeypatch, 0)
    with pytest.raises(WriteError, match=r"keep\.safetensors: cannot write it \(No space left on device\)"):
        make_prompt("sd2").save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.safetensors"]


def test_failed_pair_write_leaves_neither_file(tmp_path, monkeypatch):
    _disk_full_after(monkeypatch, 1)
    with pytest.raises(WriteError, match="learned_embeds_2.safetensors: cannot write it"):
        make_prompt("sdxl").save(tmp_path / "pair", "diffusers")
    assert list((tmp_path / "pair").iterdir()) == []


def _safetensors_keys(path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return list(handle.keys())
