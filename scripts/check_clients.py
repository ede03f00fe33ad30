"""Run the clients' own code on every file this package writes, offline, and print what each one makes of it.

    python scripts/check_clients.py --invokeai /tmp/invokeai --comfyui /tmp/comfyui

For every family, every target format (`convert --to`) and every extension that format writes, a soft prompt
of 3 vectors is written, then given to each client as its users would give it; a cell says `yes` when the
client installs it, loads it and ends with the same tensors as `SoftPrompt.load` (every encoder), else the
first step that failed and why, and `-` where the client runs no model of that family.

- diffusers (installed): `load_textual_inversion` on tiny SD 1.x/2.x/SDXL pipelines; the file path for one
  encoder, and for SDXL one call per encoder with the file's `clip_l`/`clip_g` tensors (or each file of a
  diffusers pair), as diffusers' docs show. Same tensors: the embedding rows of its tokens.
- compel (installed: `pip install compel`): with the file loaded by `load_soft_prompt`, compel's unweighted
  conditioning (`CompelForSD`, `CompelForSDXL`, `CompelForFlux`) against the pipeline's `encode_prompt`, to 1e-5.
- InvokeAI 6.14.2, from its wheel, not installed (it pins its own torch):
  `pip download invokeai==6.14.2 --no-deps -d /tmp/invokeai`; `--invokeai` takes that folder, the wheel, or an
  unpacked wheel. Its installer's textual-inversion configs (`TI_File_*_Config`/`TI_Folder_*_Config`
  `.from_model_on_disk`, on `ModelOnDisk`, which runs picklescan on pickles) and its loader
  (`TextualInversionModelRaw.from_checkpoint`, on the path `TextualInversionLoader._get_model_path` picks:
  the file, or a folder's `learned_embeds.bin`); same tensors: the one its model patcher gives each text
  encoder (`embedding_2` when its width fits, else `embedding`). The stubs its import chain needs are printed.
- ComfyUI: `load_embed` from `comfy/sd1_clip.py` of a ComfyUI checkout (`--comfyui PATH`, the folder holding
  `comfy/`), called with the key and width each of ComfyUI's tokenizers passes it (`COMFY_KEYS`); a tensor of
  another width is what `set_up_textual_embeddings` drops with a warning. The stubs are printed.

`--to bundle` rows (a small LoRA with the soft prompt bundled) are given to ComfyUI alone: the others read no
embeddings from LoRA files. Real widths (768, 1024, 1280, 2304, 2560, 4096, 5120) for InvokeAI and ComfyUI,
which pick the model by width; the tiny pipelines' widths for diffusers and compel. A client that is not found
is skipped, saying so. The table in docs/formats.md ("Which client reads what") and the README's are this
script's output.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import logging
import sys
import tempfile
import types
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sd_softprompt.errors import SoftPromptError  # noqa: E402
from sd_softprompt.families import FAMILIES  # noqa: E402
from sd_softprompt.files.convert import bundle_into_lora  # noqa: E402
from sd_softprompt.files.keys import FORMATS, UNASSIGNED  # noqa: E402
from sd_softprompt.files.softprompt import SoftPrompt  # noqa: E402

YES = "yes"
NONE = "-"  # the client runs no model of this family
NAME, N = "sunrise", 3
EXTENSIONS = (".safetensors", ".pt")  # each format is tried with both; the writers refuse the wrong one
TOKEN = f"<{NAME}>"
TARGETS = (*FORMATS, "bundle")  # every `convert --to`
PROMPT = "{} mountain view"

# The (embedding_key, embedding_size) each of ComfyUI's tokenizers passes load_embed, in the order of our
# family's encoders, as ComfyUI's code sets them: sd1_clip.SDTokenizer's defaults (clip_l, 768);
# text_encoders/sd2_clip.py SD2ClipHTokenizer (embedding_size=1024, the key left at the default clip_l);
# sdxl_clip.SDXLClipGTokenizer (clip_g, 1280); text_encoders/sd3_clip.py and flux.py T5XXLTokenizer
# (t5xxl, 4096); text_encoders/lumina2.py Gemma2BTokenizer (gemma2_2b, 2304); flux.py Mistral3Tokenizer
# (mistral3_24b, 5120), Flux.2's. ComfyUI has no Sana model.
COMFY_KEYS = {
    "sd1": [("clip_l", 768)],
    "sd2": [("clip_l", 1024)],
    "sdxl": [("clip_l", 768), ("clip_g", 1280)],
    "sd3": [("clip_l", 768), ("clip_g", 1280), ("t5xxl", 4096)],
    "flux": [("clip_l", 768), ("t5xxl", 4096)],
    "lumina2": [("gemma2_2b", 2304)],
    "chroma": [("t5xxl", 4096)],
    "pixart_sigma": [("t5xxl", 4096)],
    "hidream": [("clip_l", 768), ("clip_g", 1280), ("t5xxl", 4096), ("llama", 4096)],
    "flux2_klein": [("qwen3_4b", 2560)],
    "flux2_klein_9b": [("qwen3_8b", 4096)],
    "flux2": [("mistral3_24b", 5120)],
}
INVOKE_BASES = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL"}  # InvokeAI's textual-inversion bases
DIFFUSERS_FAMILIES = ("sd1", "sd2", "sdxl")
COMPEL_FAMILIES = {"sd1": "CompelForSD", "sd2": "CompelForSD", "sdxl": "CompelForSDXL", "flux": "CompelForFlux"}


# ---- the files -------------------------------------------------------------------------------------------


def soft_prompt(family: str, widths: dict[str, int], seed: int) -> SoftPrompt:
    g = torch.Generator().manual_seed(seed)
    vectors = {key: torch.randn(N, width, generator=g) * 0.02 for key, width in widths.items()}
    return SoftPrompt(vectors=vectors, metadata={"name": NAME, "family": family})


def write(soft: SoftPrompt, fmt: str, ext: str, folder: Path) -> list[Path] | None:
    """The written file(s), or None where the format does not hold this family or this extension. ``bundle``: a
    small LoRA (kohya-style keys) with the soft prompt bundled in it (`convert --to bundle`)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder if fmt == "diffusers" else folder / f"{NAME}{ext}"
    try:
        if fmt == "bundle":
            lora = folder / "lora.safetensors"
            g = torch.Generator().manual_seed(5)
            down, up = "lora_unet_mid_block_attentions_0_proj_in.lora_down.weight", "lora_up.weight"
            save_file(
                {down: torch.randn(4, 64, generator=g), down.replace("lora_down.weight", up): torch.randn(64, 4)}, lora
            )
            paths = [bundle_into_lora(soft, lora, out)]
            lora.unlink()
            return paths
        return soft.save(out, format=fmt)
    except SoftPromptError:
        return None


