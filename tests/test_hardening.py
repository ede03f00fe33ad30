"""Hostile input (issue 12): every item ends in one typed error, or one CLI line and exit 2, with the files on
disk as promised. The hostile files are built here; the full disk is a small tmpfs where one can be mounted,
and a patched writer that runs out of space everywhere."""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sd_softprompt import cli
from sd_softprompt.errors import InvalidVectorsError, SoftPromptError, TokenCollisionError, WriteError
from sd_softprompt.files.softprompt import SoftPrompt
from sd_softprompt.inject.inspection import inspect_file
from sd_softprompt.inject.loader import load_soft_prompt, loaded_tokens, shadowed_word

WIDTH = 32  # the tiny SD1 pipeline's CLIP width


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line_error(code: int, err: str, *names: str) -> str:
    """Exit 2, one last line under 300 characters naming ``names``, no traceback (progress bars may come first)."""
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("sd-softprompt: error: "), err
    assert err.rstrip().endswith(lines[0]) and len(lines[0]) < 300, lines[0]
    assert "Traceback" not in err
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def sd1_prompt(n: int = 2, seed: int = 0, **kw) -> SoftPrompt:
    g = torch.Generator().manual_seed(seed)
    return SoftPrompt({"clip_l": torch.randn(n, WIDTH, generator=g) * 0.3}, **kw)


# ------------------------------------------------------------------------------ 1. every dtype
# Every dtype name safetensors' format defines (its Rust Dtype enum), with its size in bits.
SAFETENSORS_DTYPES = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}
# Those that load (float8 widened to float32 for validation and use); the rest must be refused.
LOADABLE = {
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
    "F8_E5M2": torch.float32,
    "F8_E4M3": torch.float32,
    "F8_E8M0": torch.float32,
    "F8_E4M3FNUZ": torch.float32,
    "F8_E5M2FNUZ": torch.float32,
}
_TORCH_DTYPE = {
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
    "F8_E5M2": torch.float8_e5m2,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E4M3FNUZ": torch.float8_e4m3fnuz,
    "F8_E5M2FNUZ": torch.float8_e5m2fnuz,
}


def raw_safetensors(path: Path, dtype: str, shape: list[int], data: bytes, key: str = "clip_l") -> Path:
    """A safetensors file written byte by byte, so that any dtype name can be put in its header."""
    header = json.dumps({key: {"dtype": dtype, "shape": shape, "data_offsets": [0, len(data)]}}).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


