"""What the clients that pick a reader by extension or by key get: a file's extension says what it holds, and
the `comfyui` / `invokeai` targets hold what those clients ask for (scripts/check_clients.py runs their code)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sd_softprompt import cli
from sd_softprompt.errors import SoftPromptError
from sd_softprompt.families import FAMILIES
from sd_softprompt.files.convert import bundle_into_lora, convert
from sd_softprompt.files.keys import FORMATS
from sd_softprompt.files.safe_read import sniff
from sd_softprompt.files.softprompt import SoftPrompt


def real(family: str, seed: int = 0) -> SoftPrompt:
    """A soft prompt at the family's real widths (the clients pick the model by width)."""
    g = torch.Generator().manual_seed(seed)
    vectors = {e.key: torch.randn(3, e.width, generator=g) for e in FAMILIES[family].encoders}
    return SoftPrompt(vectors=vectors, metadata={"name": "sun", "family": family})


def writable(family: str) -> list[str]:
    return [f for f in FORMATS if f in (FAMILIES[family].formats or FORMATS)]


CONTAINER = {".safetensors": {"safetensors"}, ".pt": {"zip", "pickle"}, ".bin": {"zip", "pickle"}}


# ---- item 1: the extension says what the file holds ------------------------------------------------------


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".bin", ""])
def test_every_written_file_holds_what_its_extension_says(family, suffix, tmp_path):
    soft = real(family)
    for fmt in writable(family):
        out = tmp_path / fmt / (f"sun{suffix}" if fmt != "diffusers" else "")
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            written = soft.save(out, format=fmt)
        except SoftPromptError as error:  # refused: one line naming the extension to use, nothing written
            assert "\n" not in str(error) and "name it sun." in str(error), (fmt, str(error))
            assert not any(p.is_file() for p in (tmp_path / fmt).rglob("*")), fmt
            continue
        for path in written:
            assert sniff(path) in CONTAINER[path.suffix], (fmt, path.name, sniff(path))
            back = SoftPrompt.load(written if len(written) == 2 else path)
            assert [v.shape for v in back.vectors.values()] != []


def test_sdxl_to_a1111_pt_is_a_pickle_that_a1111_reads(tmp_path):
    native = real("sdxl").save(tmp_path / "sun.safetensors")[0]
    (written,) = convert(native, to="a1111", out=tmp_path / "sun.pt")
    assert written == tmp_path / "sun.pt" and sniff(written) == "zip"  # torch.save, not safetensors bytes
    data = torch.load(written, weights_only=True)  # no code runs
    # A1111's SDXL reader: a dict with clip_g and clip_l, every value a tensor (it calls .detach() on each)
    assert set(data) == {"clip_l", "clip_g"} and all(isinstance(v, torch.Tensor) for v in data.values())
    original = SoftPrompt.load(native).vectors
    assert all(torch.equal(data[k], original[k]) for k in original)
    assert all(torch.equal(SoftPrompt.load(written).vectors[k], original[k]) for k in original)