def rows() -> list[tuple[str, str, str]]:
    """(family, format, extension) for every file the writers accept."""
    found = []
    with tempfile.TemporaryDirectory() as tmp:
        for family, fam in FAMILIES.items():
            soft = soft_prompt(family, {e.key: e.width for e in fam.encoders}, 0)
            for fmt in TARGETS:
                for ext in (".safetensors",) if fmt == "diffusers" else EXTENSIONS:
                    if write(soft, fmt, ext, Path(tmp) / family / fmt / ext.strip(".")):
                        found.append((family, fmt, "folder" if fmt == "diffusers" else ext))
    return found


def ours(paths: list[Path], family: str) -> dict[str, torch.Tensor]:
    """What SoftPrompt.load reads, by encoder key (a single-encoder family's unassigned tensor is its encoder's)."""
    loaded = SoftPrompt.load(paths if len(paths) == 2 else paths[0]).vectors
    if UNASSIGNED in loaded:
        (encoder,) = FAMILIES[family].encoders
        loaded = {encoder.key: loaded[UNASSIGNED]}
    return loaded


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.float(), b.float())


def _why(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text[:90]}" if text else type(error).__name__


# ---- diffusers ---------------------------------------------------------------------------------------------


def check_diffusers(family: str, paths: list[Path], pipe) -> str:
    from diffusers.models.model_loading_utils import load_state_dict

    fam = FAMILIES[family]
    want = ours(paths, family)
    try:
        if len(fam.encoders) == 1:
            target = paths[0].parent if paths[0].name.startswith("learned_embeds") else paths[0]
            pipe.load_textual_inversion(str(target), token=TOKEN)
        else:
            if len(paths) == 2:  # diffusers' SDXL pair: one file per encoder
                tensors = [next(iter(load_state_dict(str(p)).values())) for p in paths]
            else:  # one file: its clip_l / clip_g tensors, read with diffusers' own reader
                state = load_state_dict(str(paths[0]))
                missing = [e.key for e in fam.encoders if e.key not in state]
                if missing:
                    return f"no {', '.join(missing)} key (diffusers' docs read clip_l, clip_g)"
                tensors = [state[e.key] for e in fam.encoders]
            for encoder, tensor in zip(fam.encoders, tensors):
                pipe.load_textual_inversion(
                    tensor,
                    token=TOKEN,
                    tokenizer=getattr(pipe, encoder.tokenizer),
                    text_encoder=getattr(pipe, encoder.text_encoder),
                )
    except Exception as error:
        return f"load_textual_inversion raised {_why(error)}"
    tokens = [TOKEN] + [f"{TOKEN}_{i}" for i in range(1, N)]
    for encoder in fam.encoders:
        ids = getattr(pipe, encoder.tokenizer).convert_tokens_to_ids(tokens)
        rows_ = getattr(pipe, encoder.text_encoder).get_input_embeddings().weight[ids]
        if not _same(rows_, want[encoder.key]):
            return f"{encoder.key}: other vectors in its embedding table"
    return YES


