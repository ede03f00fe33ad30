"""Load time of many soft prompts: one call per file vs one call for all, into an SD 1.5-sized text encoder.

The text encoder is CLIP-L at its real size (49,408 x 768 embedding table, 12 layers), built from its config in
code with random weights; the tokenizer is a byte-level BPE one with CLIP's vocabulary size and merge count
(synthetic pieces, nothing downloaded). The UNet and VAE are the tiny ones: loading never touches them.

Four ways to load the same 20 files (4 vectors each), each timed `--repeat` times from a clean pipeline
(median and min printed):

    sd-softprompt, one load_soft_prompt call per file
    sd-softprompt, one load_soft_prompts call for all
    diffusers load_textual_inversion, one call per file (what users report as ~0.4 s a file)
    diffusers load_textual_inversion, one call with lists

    python scripts/benchmark_load.py                 # 20 files, 4 vectors, 5 repeats, CPU
    python scripts/benchmark_load.py --files 50 --json load.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sd_softprompt.files.softprompt import SoftPrompt
from sd_softprompt.inject.loader import load_soft_prompt, load_soft_prompts, unload_soft_prompt
from sd_softprompt.models import tiny

CLIP_VOCAB = 49408


def clip_l_tokenizer():
    """A CLIPTokenizer with CLIP's 49,408 ids and ~48.9k merges: the byte pieces, then merged byte pairs."""
    from transformers import CLIPTokenizer

    vocab, merges = tiny.clip_vocab_and_merges()
    bos, eos = list(vocab)[-2:]
    del vocab[bos], vocab[eos]
    pieces = [p for p in vocab if not p.endswith("</w>") and len(p) == 1]
    merges = list(merges)
    for a in pieces:
        for b in pieces:
            if len(vocab) >= CLIP_VOCAB - 2:
                break
            if f"{a}{b}</w>" not in vocab:
                vocab[f"{a}{b}</w>"] = len(vocab)
                merges.append((a, f"{b}</w>"))
    vocab[bos], vocab[eos] = len(vocab), len(vocab) + 1
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token=eos, model_max_length=77)


def sd15_sized_pipeline():
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    tokenizer = clip_l_tokenizer()
    config = CLIPTextConfig(  # openai/clip-vit-large-patch14's text config, as SD 1.5 ships it
        vocab_size=len(tokenizer),
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=768,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    small = tiny.build_sd(1)
    pipe = type(small)(**{**small.components, "text_encoder": CLIPTextModel(config).eval(), "tokenizer": tokenizer})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_files(folder: Path, count: int, vectors: int) -> tuple[list[str], list[str]]:
    """`count` native files (tokens <fI_1>..) and the same vectors as diffusers files (token <fI>)."""
    g = torch.Generator().manual_seed(0)
    native, diffusers = [], []
    for i in range(count):
        soft = SoftPrompt(
            vectors={"clip_l": torch.randn(vectors, 768, generator=g) * 0.4},
            tokens=[f"<f{i}_{k}>" for k in range(1, vectors + 1)],
            metadata={"name": f"f{i}", "family": "sd1"},
        )
        native += map(str, soft.save(folder / f"f{i}.safetensors"))
        diffusers += map(str, soft.save(folder / f"f{i}_diffusers", format="diffusers"))
    return native, diffusers


def timed(run, reset, repeat: int) -> list[float]:
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
        reset()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=20, help="number of soft prompt files (default %(default)s)")
    parser.add_argument("--vectors", type=int, default=4, help="vectors per file (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each way (default %(default)s)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    pipe = sd15_sized_pipeline()
    table = pipe.text_encoder.get_input_embeddings().weight
    before = (len(pipe.tokenizer), table.detach().clone())

    def clean():
        """Back to the pipeline as built, and check it really is (a benchmark of a broken reset is worthless)."""
        unload_soft_prompt(pipe)
        pipe.unload_textual_inversion()
        weight = pipe.text_encoder.get_input_embeddings().weight
        assert len(pipe.tokenizer) == before[0] and torch.equal(weight, before[1])

    with tempfile.TemporaryDirectory() as tmp:
        native, diffusers = write_files(Path(tmp), args.files, args.vectors)
        names = [f"<f{i}>" for i in range(args.files)]
        ways = {
            "sd-softprompt, one call per file": lambda: [load_soft_prompt(pipe, f) for f in native],
            "sd-softprompt, one call for all": lambda: load_soft_prompts(pipe, native),
            "diffusers, one call per file": lambda: [
                pipe.load_textual_inversion(f, token=t) for f, t in zip(diffusers, names)
            ],
            "diffusers, one call with lists": lambda: pipe.load_textual_inversion(diffusers, token=names),
        }
        # warm-up: first-call costs (imports, the tokenizer snapshot's first deepcopy) are not what we compare
        for run in ways.values():
            run()
            clean()
        results = {name: timed(run, clean, args.repeat) for name, run in ways.items()}

    print(
        f"{args.files} files x {args.vectors} vectors into a CLIP-L-sized encoder "
        f"({before[1].shape[0]} x {before[1].shape[1]} table), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    report = {}
    for name, seconds in results.items():
        median, best = statistics.median(seconds), min(seconds)
        report[name] = {"median_s": round(median, 4), "min_s": round(best, 4), "runs_s": [round(s, 4) for s in seconds]}
        print(f"  {name:34s} median {median:7.3f} s  min {best:7.3f} s  ({median / args.files * 1000:6.1f} ms a file)")
    if args.json:
        Path(args.json).write_text(json.dumps({"files": args.files, "vectors": args.vectors, **report}, indent=2))


if __name__ == "__main__":
    main()