def dtype_file(folder: Path, dtype: str) -> Path:
    g = torch.Generator().manual_seed(1)
    values = torch.randn(3, WIDTH, generator=g)
    if dtype in _TORCH_DTYPE:
        data = values.to(_TORCH_DTYPE[dtype]).contiguous().view(torch.uint8).numpy().tobytes()
    elif dtype == "F8_E8M0":  # exponent-only bytes: 2^-7 .. 2^8
        data = bytes(torch.randint(120, 136, (3 * WIDTH,), generator=g).tolist())
    else:
        data = bytes(torch.randint(1, 60, (3 * WIDTH * SAFETENSORS_DTYPES[dtype] // 8,), generator=g).tolist())
    return raw_safetensors(folder / f"{dtype}.safetensors", dtype, [3, WIDTH], data)


@pytest.mark.parametrize("dtype", sorted(SAFETENSORS_DTYPES))
def test_every_safetensors_dtype_loads_or_is_refused(tmp_path, dtype):
    path = dtype_file(tmp_path, dtype)
    if dtype in LOADABLE:
        soft = SoftPrompt.load(path)
        vectors = soft.vectors["clip_l"]
        assert vectors.dtype == LOADABLE[dtype] and vectors.shape == (3, WIDTH)
        assert torch.isfinite(vectors).all()
        assert inspect_file(path)["encoders"][0]["dtype"] == str(LOADABLE[dtype]).replace("torch.", "")
        if LOADABLE[dtype] != _TORCH_DTYPE.get(dtype, torch.float32) or dtype == "F8_E8M0":
            assert any("widened to float32" in note for note in soft.notes)
    else:
        with pytest.raises(SoftPromptError, match=rf"{dtype}\.safetensors: ") as caught:
            SoftPrompt.load(path)
        assert len(str(caught.value)) < 300 and "\n" not in str(caught.value)


def test_float8_file_in_the_cli_and_a_pipeline(tiny_dirs, sd1, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    g = torch.Generator().manual_seed(0)
    save_file({"clip_l": (torch.randn(3, WIDTH, generator=g) * 0.3).to(torch.float8_e4m3fn)}, "f8.safetensors")
    code, out, err = run_cli(capsys, "inspect", "f8.safetensors", "--model", tiny_dirs("sd1"))
    assert code == 0, err
    assert "3 x 32 (float32)" in out and "widened to float32" in out
    tokens = load_soft_prompt(sd1, "f8.safetensors")
    row = sd1.text_encoder.get_input_embeddings().weight[sd1.tokenizer.convert_tokens_to_ids(tokens[0])]
    assert torch.isfinite(row).all() and row.abs().sum() > 0
    code, out, err = run_cli(capsys, "convert", "f8.safetensors", "--to", "a1111", "--out", "f8.pt")
    assert code == 0 and next(iter(SoftPrompt.load("f8.pt").vectors.values())).dtype == torch.float32
    # A dtype torch cannot even convert is one line, exit 2.
    dtype_file(tmp_path, "F4")
    assert_one_line_error(*run_cli(capsys, "inspect", "F4.safetensors")[::2], "F4.safetensors", "float4")


# ------------------------------------------------------------------------------ 2. full disk, no permission
def _mount_tmpfs(folder: Path, size: str) -> bool:
    """A small tmpfs at ``folder`` (root in a container that allows it); False where it cannot be had."""
    folder.mkdir()
    if os.geteuid() != 0:
        return False
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    return result.returncode == 0


def _patch_full_disk(monkeypatch, fail_after_bytes: int) -> None:
    """Every write of bytes or text runs out of space once ``fail_after_bytes`` were written in all."""
    written = [0]
    real_bytes, real_text = Path.write_bytes, Path.write_text

    def check(path: Path, size: int) -> None:
        if written[0] + size > fail_after_bytes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        written[0] += size

    def write_bytes(self, data):
        check(self, len(data))
        return real_bytes(self, data)

    def write_text(self, data, encoding=None, errors=None, newline=None):
        check(self, len(data.encode()))
        return real_text(self, data, encoding, errors, newline)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    monkeypatch.setattr(Path, "write_text", write_text)


@pytest.fixture(params=["tmpfs", "patched"])
def full_disk(request, tmp_path, monkeypatch):
    """A folder with room for about 6 KB (tmpfs: one 4 KB page and some), and a function to fill it."""
    folder = tmp_path / "disk"
    if request.param == "tmpfs":
        if not _mount_tmpfs(folder, "8k"):
            pytest.skip("no tmpfs can be mounted here (needs root in a container that allows mount)")
        request.addfinalizer(lambda: subprocess.run(["umount", str(folder)], check=False))
    else:
        folder.mkdir()
        _patch_full_disk(monkeypatch, 6 * 1024)
    return folder


def test_convert_to_a_full_disk_is_one_line_and_writes_nothing(full_disk, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    big = SoftPrompt({"clip_l": torch.randn(75, 768)})  # 230 KB: more than the disk holds
    big.validate()
    monkeypatch.setattr(SoftPrompt, "load", classmethod(lambda cls, path, token=None: big))
    code, _, err = run_cli(capsys, "convert", "in.safetensors", "--to", "native", "--out", "disk/out.safetensors")
    assert_one_line_error(code, err, "disk/out.safetensors", "No space left on device", "free some space")
    assert files_in(full_disk) == []


def test_grid_pair_on_a_full_disk_leaves_neither_file(full_disk, tiny_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (full_disk / "filler").write_bytes(b"x" * 5 * 1024)  # what is left: less than the grid and its record
    argv = ["grid", "--model", tiny_dirs("sd1"), "--prompt", "a lake", "--seeds", "0", "--steps", "1"]
    code, _, err = run_cli(capsys, *argv, "--height", "64", "--width", "64", "--out", "disk/grid.png")
    assert_one_line_error(code, err, "disk/grid", "No space left on device")
    assert files_in(full_disk) == ["filler"]


def test_bundle_convert_to_a_full_disk_is_one_line(full_disk, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sd1_prompt().save("s.safetensors")
    save_file({"lora_unet_x.lora_down.weight": torch.ones(64, 64)}, "lora.safetensors")  # 16 KB: more than fits
    argv = ["convert", "s.safetensors", "--to", "bundle", "--lora", "lora.safetensors", "--out", "disk/b.safetensors"]
    assert_one_line_error(*run_cli(capsys, *argv)[::2], "disk/b.safetensors", "No space left on device")
    assert files_in(full_disk) == []


def test_permission_errors_are_one_line_naming_the_path(tmp_path, capsys, monkeypatch):
    # Tests may run as root, for whom chmod 000 refuses nothing: the refusal comes from a patched mkstemp.
    import tempfile

    monkeypatch.chdir(tmp_path)
    sd1_prompt().save("in.safetensors")

    def refuse(*args, dir=None, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    code, _, err = run_cli(capsys, "convert", "in.safetensors", "--to", "kohya", "--out", "locked/out.safetensors")
    assert_one_line_error(code, err, "locked/out.safetensors", "Permission denied", "choose a folder you can write to")
    assert files_in(tmp_path / "locked") == []
    # The Python API raises the typed error.
    with pytest.raises(WriteError, match="Permission denied"):
        sd1_prompt().save(tmp_path / "locked" / "x.safetensors")


def test_a_failed_rename_takes_back_the_first_file_of_a_pair(tmp_path, monkeypatch):
    calls = []
    real = os.replace

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    g = torch.Generator().manual_seed(0)
    pair = SoftPrompt({"clip_l": torch.randn(2, 768, generator=g), "clip_g": torch.randn(2, 1280, generator=g)})
    with pytest.raises(WriteError, match="learned_embeds_2.safetensors: cannot write it"):
        pair.save(tmp_path / "pair", "diffusers")
    assert files_in(tmp_path / "pair") == []


# ------------------------------------------------------------------------------ 3. numeric flags
@pytest.mark.parametrize(
    "flags, names",
    [
        (["--guidance", "nan"], "--guidance nan"),
        (["--guidance", "inf"], "--guidance inf"),
        (["--guidance", "-1"], "--guidance -1"),
        (["--steps", "0"], "--steps 0"),
        (["--height", "-64"], "--height -64"),
        (["--width", "65"], "--width 65"),
        (["--seed", "x"], "--seed: invalid int value"),
        (["--seed", "-1"], "seed -1: seeds are whole numbers from 0"),
        (["--seed", str(2**64)], f"seed {2**64}: seeds are whole numbers from 0"),
    ],
)
def test_generate_numeric_flags(flags, names, tiny_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["generate", "--model", tiny_dirs("sd1"), "--prompt", "a lake", "--steps", "1", *flags]
    code, out, err = run_cli(capsys, *argv, "--out", "x.png")
    assert_one_line_error(code, err, names)
    assert out == "" and files_in(tmp_path) == []


def test_inspect_negative_top_k(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sd1_prompt().save("a.safetensors")
    assert_one_line_error(*run_cli(capsys, "inspect", "a.safetensors", "--top-k", "-1")[::2], "--top-k -1")


# ------------------------------------------------------------------------------ 4. tokens that shadow words
def test_tokens_that_are_words_are_refused_at_load(sd1):
    vocab = sd1.tokenizer.get_vocab()
    assert "lake</w>" in vocab and "lake" not in vocab  # the word, with CLIP's end-of-word marker
    for tokens, word in ((["lake", "[v2]"], "'lake'"), (["[v1]", "Sky"], "'sky'")):
        with pytest.raises(TokenCollisionError, match=rf"token '\w+' is already the word {word} of tokenizer") as e:
            load_soft_prompt(sd1, sd1_prompt(), tokens)
        assert "<" in str(e.value) and "[v" in str(e.value) and "--allow-shadowing" in str(e.value)
    assert loaded_tokens(sd1) == []


def test_a_file_carrying_word_tokens_is_refused_and_the_override_works(sd1, tmp_path):
    path = tmp_path / "hijack.safetensors"
    sd1_prompt(tokens=["lake", "sky"]).save(path)
    assert SoftPrompt.load(path).tokens == ["lake", "sky"]  # reading it is fine; loading it is not
    before = sd1.tokenizer("a lake").input_ids
    with pytest.raises(TokenCollisionError, match=r"hijack\.safetensors: token 'lake'"):
        load_soft_prompt(sd1, path)
    assert sd1.tokenizer("a lake").input_ids == before
    load_soft_prompt(sd1, path, allow_shadowing=True)
    assert sd1.tokenizer("a lake").input_ids != before  # what the refusal protects: the word is now soft


def test_t5_words_are_shadowed_too(flux):
    t5, clip = flux.tokenizer_2, flux.tokenizer
    assert shadowed_word(t5, "lake") == "▁lake" and shadowed_word(clip, "lake") == "lake</w>"
    assert shadowed_word(t5, "Lake") == "▁lake"
    assert shadowed_word(t5, "<lake>") is None and shadowed_word(clip, "[v1]") is None
    g = torch.Generator().manual_seed(0)
    soft = SoftPrompt({"t5xxl": torch.randn(1, 48, generator=g)})  # T5 vectors only: every tokenizer is checked
    with pytest.raises(TokenCollisionError, match=r"token 'lake' is already the word 'lake' of tokenizer"):
        load_soft_prompt(flux, soft, ["lake"])
    assert loaded_tokens(flux) == []


@pytest.mark.parametrize("token", ["<a b>", "x y", "tab\there"])
def test_tokens_with_whitespace_are_refused(sd1, token):
    with pytest.raises(TokenCollisionError, match="contains whitespace"):
        load_soft_prompt(sd1, sd1_prompt(n=1), [token], allow_shadowing=True)
    assert loaded_tokens(sd1) == []


def test_cli_shadowing_refused_then_allowed(tiny_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sd1_prompt().save("s.safetensors")
    argv = ["generate", "--model", tiny_dirs("sd1"), "--soft", "s.safetensors=lake,sky", "--prompt", "a lake"]
    argv += ["--steps", "1", "--height", "64", "--width", "64", "--out", "x.png"]
    assert_one_line_error(*run_cli(capsys, *argv)[::2], "token 'lake'", "--allow-shadowing")
    assert files_in(tmp_path) == ["s.safetensors"]
    code, _, err = run_cli(capsys, *argv, "--allow-shadowing")
    assert code == 0, err
    assert files_in(tmp_path) == ["s.safetensors", "x.png"]


# ------------------------------------------------------------------------------ 5. values that overflow
def test_huge_values_inspect_flags_and_fp16_load_refuses(tiny_dirs, sd1, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_file({"clip_l": torch.full((2, WIDTH), 1e38)}, "huge.safetensors")
    report = inspect_file("huge.safetensors")
    norms = report["encoders"][0]["norms"]
    assert norms[0] == pytest.approx(1e38 * WIDTH**0.5, rel=1e-6)  # float64: finite, not inf
    assert "do not fit float16" in report["encoders"][0]["flags"][0]
    code, out, err = run_cli(capsys, "inspect", "huge.safetensors", "--model", tiny_dirs("sd1"))
    assert code == 0 and "norm 5.657e+38" in out and "far outside" in out and "inf" not in out, out + err

    sd1.to(torch.float16)
    before = sd1.text_encoder.get_input_embeddings().weight.clone()
    with pytest.raises(InvalidVectorsError, match=r"huge\.safetensors: clip_l has values up to 1e\+38.*float16"):
        load_soft_prompt(sd1, "huge.safetensors")
    assert torch.equal(sd1.text_encoder.get_input_embeddings().weight, before) and loaded_tokens(sd1) == []


def test_fp32_pipeline_refuses_norms_it_cannot_square_and_takes_ordinary_ones(sd1):
    with pytest.raises(InvalidVectorsError, match="more than this pipeline's text_encoder can square"):
        load_soft_prompt(sd1, SoftPrompt({"clip_l": torch.full((1, WIDTH), 1e30)}))
    load_soft_prompt(sd1, SoftPrompt({"clip_l": torch.full((1, WIDTH), 1e3)}))  # big, but usable
    ids = sd1.tokenizer("[v1] a lake", return_tensors="pt").input_ids
    assert torch.isfinite(sd1.text_encoder(ids)[0]).all()


def test_fp16_load_of_ordinary_vectors_is_unchanged(sd1):
    sd1.to(torch.float16)
    soft = sd1_prompt()
    load_soft_prompt(sd1, soft)
    ids = sd1.tokenizer.convert_tokens_to_ids(soft.tokens)
    got = sd1.text_encoder.get_input_embeddings().weight[ids]
    assert torch.equal(got, soft.vectors["clip_l"].to(torch.float16))


# ------------------------------------------------------------------------------ 6. one short line
def test_unknown_layout_with_3000_keys_is_one_short_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_file({f"key_{i:04d}": torch.ones(1, 4) for i in range(3000)}, "many.safetensors")
    line = assert_one_line_error(*run_cli(capsys, "inspect", "many.safetensors")[::2], "many.safetensors")
    assert "3000 keys: key_0000, key_0001, key_0002 and 2997 more" in line


def test_zero_width_tensor_says_zero_width(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_file({"clip_l": torch.ones(3, 0)}, "narrow.safetensors")
    line = assert_one_line_error(*run_cli(capsys, "inspect", "narrow.safetensors")[::2], "narrow.safetensors")
    assert "zero width" in line and "all zeros" not in line


def test_huge_key_and_token_names_stay_short(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = "k" * 10_000
    save_file({name: torch.ones(1, 4), "other": torch.ones(1, 4)}, "long.safetensors")
    assert_one_line_error(*run_cli(capsys, "inspect", "long.safetensors")[::2], "long.safetensors")
    tokens = [f"{uuid.UUID(int=i)}" * 50 for i in range(3)] + ["dup", "dup"]
    with pytest.raises(SoftPromptError) as caught:
        SoftPrompt({"clip_l": torch.ones(5, 4)}, tokens=tokens).validate()
    assert len(str(caught.value)) < 300


def test_argparse_errors_are_one_line(capsys):
    code, _, err = run_cli(capsys, "train", "--lr", "fast")
    assert_one_line_error(code, err, "argument --lr: invalid float value: 'fast'", "--help")


# ------------------------------------------------------------------------------ training: 2, 3, 4, 7
HARD = "image of serene landscape at sunrise with trees mountains and lake"


def train_argv(model: str, out: str, *extra) -> list[str]:
    fast = ["--steps", "2", "--vectors", "2", "--loss", "sequence", "--eval-samples", "2", "--probe-size", "64"]
    return ["train", "--model", model, "--target", HARD, *fast, "--no-progress", "--out", out, *extra]


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--lr", "nan"),
        ("--lr", "inf"),
        ("--lr", "0"),
        ("--lr", "-0.1"),
        ("--norm-weight", "nan"),
        ("--norm-weight", "-1"),
        ("--max-grad-norm", "0"),
        ("--max-grad-norm", "inf"),
        ("--warmup", "-1"),
        ("--resolution", "0"),
        ("--steps", "0"),
        ("--batch-size", "-2"),
        ("--probe-size", "0"),
        ("--checkpoint-every", "-5"),
        ("--seed", "-1"),
    ],
)
def test_train_numeric_flags_refused_up_front(flag, value, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # No model is needed to refuse them: the check comes before anything is loaded.
    argv = train_argv("no-such-model", "out.safetensors")
    argv = [a for i, a in enumerate(argv) if a != flag and (i == 0 or argv[i - 1] != flag)]
    code, out, err = run_cli(capsys, *argv, flag, value)
    assert_one_line_error(code, err, f"{flag} {value}: must be")
    assert out == "" and files_in(tmp_path) == []


def test_train_token_checks(tiny_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = tiny_dirs("sd1")
    # Counts and repeats, then whitespace: refused before the model loads.
    line = assert_one_line_error(*run_cli(capsys, *train_argv(model, "o.safetensors", "--tokens", "<a>"))[::2])
    assert "--tokens <a>: give 2 different names, one per vector (--vectors 2)" in line
    line = assert_one_line_error(*run_cli(capsys, *train_argv(model, "o.safetensors", "--tokens", "<a>", "<a>"))[::2])
    assert "--tokens <a>, <a>: give 2 different names" in line
    line = assert_one_line_error(*run_cli(capsys, *train_argv(model, "o.safetensors", "--tokens", "<a b>", "x y"))[::2])
    assert "--tokens: token '<a b>' contains whitespace" in line
    # Words of the vocabulary: refused once the tokenizer is there, naming the word.
    line = assert_one_line_error(*run_cli(capsys, *train_argv(model, "o.safetensors", "--tokens", "lake", "sky"))[::2])
    assert "token 'lake' is already the word 'lake' of tokenizer" in line and "--allow-shadowing" in line
    assert files_in(tmp_path) == []
    code, _, err = run_cli(capsys, *train_argv(model, "o.safetensors", "--tokens", "lake", "sky", "--allow-shadowing"))
    assert code == 0, err
    assert SoftPrompt.load("o.safetensors").tokens == ["lake", "sky"]


def _interrupt_at(monkeypatch, call: int) -> None:
    """Ctrl-C during the `call`-th loss (the first is the fixed-batch loss before training)."""
    from sd_softprompt.train import objectives

    real, calls = objectives.cond_loss, [0]

    def loss(*args):
        calls[0] += 1
        if calls[0] == call:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(objectives, "cond_loss", loss)


def assert_interrupted(code: int, err: str, *names: str) -> str:
    lines = [line for line in err.splitlines() if "interrupted" in line]
    assert code == 130 and len(lines) == 1 and err.rstrip().endswith(lines[0]), err
    assert len(lines[0]) < 300 and "Traceback" not in err
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


def test_ctrl_c_says_where_the_checkpoint_is_and_how_to_resume(tiny_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = train_argv(tiny_dirs("sd1"), "run.safetensors", "--steps", "4", "--checkpoint-every", "2")
    with monkeypatch.context() as m:
        _interrupt_at(m, 2)  # step 1: nothing saved yet
        line = assert_interrupted(*run_cli(capsys, *argv)[::2], "no checkpoint was written yet (one every 2 steps)")
    assert line.startswith("sd-softprompt: interrupted; ") and files_in(tmp_path) == []
    with monkeypatch.context() as m:
        _interrupt_at(m, 4)  # step 3: the checkpoint of step 2 is there
        assert_interrupted(*run_cli(capsys, *argv)[::2], "last checkpoint is run.checkpoint.pt (step 2)", "--resume")
    assert files_in(tmp_path) == ["run.checkpoint.pt"]
    code, _, err = run_cli(capsys, *argv, "--resume")
    assert code == 0, err
    assert files_in(tmp_path) == ["README.md", "run.config.toml", "run.report.json", "run.safetensors"]
    assert len(json.loads(Path("run.report.json").read_text())["losses"]) == 4


def test_ctrl_c_in_the_python_api_says_it_too(sd1, tmp_path, monkeypatch):
    from sd_softprompt.train import TrainConfig, train

    _interrupt_at(monkeypatch, 2)
    cfg = TrainConfig(
        model="tiny", out=str(tmp_path / "a.safetensors"), target=HARD, vectors=2, steps=2, loss="sequence"
    )
    with pytest.raises(KeyboardInterrupt, match="no checkpoint was written yet"):
        train(cfg, pipe=sd1)


@pytest.fixture(params=["tmpfs", "patched"])
def train_disk(request, tmp_path, monkeypatch):
    """A folder where the first checkpoint and the soft prompt fit but the last checkpoint and the report do not,
    and a function that makes room."""
    folder = tmp_path / "disk"
    if request.param == "tmpfs":
        # 16 KB: the 9.6 KB checkpoint (3 pages) and the 1 KB soft prompt (1 page), nothing more.
        if os.sysconf("SC_PAGE_SIZE") != 4096 or not _mount_tmpfs(folder, "16k"):
            pytest.skip("no 4 KB-page tmpfs can be mounted here (needs root in a container that allows mount)")
        request.addfinalizer(lambda: subprocess.run(["umount", str(folder)], check=False))
        return folder, lambda: subprocess.run(["mount", "-o", "remount,size=1m", str(folder)], check=True)
    folder.mkdir()
    patch = monkeypatch.context()
    m = patch.__enter__()
    real_bytes, real_text, checkpoints = Path.write_bytes, Path.write_text, []

    def refuse(path: Path) -> None:
        if ".checkpoint.pt." in path.name:
            checkpoints.append(path)
        if ".report.json." in path.name or len(checkpoints) > 1 and ".checkpoint.pt." in path.name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    m.setattr(Path, "write_bytes", lambda self, data: refuse(self) or real_bytes(self, data))
    m.setattr(Path, "write_text", lambda self, data, *a, **k: refuse(self) or real_text(self, data, *a, **k))
    return folder, lambda: patch.__exit__(None, None, None)


def test_full_disk_in_training_keeps_the_checkpoint_and_writes_no_half_pair(
    train_disk, tiny_dirs, tmp_path, capsys, monkeypatch
):
    folder, make_room = train_disk
    monkeypatch.chdir(tmp_path)
    argv = train_argv(tiny_dirs("sd1"), "disk/x.safetensors", "--checkpoint-every", "1")
    code, out, err = run_cli(capsys, *argv)
    line = assert_one_line_error(code, err, "disk/x.report.json: cannot write it (No space left on device)")
    assert "the last checkpoint is disk/x.checkpoint.pt (step 1): rerun the same command with --resume" in line
    assert "warning: step 2: disk/x.checkpoint.pt: cannot write it" in out  # the last checkpoint did not fit
    assert files_in(folder) == ["x.checkpoint.pt"]  # the first checkpoint survives; no soft prompt without report
    make_room()
    code, out, err = run_cli(capsys, *argv, "--resume")
    assert code == 0, err
    assert "resuming from disk/x.checkpoint.pt at step 1" in out
    assert files_in(folder) == ["README.md", "x.config.toml", "x.report.json", "x.safetensors"]  # with its card


# ============================================================================== issue 21: the second round
# ------------------------------------------------------------------------------ writes
def test_convert_of_a_pair_into_a_folder_in_the_way_keeps_the_old_first_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    g = torch.Generator().manual_seed(0)
    SoftPrompt({"clip_l": torch.randn(2, 768, generator=g), "clip_g": torch.randn(2, 1280, generator=g)}).save(
        "x.safetensors"
    )
    out = tmp_path / "pair"
    out.mkdir()
    (out / "learned_embeds.safetensors").write_bytes(b"the old first file")
    (out / "learned_embeds_2.safetensors").mkdir()  # a folder where the second file goes
    argv = ["convert", "x.safetensors", "--to", "diffusers", "--out", "pair"]
    line = assert_one_line_error(*run_cli(capsys, *argv)[::2], "learned_embeds_2.safetensors: a folder")
    assert "nothing was written" in line
    assert (out / "learned_embeds.safetensors").read_bytes() == b"the old first file"
    assert files_in(out) == ["learned_embeds.safetensors", "learned_embeds_2.safetensors"]


def test_a_group_whose_second_rename_fails_puts_the_old_files_back(tmp_path, monkeypatch):
    from sd_softprompt.files.atomic import atomic_write, bytes_writer, together

    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text(f"old {name}")
    real = os.replace

    def replace(src, dst):
        if Path(dst).name == "b.txt" and Path(src).name.endswith(".tmp"):
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(WriteError, match=r"b\.txt: cannot write it \(Device or resource busy\)"), together():
        atomic_write([(tmp_path / "a.txt", bytes_writer(b"new a"))])
        atomic_write([(tmp_path / "b.txt", bytes_writer(b"new b"))])
    assert [(tmp_path / n).read_text() for n in ("a.txt", "b.txt")] == ["old a.txt", "old b.txt"]
    assert files_in(tmp_path) == ["a.txt", "b.txt"]  # no temp file, no kept copy left behind


# ------------------------------------------------------------------------------ what a file can print
HOSTILE = "\x1b[2J\x1b]0;owned\x07\rFORGED LINE \x9b31m \u202eevil"


def test_inspect_escapes_what_the_file_says(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    header = {"name": HOSTILE, "note": HOSTILE * 1000, "tokens": json.dumps(["[a]\nFORGED", "[b]\x1b[1A"])}
    save_file({"clip_l": torch.randn(2, WIDTH)}, "bad.safetensors", metadata={"format": "sd-softprompt/1"} | header)
    code, out, err = run_cli(capsys, "inspect", "bad.safetensors")
    assert code == 0, err
    for raw in ("\x1b", "\x07", "\r", "\x9b", "\u202e"):
        assert raw not in out
    assert not any(line.startswith("FORGED") for line in out.splitlines())  # a token name forges no line
    assert "\\u001b[2J" in out and "[a]\\nFORGED" in out
    assert max(len(line) for line in out.splitlines()) < 300  # the 50 KB note is capped
    # --json: the values come back exactly, but nothing in the output is a terminal's to act on.
    code, out, err = run_cli(capsys, "inspect", "bad.safetensors", "--json")
    assert code == 0 and not any(raw in out for raw in ("\x1b", "\x9b", "\u202e", "\r"))
    assert json.loads(out)["metadata"]["name"] == HOSTILE


def test_errors_escape_and_cap_what_the_file_says(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_file({"\x1b[2Jkey": torch.ones(1, 4), "other\x1b]0;t\x07": torch.ones(1, 4)}, "keys.safetensors")
    line = assert_one_line_error(*run_cli(capsys, "inspect", "keys.safetensors")[::2], "unknown embedding layout")
    assert "\x1b" not in line and "\x07" not in line and "\\u001b[2Jkey" in line
    # A 100 KB family string: the line stays short, and the advice at its end survives the cap.
    g = torch.Generator().manual_seed(0)
    save_file({"clip_l": torch.randn(2, 768, generator=g)}, "fam.safetensors", metadata={"family": "x" * 100_000})
    line = assert_one_line_error(*run_cli(capsys, "convert", "fam.safetensors", "--to", "kohya", "--out", "k")[::2])
    from sd_softprompt.families import FAMILIES

    assert line.endswith(f"set metadata['family'] to one of {', '.join(FAMILIES)}"), line


# ------------------------------------------------------------------------------ sizes in generate / grid
def gen_argv(model: str, *sizes) -> list[str]:
    return ["generate", "--model", model, "--prompt", "a lake", "--steps", "1", "--out", "x.png", *sizes]


@pytest.mark.parametrize("flag, size", [("--width", (32, 64)), ("--height", (64, 32))])
def test_one_side_alone_is_honoured(flag, size, tiny_dirs, tmp_path, capsys, monkeypatch):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, *gen_argv(tiny_dirs("sd1"), flag, "32"))
    assert code == 0, err
    assert Image.open("x.png").size == size  # the other side is the model's own (64)


def test_sizes_past_memory_are_refused_before_drawing(tiny_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = assert_one_line_error(
        *run_cli(capsys, *gen_argv(tiny_dirs("sd1"), "--width", "100000", "--height", "100000"))[::2]
    )
    assert "--height 100000 --width 100000: decoding 1 picture(s) of that size needs at least" in line
    assert "draw smaller pictures" in line and files_in(tmp_path) == []


def test_sizes_the_pipeline_refuses_are_one_line_before_drawing(tiny_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # SD3's position-embedding grid: 16 patches a side on the tiny model, 256 px.
    line = assert_one_line_error(*run_cli(capsys, *gen_argv(tiny_dirs("sd3"), "--width", "512", "--height", "64"))[::2])
    assert "--width 512: this Stable Diffusion 3 model draws at most 256 px a side" in line
    assert files_in(tmp_path) == []


@pytest.mark.parametrize(
    "family, size, says",
    [("sana", 40, "needs a multiple of 32"), ("lumina2", 2048, "draws at most 1024 px a side")],
)
def test_sizes_the_llm_pipelines_refuse(family, size, says):
    from sd_softprompt.errors import ConfigError
    from sd_softprompt.models import tiny
    from sd_softprompt.render.generate import generate

    pipe = tiny.BUILDERS[family]()
    with pytest.raises(ConfigError, match=says) as caught:
        generate(pipe, "a lake", 0, 1, 4.0, 64, size)
    assert len(str(caught.value)) < 300


# ------------------------------------------------------------------------------ pipelines in the states users create
def test_unloading_keeps_another_tools_embeddings(sd1):
    from sd_softprompt.inject.loader import unload_soft_prompt

    cat = torch.randn(WIDTH, generator=torch.Generator().manual_seed(3))
    load_soft_prompt(sd1, sd1_prompt())
    sd1.load_textual_inversion(cat, token="<cat>")  # diffusers' own loader, after ours
    ids = sd1.tokenizer("a <cat>", return_tensors="pt").input_ids
    before = sd1.text_encoder(ids)[0]
    unload_soft_prompt(sd1)
    assert loaded_tokens(sd1) == [] and "[v1]" not in sd1.tokenizer.get_vocab()
    row = sd1.text_encoder.get_input_embeddings().weight[sd1.tokenizer.convert_tokens_to_ids("<cat>")]
    assert torch.equal(row, cat)
    ids = sd1.tokenizer("a <cat>", return_tensors="pt").input_ids
    assert torch.equal(sd1.text_encoder(ids)[0], before)  # "<cat>" means what it meant


@pytest.mark.parametrize("how", ["meta", "sequential offload"])
def test_encoders_not_in_memory_are_refused_not_loaded_to_no_effect(sd1, how):
    from sd_softprompt.errors import ConfigError

    if how == "meta":
        sd1.text_encoder.get_input_embeddings().to("meta")
    else:
        from accelerate import cpu_offload

        cpu_offload(sd1.text_encoder, execution_device=torch.device("cpu"))  # what enable_sequential_cpu_offload does
    vocab = dict(sd1.tokenizer.get_vocab())
    with pytest.raises(ConfigError, match="text_encoder: its input embeddings are not in memory") as caught:
        load_soft_prompt(sd1, sd1_prompt())
    assert len(str(caught.value)) < 300
    assert sd1.tokenizer.get_vocab() == vocab and loaded_tokens(sd1) == []


def test_a_fifo_is_refused_not_waited_on(sd1, tmp_path, capsys, monkeypatch):
    from sd_softprompt.errors import FormatError

    monkeypatch.chdir(tmp_path)
    os.mkfifo("pipe.safetensors")
    assert_one_line_error(*run_cli(capsys, "inspect", "pipe.safetensors")[::2], "pipe.safetensors: not a regular file")
    with pytest.raises(FormatError, match="not a regular file"):
        load_soft_prompt(sd1, "pipe.safetensors")
    os.mkfifo("target.txt")
    argv = train_argv("no-such-model", "o.safetensors")
    argv[argv.index("--target") : argv.index("--target") + 2] = ["--target-file", "target.txt"]
    assert_one_line_error(*run_cli(capsys, *argv)[::2], "target.txt: not a regular file")


# ------------------------------------------------------------------------------ mix, and sources that are not paths
def test_mix_strength_that_overflows_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    SoftPrompt({"clip_l": (torch.randn(2, WIDTH) * 0.3).half()}).save("h.safetensors")
    argv = ["mix", "h.safetensors", "--strength", "1e6", "--out", "m.safetensors"]
    line = assert_one_line_error(*run_cli(capsys, *argv)[::2], "too large for float16", "smaller strength")
    assert "diverged" not in line and files_in(tmp_path) == ["h.safetensors"]


@pytest.mark.parametrize("source", [None, 123, b"x.safetensors", {"clip_l": 1}, [None, "a"]])
def test_sources_that_are_not_paths_are_a_typed_error(sd1, source):
    from sd_softprompt.errors import SourceError
    from sd_softprompt.files.mixing import mix

    for call in (lambda: load_soft_prompt(sd1, source), lambda: SoftPrompt.load(source), lambda: mix([source])):
        with pytest.raises(SourceError, match="is not a soft prompt source") as caught:
            call()
        assert isinstance(caught.value, TypeError) and len(str(caught.value)) < 300 and "\n" not in str(caught.value)
    assert loaded_tokens(sd1) == []