# ---- compel -----------------------------------------------------------------------------------------------


def check_compel(family: str, paths: list[Path], pipe) -> str:
    import compel

    from sd_softprompt.inject.loader import load_soft_prompt

    try:
        tokens = load_soft_prompt(pipe, paths if len(paths) == 2 else paths[0])
    except Exception as error:
        return f"load_soft_prompt raised {_why(error)}"
    prompt = PROMPT.format("".join(tokens))
    return compare_compel(pipe, family, prompt, getattr(compel, COMPEL_FAMILIES[family]))


def compel_and_pipeline(pipe, family: str, prompt: str, wrapper) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, compel's, the pipeline's encode_prompt's) for the states and, where there is one, the pooled vector."""
    got = wrapper(pipe)(prompt)
    if family == "flux":
        length = pipe.tokenizer_2.model_max_length  # compel pads T5 to its tokenizer's window
        states, pooled, _ = pipe.encode_prompt(prompt, prompt_2=None, max_sequence_length=length)
        return [("states", got.embeds, states), ("pooled", got.pooled_embeds, pooled)]
    if family == "sdxl":
        states, _, pooled, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False)
        return [("states", got.embeds, states), ("pooled", got.pooled_embeds, pooled)]
    states, _ = pipe.encode_prompt(prompt, pipe.device, 1, False)
    return [("states", got.embeds, states)]


def compare_compel(pipe, family: str, prompt: str, wrapper) -> str:
    try:
        pairs = compel_and_pipeline(pipe, family, prompt, wrapper)
    except Exception as error:
        return f"compel raised {_why(error)}"
    for name, a, b in pairs:
        if a.shape != b.shape:
            return f"{name}: shape {tuple(a.shape)} vs encode_prompt's {tuple(b.shape)}"
        diff = (a.float() - b.float()).abs().max().item()
        if diff > 1e-5:
            return f"{name} differ from encode_prompt's by {diff:.2g}"
    return YES


# ---- InvokeAI ------------------------------------------------------------------------------------------------


def _bare_package(name: str, folder: Path) -> None:
    """A package whose __init__ is not run (InvokeAI's re-export the whole app); its modules still load from it."""
    module = types.ModuleType(name)
    module.__path__ = [str(folder)]
    sys.modules[name] = module


def _stub(name: str, **attributes) -> None:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    sys.modules[name] = module


def invokeai_root(given: Path | None) -> Path | None:
    """The folder holding the `invokeai` package: an unpacked wheel, or a wheel (or its download folder) unpacked."""
    if given is None or not given.exists():
        return None
    if (given / "invokeai").is_dir():
        return given
    wheels = [given] if given.is_file() else sorted(given.glob("invokeai-*.whl"))
    if not wheels:
        return None
    target = Path(tempfile.mkdtemp(prefix="invokeai-wheel-"))
    with zipfile.ZipFile(wheels[-1]) as wheel:
        wheel.extractall(
            target, [n for n in wheel.namelist() if n.startswith("invokeai/backend/") or n.startswith("invokeai/app/")]
        )
    return target