@pytest.mark.parametrize(
    "family, fmt, name",
    [
        ("sd1", "native", "sun.pt"),
        ("sd1", "kohya", "sun.pt"),
        ("sd1", "onetrainer", "sun.bin"),
        ("sd1", "a1111", "sun.safetensors"),  # A1111's SD 1.x/2.x layout is a pickle
        ("sdxl", "diffusers", "sun.bin"),
        ("flux", "native", "sun.pt"),
        ("sd1", "comfyui", "sun.pt"),
        ("sdxl", "invokeai", "sun.pt"),
    ],
)
def test_a_name_that_hides_the_content_is_refused_in_one_line(family, fmt, name, tmp_path, capsys):
    native = real(family).save(tmp_path / "in.safetensors")[0]
    code = cli.main(["convert", str(native), "--to", fmt, "--out", str(tmp_path / name)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and name in err and "name it sun." in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.safetensors"]


def test_a_bundle_is_never_written_under_a_pickle_name(tmp_path):
    lora = tmp_path / "style.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(lora))
    with pytest.raises(SoftPromptError, match=r"name it out\.safetensors"):
        bundle_into_lora(real("sdxl"), lora, tmp_path / "out.pt")
    assert bundle_into_lora(real("sdxl"), lora, tmp_path / "out") == tmp_path / "out.safetensors"


# ---- item 2: --to comfyui holds what ComfyUI's tokenizers ask for, every family it runs ----------------------

# The key and width each ComfyUI tokenizer passes load_embed (see COMFY_KEYS in scripts/check_clients.py).
COMFY = {
    "sd1": [("clip_l", 768)],
    "sd2": [("clip_l", 1024)],
    "sdxl": [("clip_l", 768), ("clip_g", 1280)],
    "sd3": [("clip_l", 768), ("clip_g", 1280), ("t5xxl", 4096)],
    "flux": [("clip_l", 768), ("t5xxl", 4096)],
    "lumina2": [("gemma2_2b", 2304)],
}


def comfy_lookup(tensors: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    """load_embed's choice for a safetensors dict: the key asked for, else the file's first tensor."""
    return tensors[key] if key in tensors else next(iter(tensors.values()))


@pytest.mark.parametrize("family", list(COMFY))
def test_to_comfyui_gives_every_comfyui_encoder_its_own_vectors(family, tmp_path):
    soft = real(family)
    (written,) = convert(soft.save(tmp_path / "in.safetensors")[0], to="comfyui", out=tmp_path / "sun")
    assert written.suffix == ".safetensors"
    tensors = load_file(str(written))
    for (key, width), encoder in zip(COMFY[family], FAMILIES[family].encoders):
        got = comfy_lookup(tensors, key)
        assert got.shape[-1] == width and torch.equal(got, soft.vectors[encoder.key]), key


def test_onetrainer_flux_is_what_comfyui_misreads_and_comfyui_is_refused_where_it_runs_nothing(tmp_path):
    flux = real("flux")
    (onetrainer,) = flux.save(tmp_path / "ot", format="onetrainer")
    assert comfy_lookup(load_file(str(onetrainer)), "t5xxl").shape[-1] == 768  # the T5 half is lost there
    with pytest.raises(SoftPromptError, match="comfyui cannot hold a sana soft prompt"):
        real("sana").save(tmp_path / "s", format="comfyui")


# ---- item 3: --to invokeai installs and loads in InvokeAI (one file) ---------------------------------------


def invoke_token_dim(data: dict) -> int:
    """InvokeAI 6.14.2's installer (TI_Config_Base._get_base_or_raise): where it reads the width."""
    if "string_to_token" in data:
        return next(iter(data["string_to_param"].values())).shape[-1]
    if "emb_params" in data:
        return data["emb_params"].shape[-1]
    if "clip_g" in data:
        return data["clip_g"].shape[-1]
    return next(iter(data.values())).shape[0]


@pytest.mark.parametrize("family, base_width", [("sd1", 768), ("sd2", 1024), ("sdxl", 1280)])
def test_to_invokeai_is_one_file_its_installer_sizes_right(family, base_width, tmp_path):
    soft = real(family)
    written = convert(soft.save(tmp_path / "in.safetensors")[0], to="invokeai", out=tmp_path / "sun")
    assert len(written) == 1 and written[0].suffix == ".safetensors"
    data = load_file(str(written[0]))
    assert invoke_token_dim(data) == base_width
    # its loader: emb_params is the one embedding; an SDXL file gives clip_g and clip_l
    loaded = [data["emb_params"]] if "emb_params" in data else [data["clip_g"], data["clip_l"]]
    assert all(any(torch.equal(t, v) for t in loaded) for v in soft.vectors.values())
    # what the issue saw refused: a native SD 1.x file read by the same rule gives its vector count
    if family != "sdxl":
        native = load_file(str(soft.save(tmp_path / "native.safetensors")[0]))
        assert invoke_token_dim(native) == 3


def test_invokeai_is_refused_for_a_family_invokeai_has_no_embeddings_for(tmp_path, capsys):
    native = real("flux").save(tmp_path / "in.safetensors")[0]
    assert cli.main(["convert", str(native), "--to", "invokeai", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "invokeai cannot hold a flux soft prompt" in err and "comfyui" in err


def test_convert_help_names_the_client_targets(capsys):
    assert cli.main(["convert", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "comfyui, invokeai: the layout that client installs and loads" in out


# ---- items 2, 3, 7: the docs say what the clients' own code did (scripts/check_clients.py's table) ------------

ROOT = Path(__file__).resolve().parents[2]


def tables(text: str) -> list[list[list[str]]]:
    """The markdown tables in ``text``: rows of cells, the header row first, the separator row dropped."""
    found, rows = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            if not set(line) <= set("|-"):
                rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif rows:
            found, rows = [*found, rows], []
    return found


def checked() -> tuple[list[list[str]], list[list[str]]]:
    text = (ROOT / "docs" / "formats.md").read_text(encoding="utf-8")
    full, summary = tables(text[text.index("## Which client reads what") :])[:2]
    return full, summary


def test_the_checked_table_covers_every_file_the_writers_write(tmp_path):
    full, _ = checked()
    listed = {(row[0].strip("`"), row[1], row[2]) for row in full[1:]}
    written = set()
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(lora))
    for family in FAMILIES:
        for target in (*FORMATS, "bundle"):
            for ext in (".safetensors", ".pt"):
                out = tmp_path / family / target / ext.strip(".")
                out.mkdir(parents=True)
                try:
                    if target == "bundle":
                        bundle_into_lora(real(family), lora, out / f"sun{ext}")
                    else:
                        real(family).save(out if target == "diffusers" else out / f"sun{ext}", format=target)
                except SoftPromptError:
                    continue
                written.add((target, "folder" if target == "diffusers" else ext, family))
    assert listed == written


def test_the_readme_format_table_is_the_checks_and_says_what_the_clients_did():
    full, summary = checked()
    header, cells = full[0], {tuple(row[:3]): dict(zip(full[0][3:], row[3:])) for row in full[1:]}
    # the summary is the full table's yes cells by target (as the script sums it up), and the README shows it
    for row in summary[1:]:
        for client, families in zip(header[3:], row[2:]):
            mine = {f: c[client] for (t, e, f), c in cells.items() if (t, e) == (row[0], row[1])}
            good = [f for f, cell in mine.items() if cell == "yes"]
            assert families == (", ".join(good) or ("no" if any(c != "-" for c in mine.values()) else "-"))
    assert summary in tables((ROOT / "README.md").read_text(encoding="utf-8"))
    every = {"ComfyUI": ["sd1", "sd2", "sdxl", "sd3", "flux", "lumina2"], "InvokeAI": ["sd1", "sd2", "sdxl"]}
    for client, target in (("ComfyUI", "comfyui"), ("InvokeAI", "invokeai")):  # items 2 and 3
        assert all(cells[(f"`{target}`", ".safetensors", f)][client] == "yes" for f in every[client])
    # item 7: ComfyUI reads the CLIP vectors bundled in LoRA files; the docs no longer say it does not
    assert cells[("`bundle`", ".safetensors", "sdxl")]["ComfyUI"] == "yes"
    assert "ComfyUI and diffusers do not" not in (ROOT / "docs" / "formats.md").read_text(encoding="utf-8")
