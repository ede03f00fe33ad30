"""Long prompts in pictures on the toy world: F of N soft vectors against every other way to draw a long prompt.

For each long prompt (default: samples/toyworld_long/*.txt, 124-192 tokens of synonyms, styles and filler tags
with attributes in every 75-token chunk, written for the styled world and not tuned on, and
samples/toyworld_long_prompt.txt, 84 tokens in the first model's words; F counts the times and flags each
names, through synonyms: fidelity.attributes_in) and each N of --vectors, a text-mode soft prompt
is trained per --seeds; the trainer's picture measure (fidelity.fidelity_table: 4 picture seeds, 20 DDIM steps, guidance 4)
gives F alone and composed with "with snow" for the soft prompt and the baselines: the whole prompt in
75-token chunks (A1111 / ComfyUI), cut at the window (diffusers), its first N words, the empty prompt. Added
here: the concise restatement of the same attributes (world.concise: the ceiling a user would expect), and
the chunks composed by AND (A1111 / Composable Diffusion: each chunk its own guidance term; a teacher to try).

    OMP_NUM_THREADS=1 python scripts/long_prompt_benchmark.py --vectors 1 2 4 8 16 32 --seeds 0 \\
        --json long-bench.json --plot docs/long-prompt-f-vs-n.png

Prints a Markdown table (mean over prompts and seeds, then per prompt) and, with --plot, draws F against N.
--reuse FILE skips the runs FILE already holds (same prompt, N, seed and steps), so a run can be stopped
and resumed, or extended with more N or seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sd_softprompt.models.toyworld import fidelity as fid  # noqa: E402
from sd_softprompt.models.toyworld.world import concise  # noqa: E402
from sd_softprompt.train import TrainConfig, train  # noqa: E402
from sd_softprompt.train.config import vector_count  # noqa: E402

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
# the rows that do not depend on N or the seed
BASELINES = ("hard", "truncated", "and_chunks", "and_chunks_mean", "concise", "empty")


def prompt_of(path: Path) -> str:
    return " ".join(path.read_text("utf-8").split())


def references(prompt: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The measure's references for a prompt, alone and composed with fid.COMPOSE (as fidelity_table's)."""
    reference = fid.attributes_in(prompt)
    return reference, tuple(dict.fromkeys(reference + fid.attributes_in(fid.COMPOSE)))


def concise_row(pipe, prompt: str) -> dict[str, float]:
    """F of the concise restatement, alone and composed, with the measure's own seeds and references."""
    reference, composed = references(prompt)
    text = concise(reference)
    return {
        "text": text,
        "alone": round(fid.fidelity(fid.draw(pipe, text), reference), 4),
        "composed": round(fid.fidelity(fid.draw(pipe, f"{text} {fid.COMPOSE}"), composed), 4),
    }