def load_invokeai(root: Path) -> tuple[dict[str, object], list[str]]:
    """InvokeAI's textual-inversion installer configs and loader class, imported from its files; the stubs used."""
    sys.path.insert(0, str(root))
    packages = [p for p in (root / "invokeai").rglob("*") if p.is_dir() and (p / "__init__.py").is_file()]
    for folder in [root / "invokeai", *sorted(packages)]:
        _bare_package(".".join(folder.relative_to(root).parts), folder)
    stubs = ["package __init__ files not run (they import the whole app)"]

    def stub(name: str, why: str, **attributes) -> None:
        _stub(name, **attributes)
        stubs.append(f"{name} ({why})")

    class _Config:
        unsafe_disable_picklescan = False  # InvokeAI's default

    stub(
        "invokeai.app.services.config.config_default",
        "get_config: the app's settings file; only unsafe_disable_picklescan=False is read",
        get_config=lambda: _Config(),
    )
    stub("invokeai.backend.util.logging", "InvokeAILogger: Python's logging", InvokeAILogger=_Logger)
    stub("invokeai.backend.quantization.gguf.loaders", "GGUF readers", WrappedGGUFReader=None, gguf_sd_loader=None)
    stub("invokeai.backend.quantization.sdnq.loaders", "SDNQ readers", sdnq_sd_loader=None)
    for name, attributes in (
        ("gguf", {"GGUFValueType": type("GGUFValueType", (), {"STRING": 8})}),
        ("onnxruntime", {"InferenceSession": type("InferenceSession", (), {})}),  # a type alias's member
        ("blake3", {"blake3": None}),  # model hashes; the check passes the hash field itself
    ):
        if importlib.util.find_spec(name) is None:
            stub(name, "not installed", **attributes)
    if importlib.util.find_spec("picklescan") is not None:
        stubs.append("picklescan: the real one")
    else:
        stub(
            "picklescan.scanner",
            "not installed: every pickle reported clean; pip install picklescan to run the real scan",
            scan_file_path=lambda path: types.SimpleNamespace(infected_files=0, scan_err=False),
        )
        sys.modules["picklescan"] = types.ModuleType("picklescan")
    configs = importlib.import_module("invokeai.backend.model_manager.configs.textual_inversion")
    raw = importlib.import_module("invokeai.backend.textual_inversion")
    disk = importlib.import_module("invokeai.backend.model_manager.model_on_disk")
    utils = importlib.import_module("invokeai.backend.model_manager.configs.identification_utils")
    taxonomy = importlib.import_module("invokeai.backend.model_manager.taxonomy")
    return {"configs": configs, "raw": raw, "disk": disk, "utils": utils, "taxonomy": taxonomy}, stubs


class _Logger:
    @staticmethod
    def get_logger(name: str = "InvokeAI", *args, **kwargs) -> logging.Logger:
        return logging.getLogger(name)


def check_invokeai(family: str, paths: list[Path], invoke: dict) -> str:
    configs, raw, disk, utils, taxonomy = (invoke[k] for k in ("configs", "raw", "disk", "utils", "taxonomy"))
    base = INVOKE_BASES[family]
    folder = len(paths) == 2  # InvokeAI takes one file or one folder: a diffusers pair is its folder
    path = paths[0].parent if folder else paths[0]
    kind = "Folder" if folder else "File"
    mod = disk.ModelOnDisk(path)
    fields = {  # what ModelConfigFactory.build_common_fields gives every candidate
        "path": path.as_posix(),
        "source": path.as_posix(),
        "source_type": taxonomy.ModelSourceType.Path,
        "name": mod.name,
        "hash": "blake3:check",
        "key": "check",
        "description": None,
        "file_size": mod.size(),
    }
    matched, refusals = [], {}
    for candidate in ("SD1", "SD2", "SDXL"):
        cls = getattr(configs, f"TI_{kind}_{candidate}_Config")
        try:
            with _quiet():
                cls.from_model_on_disk(mod, dict(fields))
            matched.append(candidate)
        except utils.NotAMatchError as error:
            refusals[candidate] = str(error)
        except Exception as error:
            refusals[candidate] = _why(error)
    loaded = path / "learned_embeds.bin" if folder else path  # TextualInversionLoader._get_model_path
    try:
        with _quiet():
            model = raw.TextualInversionModelRaw.from_checkpoint(loaded)
        embeddings = (model.embedding, model.embedding_2)
        load_error = None
    except Exception as error:
        embeddings, load_error = None, _why(error)
    if matched != [base]:
        said = f"installs as {'/'.join(matched)}" if matched else f"refused at install ({refusals[base][:70]})"
        loads = "; its loader reads it" if embeddings and _invoke_same(family, paths, embeddings) else ""
        return said + loads
    if load_error:
        return f"installs; its loader fails ({load_error})"
    if not _invoke_same(family, paths, embeddings):
        return "installs, loads other tensors"
    return YES


def _invoke_same(family: str, paths: list[Path], embeddings) -> bool:
    embedding, embedding_2 = embeddings
    for tensor in ours(paths, family).values():
        # model_patcher.apply_ti's _get_ti_embedding: embedding_2 when its width is the encoder's, else embedding
        chosen = embedding_2 if embedding_2 is not None and embedding_2.shape[1] == tensor.shape[-1] else embedding
        if chosen is None or not _same(chosen, tensor):
            return False
    return True


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


# ---- ComfyUI ----------------------------------------------------------------------------------------------------


def load_comfyui(root: Path) -> tuple[Callable, list[str]]:
    """comfy/sd1_clip.py's load_embed, with the rest of ComfyUI's imports of that module stubbed."""
    source = root / "comfy" / "sd1_clip.py"
    stubs = []
    comfy = types.ModuleType("comfy")
    comfy.__path__ = [str(root / "comfy")]
    sys.modules.setdefault("comfy", comfy)
    for name, attributes in (
        ("comfy.ops", {"manual_cast": None, "scaled_fp8_ops": None}),
        ("comfy.model_management", {"intermediate_device": lambda: "cpu"}),
        ("comfy.clip_model", {"CLIPTextModel": None}),  # a default argument of SDClipModel
    ):
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        sys.modules[name] = module
        setattr(sys.modules["comfy"], name.split(".")[1], module)
        stubs.append(f"{name} (the text model and devices; load_embed uses none of them)")
    spec = importlib.util.spec_from_file_location("comfy.sd1_clip", source)
    module = importlib.util.module_from_spec(spec)
    sys.modules["comfy.sd1_clip"] = module
    spec.loader.exec_module(module)
    return module.load_embed, stubs


def check_comfyui(family: str, paths: list[Path], load_embed: Callable) -> str:
    keys = [e.key for e in FAMILIES[family].encoders]
    want = [ours(paths, family)[k] for k in keys]
    folder = paths[0].parent  # ComfyUI's embeddings folder: `embedding:sunrise` finds sunrise.safetensors / .pt
    name = paths[0].stem  # a diffusers pair: one name for both encoders, the first file's
    problems = []
    for (key, size), tensor in zip(COMFY_KEYS[family], want):
        with _quiet(), _no_logging():
            got = load_embed(name, str(folder), size, key)
        if got is None:
            return "load_embed returned None"
        if got.shape[-1] != size or got.shape[-1] != tensor.shape[-1]:
            problems.append(f"{key}: gets a {got.shape[-1]}-wide tensor, drops it")
        elif not _same(got.reshape(-1, got.shape[-1]), tensor):
            problems.append(f"{key}: other vectors")
    return "; ".join(problems) or YES


@contextlib.contextmanager
def _no_logging():
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