def draw_and(pipe, prompt: str, mean: bool, seeds=fid.SEEDS, steps=fid.STEPS, guidance=fid.GUIDANCE):
    """The prompt's 75-token chunks composed as A1111's AND composes sub-prompts (Composable Diffusion, Liu et
    al. 2022): eps = eps("") + sum_i w (eps(chunk_i) - eps("")), w = guidance (or guidance / k with ``mean``, k
    chunks), instead of one conditioning of all chunks side by side. An SD pipeline's own UNet, scheduler and
    VAE; a generator per seed (for one chunk, the pipeline's own pictures)."""
    from sd_softprompt.families import detect_family

    family = detect_family(pipe)
    with torch.inference_mode():
        states = family.encode_long(pipe, [prompt])["states"]
        window = pipe.tokenizer.model_max_length
        chunks = list(states.split(window, dim=1))
        empty = family.encode_long(pipe, [""])["states"]
        cond = torch.cat([empty, *chunks])  # [1 + k, 77, d]
        weight = 1.0 / len(chunks) if mean else 1.0
        scheduler = pipe.scheduler
        scheduler.set_timesteps(steps)
        shape = (1, pipe.unet.config.in_channels, fid.SIZE // 2, fid.SIZE // 2)
        pictures = []
        for seed in seeds:
            g = torch.Generator("cpu").manual_seed(seed)
            latents = torch.randn(shape, generator=g) * scheduler.init_noise_sigma
            for t in scheduler.timesteps:
                x = scheduler.scale_model_input(latents, t).repeat(len(cond), 1, 1, 1)
                eps = pipe.unet(x, t, encoder_hidden_states=cond).sample
                guided = eps[:1] + weight * guidance * (eps[1:] - eps[:1]).sum(0, keepdim=True)
                latents = scheduler.step(guided, t, latents).prev_sample
            image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
            pictures += pipe.image_processor.postprocess(image, output_type="pil")
    return pictures


def and_rows(pipe, prompt: str) -> dict[str, dict[str, float]]:
    """F of the chunks composed by AND, at full weight each (A1111) and at 1/k each (their mean)."""
    reference, composed = references(prompt)
    rows = {}
    for name, mean in (("and_chunks", False), ("and_chunks_mean", True)):
        rows[name] = {
            "alone": round(fid.fidelity(draw_and(pipe, prompt, mean), reference), 4),
            "composed": round(fid.fidelity(draw_and(pipe, f"{prompt} {fid.COMPOSE}", mean), composed), 4),
        }
    return rows


def run_one(
    pipe, model: str, path: Path, vectors, seed: int, steps: int | None, folder: Path, pool: str = "noise"
) -> dict:
    """One soft prompt trained on the prompt file; the trainer's F table (soft and its baselines)."""
    kw = {} if steps is None else {"steps": steps}
    if pool == "sampler":
        kw["pool_guidance"] = fid.GUIDANCE  # its runs guided as the pictures are drawn
    cfg = TrainConfig(
        model=model,
        out=str(folder / f"{path.stem}-{vectors}-{seed}.safetensors"),
        target_file=str(path),
        vectors=vectors,
        seed=seed,
        progress=False,
        checkpoint_every=0,
        pool=pool,
        **kw,
    )
    started = time.process_time()
    result = train(cfg, pipe=pipe)
    table = result.metrics["fidelity"]
    n = next(k for k in table if k.startswith("first_"))  # first_N: N is the resolved vector count
    return {
        "vectors": int(n.split("_")[1]),
        "soft": table["soft"],
        "first_n": table[n],
        "baselines": {k: table[k] for k in ("hard", "truncated", "empty") if k in table},
        "cpu_s": round(time.process_time() - started, 1),
    }


def remember_baselines(prompts: list[str]) -> None:
    """Draw each baseline once per process: the trainer's table draws the hard prompt, its cut, its first N
    words and the empty prompt in every run, and none of them depends on the soft prompt (the pipeline's
    weights do not change in text mode). Only texts in this set are remembered, never a soft prompt."""
    texts = {""}
    for prompt in prompts:
        words = prompt.split()
        texts |= {prompt} | {" ".join(words[:n]) for n in range(1, 65)}
    texts |= {f"{t} {fid.COMPOSE}".strip() for t in texts}
    memo: dict = {}

    def remembering(drawer):
        def drawn(pipe, prompt, seeds=fid.SEEDS, steps=fid.STEPS, guidance=fid.GUIDANCE, negative=""):
            if prompt not in texts or negative:
                return drawer(pipe, prompt, seeds, steps, guidance, negative)
            k = (drawer.__name__, prompt, tuple(seeds), steps, guidance)
            if k not in memo:
                memo[k] = drawer(pipe, prompt, seeds, steps, guidance, negative)
            return memo[k]

        return drawn

    fid.draw, fid.draw_cut = remembering(fid.draw), remembering(fid.draw_cut)


def key(path: Path, vectors, seed: int, steps, pool: str = "noise") -> str:
    """A run's name in the JSON; the default pool's runs keep the name they had before --pool existed."""
    return f"{path.name}|{vectors}|{seed}|{steps}" + ("" if pool == "noise" else f"|{pool}")


def summary(results: dict, prompts: list[Path], vectors: list, seeds: list[int], steps, pool: str = "noise") -> dict:
    """Mean over seeds per prompt and N; then mean over prompts."""
    out: dict = {"per_prompt": {}, "mean": {}}
    for path in prompts:
        runs = {v: [results["runs"][key(path, v, s, steps, pool)] for s in seeds] for v in vectors}
        base = results["baselines"][path.name]
        row = {name: base[name] for name in BASELINES if name in base}
        for rs in runs.values():
            n = rs[0]["vectors"]
            row[f"soft_{n}"] = {c: statistics.fmean(r["soft"][c] for r in rs) for c in ("alone", "composed")}
            row[f"soft_{n}"]["seeds"] = [r["soft"]["alone"] for r in rs]
            row[f"first_{n}"] = rs[0]["first_n"]
        out["per_prompt"][path.name] = row
    names = list(next(iter(out["per_prompt"].values())))
    for name in names:
        cells = [row[name] for row in out["per_prompt"].values() if name in row]
        out["mean"][name] = {c: round(statistics.fmean(x[c] for x in cells), 4) for c in ("alone", "composed")}
    return out


def markdown(table: dict, title: str) -> str:
    lines = [title, "", "| prompt | F alone | F composed |", "|---|---|---|"]
    for name, row in table.items():
        lines.append(f"| {name} | {row['alone']:.2f} | {row['composed']:.2f} |")
    return "\n".join(lines)


def plot(mean: dict, path: Path, caption: str) -> None:
    """F against N (log scale), alone and composed side by side; the baselines as flat lines. PIL only."""
    from PIL import Image, ImageDraw

    ns = sorted(int(k.split("_")[1]) for k in mean if k.startswith("soft_"))
    width, height, pad, room = 470, 300, 44, 110  # room: on the right for the baselines' names
    image = Image.new("RGB", (2 * width, height + 40), "white")
    draw = ImageDraw.Draw(image)
    colours = {"soft": (200, 30, 30), "first": (120, 120, 120), "hard": (30, 90, 200), "truncated": (230, 140, 0)}
    colours |= {"concise": (20, 150, 60), "empty": (150, 150, 150)}
    colours |= {"and_chunks": (140, 60, 160), "and_chunks_mean": (200, 120, 220)}
    for panel, column in enumerate(("alone", "composed")):
        x0 = panel * width

        def at(i: float, f: float, x0: int = x0) -> tuple[float, float]:
            span = max(len(ns) - 1, 1)
            return x0 + pad + i / span * (width - pad - room), height - pad - f * (height - 2 * pad)

        (left, bottom), (right, top) = at(0, 0), at(len(ns) - 1, 1)
        draw.rectangle([left, top, max(right, left + 1), bottom], outline=(0, 0, 0))
        draw.text((x0 + pad, 8), f"F {column}", fill=(0, 0, 0))
        for i, n in enumerate(ns):
            draw.text((at(i, 0)[0] - 4, height - pad + 6), str(n), fill=(0, 0, 0))
        for f in (0.0, 0.5, 1.0):
            draw.text((x0 + 8, at(0, f)[1] - 6), f"{f:.1f}", fill=(0, 0, 0))
        labels: list[float] = []
        for name in BASELINES:
            if name in mean:
                y = at(0, mean[name][column])[1]
                draw.line([(at(0, 0)[0], y), (at(len(ns) - 1, 0)[0], y)], fill=colours[name], width=1)
                label_y = y - 6
                while any(abs(label_y - other) < 11 for other in labels):  # names of equal baselines stack
                    label_y += 11
                labels.append(label_y)
                draw.text((at(len(ns) - 1, 0)[0] + 3, label_y), name, fill=colours[name])
        for prefix in ("first", "soft"):
            points = [at(i, mean[f"{prefix}_{n}"][column]) for i, n in enumerate(ns)]
            draw.line(points, fill=colours[prefix], width=3 if prefix == "soft" else 1)
            for x, y in points:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colours[prefix])
        draw.text((x0 + pad, height - 16), "N vectors (soft, red); first N words (grey)", fill=(0, 0, 0))
    draw.text((8, height + 18), caption, fill=(0, 0, 0))
    image.save(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toyworld")
    p.add_argument(
        "--prompts",
        nargs="+",
        type=Path,
        default=[*sorted((SAMPLES / "toyworld_long").glob("*.txt")), SAMPLES / "toyworld_long_prompt.txt"],
    )
    p.add_argument("--vectors", nargs="+", type=vector_count, default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, help="training steps (default: the trainer's)")
    p.add_argument("--pool", choices=("noise", "sampler"), default="noise", help="the trainer's --pool")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, help="write every run and the summary here")
    p.add_argument("--reuse", type=Path, help="a --json of an earlier run: its runs are not trained again")
    p.add_argument("--plot", type=Path, help="draw F against N here (PNG)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from sd_softprompt.models.pipeline import load_pipeline

    pipe = load_pipeline(args.model, device="cpu", progress=False)
    remember_baselines([prompt_of(path) for path in args.prompts])
    results = {"runs": {}, "baselines": {}}
    if args.reuse and args.reuse.is_file():
        results = json.loads(args.reuse.read_text("utf-8"))
    for path in args.prompts:
        prompt = prompt_of(path)
        print(f"{path.name}: {len(pipe.tokenizer(prompt).input_ids) - 2} tokens, names {fid.attributes_in(prompt)}")
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.prompts:
            for vectors in args.vectors:
                for seed in args.seeds:
                    k = key(path, vectors, seed, args.steps, args.pool)
                    if k in results["runs"]:
                        continue
                    run = run_one(pipe, args.model, path, vectors, seed, args.steps, Path(tmp), args.pool)
                    results["runs"][k] = run
                    results["baselines"].setdefault(path.name, {}).update(run.pop("baselines"))
                    print(f"{k}: soft {run['soft']} first {run['first_n']} ({run['cpu_s']} CPU s)", flush=True)
                    if args.json:
                        args.json.write_text(json.dumps(results, indent=1) + "\n", "utf-8")
            base = results["baselines"].setdefault(path.name, {})
            if "concise" not in base:
                base["concise"] = concise_row(pipe, prompt_of(path))
            if "and_chunks" not in base:
                base |= and_rows(pipe, prompt_of(path))
    results["summary"] = summary(results, args.prompts, args.vectors, args.seeds, args.steps, args.pool)
    results["args"] = {k: str(v) for k, v in vars(args).items()}
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n", "utf-8")
    settings = (
        f"seeds {args.seeds}, steps {args.steps or 'default'}, pool {args.pool}, {len(args.prompts)} prompts, "
        f"model {args.model}"
    )
    print(markdown(results["summary"]["mean"], f"Mean over prompts and training seeds ({settings}):"))
    for name, row in results["summary"]["per_prompt"].items():
        print()
        print(markdown(row, f"{name}:"))
    if args.plot:
        plot(results["summary"]["mean"], args.plot, f"toy world, mean of {len(args.prompts)} long prompts; {settings}")
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