# ---- the table -----------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--invokeai", type=Path, default=Path("/tmp/invokeai"), help="InvokeAI 6.14.2's wheel")
    parser.add_argument("--comfyui", type=Path, default=Path("/tmp/comfyui"), help="a ComfyUI checkout")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()

    from sd_softprompt.models import tiny

    # each client: (family, target, real-width files, tiny-width files) -> its cell; LoRA bundles: ComfyUI alone
    # reads embeddings from a LoRA file (diffusers' load_lora_weights refuses them, InvokeAI has no such reader,
    # and compel would need diffusers' prompt expansion of the bundle's name)
    clients: dict[str, Callable[[str, str, list[Path], list[Path]], str]] = {}
    notes: list[str] = []
    clients["diffusers"] = lambda family, fmt, real, small: (
        check_diffusers(family, small, tiny.BUILDERS[family](seed=0))
        if family in DIFFUSERS_FAMILIES and fmt != "bundle"
        else NONE
    )
    from importlib.metadata import version

    notes.append(f"diffusers {version('diffusers')}, transformers {version('transformers')}, torch {version('torch')}")
    if importlib.util.find_spec("compel") is None:
        notes.append("compel: not installed (pip install compel); skipped")
    else:
        notes.append(f"compel {version('compel')}")
        clients["compel"] = lambda family, fmt, real, small: (
            check_compel(family, small, tiny.BUILDERS[family](seed=0))
            if family in COMPEL_FAMILIES and fmt != "bundle"
            else NONE
        )
    root = invokeai_root(args.invokeai)
    if root is None:
        notes.append(
            f"InvokeAI: no wheel at {args.invokeai} (pip download invokeai==6.14.2 --no-deps -d {args.invokeai}); skipped"
        )
    else:
        invoke, stubs = load_invokeai(root)
        notes.append(f"InvokeAI: {args.invokeai}; stubbed: {'; '.join(stubs)}")
        clients["InvokeAI"] = lambda family, fmt, real, small: (
            check_invokeai(family, real, invoke) if family in INVOKE_BASES and fmt != "bundle" else NONE
        )
    if not (args.comfyui / "comfy" / "sd1_clip.py").is_file():
        notes.append(
            f"ComfyUI: no comfy/sd1_clip.py under {args.comfyui} (--comfyui PATH: a ComfyUI checkout); skipped"
        )
    else:
        load_embed, stubs = load_comfyui(args.comfyui)
        notes.append(f"ComfyUI: {args.comfyui / 'comfy' / 'sd1_clip.py'}; stubbed: {'; '.join(stubs)}")
        clients["ComfyUI"] = lambda family, fmt, real, small: (
            check_comfyui(family, real, load_embed) if family in COMFY_KEYS else NONE
        )

    table = []
    with tempfile.TemporaryDirectory() as tmp:
        for family, fmt, ext in rows():
            if family not in args.families:
                continue
            fam = FAMILIES[family]
            folder = Path(tmp) / family / fmt / ext.strip(".")
            real = write(soft_prompt(family, {e.key: e.width for e in fam.encoders}, 1), fmt, ext, folder / "real")
            small = None
            if fmt != "bundle" and (family in DIFFUSERS_FAMILIES or family in COMPEL_FAMILIES):
                pipe = tiny.BUILDERS[family](seed=0)
                widths = {
                    e.key: getattr(pipe, e.text_encoder).get_input_embeddings().weight.shape[1] for e in fam.encoders
                }
                small = write(soft_prompt(family, widths, 2), fmt, ext, folder / "tiny")
            cells = [check(family, fmt, real, small) for check in clients.values()]
            table.append((fmt, ext, family, cells))
            print(f"{fmt:>10} {ext:>12} {family:>8}: " + " | ".join(cells), file=sys.stderr, flush=True)

    print("\n".join(f"- {note}" for note in notes))
    print(f"- {YES}: installs, loads, and gives every encoder the tensors SoftPrompt.load reads; {NONE}: not run (the")
    print("  client has no such model, or no check here: diffusers is checked on SD 1.x/2.x and SDXL, Flux and SD3 in")
    print("  tests/test_interop.py; compel on SD 1.x/2.x, SDXL and Flux); otherwise the first step that failed")
    print()
    print(f"| `--to` | file | family | {' | '.join(clients)} |")
    print("|---|---|---|" + "---|" * len(clients))
    for fmt, ext, family, cells in table:
        print(f"| `{fmt}` | {ext} | {family} | " + " | ".join(cells) + " |")
    print()
    print(f"By target: the families each client installs and loads with the same tensors ({YES} above)")
    print()
    print(f"| `--to` | file | {' | '.join(clients)} |")
    print("|---|---|" + "---|" * len(clients))
    targets = sorted({(fmt, ext) for fmt, ext, _, _ in table}, key=lambda t: (TARGETS.index(t[0]), t[1]))
    for fmt, ext in targets:
        cells = []
        for i in range(len(clients)):
            mine = [(family, c[i]) for f, e, family, c in table if (f, e) == (fmt, ext)]
            good = [family for family, cell in mine if cell == YES]
            runs = [family for family, cell in mine if cell != NONE]
            cells.append(", ".join(good) if good else ("no" if runs else NONE))
        print(f"| `{fmt}` | {ext} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
