"""Time to fidelity on the toy world: steps and seconds until a soft prompt draws what it should.

    python scripts/time_to_fidelity.py                         # images and text mode, the README's figures
    python scripts/time_to_fidelity.py --mode images --seeds 0 1 --every 10

Images mode: the 8 renders of world.UNNAMED (night, snow, house, lake: no training caption names it).
  A = this package's trainer as a user gets it (TrainConfig defaults: lr 5e-3 constant after 20 warm-up
      steps, latents encoded once, only the N vectors in AdamW);
  B = the diffusers-script-like recipe of scripts/bench_reference.py (lr 5e-4 constant, the VAE encode every
      step, AdamW over the whole embedding table, the other rows restored), 1 vector as that script's default.
Text mode: the demo's target ("image of serene landscape at sunrise with trees mountains and lake"), 3
  vectors: A = the defaults (denoiser loss, its target pool computed before step 1); B = the same trainer at
  lr 5e-4 (diffusers' script has no text mode; its learning rate is the only part of its recipe that applies).

Every --every steps the soft prompt as learned so far is drawn (fidelity.SEEDS: 4 pictures, 20 DDIM steps,
guidance 4) and F is judged against the reference attributes; drawing is not timed. Both schedules are
constant, so a run checked at step s is the run a user would stop at s. Reported per run: the F curve, the
final F, the first step from which F stays within 0.05 of the final F ("settled"), and the first step at
which F reaches the lower of the two runs' final F ("common"), each with the training process's CPU
seconds to it (set-up included: latent cache, target pool) and wall seconds. CPU seconds are the figure to
compare on a shared machine. F moves in steps of 1/(4 pictures x attributes): 1/16 here.

--against diffusers --diffusers-repo PATH: images mode against diffusers' OWN textual_inversion.py
(scripts/diffusers_script.py: patched copy, patches printed), on several never-captioned scenes
(--scenes: UNNAMED and world.HELD_OUT[i]), --seeds training seeds each. Every run, this package's trainer
(its defaults, 1 vector like the script's default, and the --levers) and the script (its README recipe: lr
5e-4 x batch with --scale_lr, constant, no warm-up, --initializer-word), is a whole child process on the
toy world saved in fp32 (the shipped text encoder is fp16, in which the script trains into NaN); each
records its CPU seconds from process start (imports, loading and set-up included) and its vector every
--every steps; they are judged afterwards in this process with --pictures pictures per check (seeds
0..K-1). Per scene, the seeds' mean curve is smoothed with a running mean over --smooth checks; "best" is
the highest smoothed F of either tool; reported: CPU seconds until each tool's smoothed curve reaches best
- --tolerance, their ratio, and each tool's final smoothed F.

    python scripts/time_to_fidelity.py --against diffusers --diffusers-repo ~/diffusers --seeds 0 1 2 \\
        --scenes unnamed 0 --levers init-word lr=2e-3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_reference import diffusers_like_steps  # noqa: E402

from sd_softprompt.models.pipeline import load_pipeline  # noqa: E402
from sd_softprompt.models.toyworld import fidelity as fid  # noqa: E402
from sd_softprompt.models.toyworld.world import UNNAMED, mission_caption, render  # noqa: E402
from sd_softprompt.train import TrainConfig, train  # noqa: E402


class Clock:
    """CPU and wall seconds since start, less the time spent judging."""

    def __init__(self) -> None:
        self.cpu, self.wall = time.process_time(), time.perf_counter()

    def now(self) -> tuple[float, float]:
        return time.process_time() - self.cpu, time.perf_counter() - self.wall

    @contextmanager
    def paused(self):
        c, w = time.process_time(), time.perf_counter()
        yield
        self.cpu += time.process_time() - c
        self.wall += time.perf_counter() - w


def judged(pipe, prompt: str, reference: list[str]) -> float:
    return fid.fidelity(fid.draw(pipe, prompt), reference)


def run_trainer(pipe, cfg: TrainConfig, reference: list[str], every: int) -> list[dict]:
    """This package's trainer; F of its vectors every `every` steps (they are live in the pipe's encoder)."""
    soft = "".join(f"[v{i + 1}]" for i in range(cfg.vectors))
    curve: list[dict] = []
    clock = Clock()

    @contextmanager
    def around_step(step: int):
        yield
        if (step + 1) % every == 0:
            cpu, wall = clock.now()
            with clock.paused():
                curve.append({"step": step + 1, "F": judged(pipe, soft, reference), "cpu_s": cpu, "wall_s": wall})

    train(cfg, pipe=pipe, around_step=around_step)
    return curve


def run_recipe(pipe, images: list[Path], steps: int, reference: list[str], every: int, seed: int) -> list[dict]:
    """The diffusers-script-like recipe; F of its placeholder every `every` steps."""
    curve: list[dict] = []
    clock = Clock()

    def probe(step: int, view, placeholder: str) -> None:
        if step % every == 0:
            cpu, wall = clock.now()
            with clock.paused():
                view.set_progress_bar_config(disable=True)
                curve.append({"step": step, "F": judged(view, placeholder, reference), "cpu_s": cpu, "wall_s": wall})

    diffusers_like_steps(pipe, images, steps, batch_size=4, resolution=64, seed=seed, probe=probe)
    return curve


def first_settled(curve: list[dict], tolerance: float = 0.05) -> dict:
    """The first checked step from which F stays within `tolerance` of the final F."""
    final = curve[-1]["F"]
    for i, point in enumerate(curve):
        if all(abs(p["F"] - final) <= tolerance + 1e-9 for p in curve[i:]):
            return point
    return curve[-1]


def first_reaching(curve: list[dict], level: float) -> dict | None:
    return next((p for p in curve if p["F"] >= level - 1e-9), None)


def summary(curves: dict[str, list[dict]]) -> dict[str, dict]:
    common = min(c[-1]["F"] for c in curves.values())
    out = {}
    for name, curve in curves.items():
        reach = first_reaching(curve, common)
        out[name] = {
            "final_F": curve[-1]["F"],
            "settled": first_settled(curve),
            "common_F": common,
            "common": reach,
            "curve": [(p["step"], p["F"]) for p in curve],
            "cpu_s_per_step": round(curve[-1]["cpu_s"] / curve[-1]["step"], 4),
        }
    return out


def images_mode(pipe, args, seed: int, folder: Path) -> dict:
    reference = sorted(UNNAMED.attributes)
    images = sorted(folder.glob("*.png"))
    cfg = TrainConfig(
        model="toyworld",
        out=str(folder.parent / f"images-{seed}.safetensors"),
        mode="images",
        images=str(folder),
        vectors=args.vectors,
        steps=args.steps_images,
        seed=seed,
        resolution=64,
        progress=False,
        checkpoint_every=0,
    )
    curves = {"this package (defaults)": run_trainer(pipe, cfg, reference, args.every)}
    if args.snr_gamma is not None:
        weighted = dataclasses.replace(cfg, snr_gamma=args.snr_gamma)
        curves[f"same, min-SNR gamma {args.snr_gamma:g}"] = run_trainer(pipe, weighted, reference, args.every)
    curves["diffusers-like recipe"] = run_recipe(pipe, images, args.recipe_steps_images, reference, args.every, seed)
    return summary(curves)


def text_mode(pipe, args, seed: int, folder: Path) -> dict:
    target = mission_caption()
    reference = list(fid.attributes_in(target))
    curves = {}
    for name, lr, steps in (
        ("this package (defaults)", TrainConfig.lr, args.steps_text),
        ("same, lr 5e-4", 5e-4, args.recipe_steps_text),
    ):
        cfg = TrainConfig(
            model="toyworld",
            out=str(folder / f"text-{seed}-{lr}.safetensors"),
            target=target,
            vectors=3,
            steps=steps,
            lr=lr,
            seed=seed,
            probe_size=64,
            progress=False,
            checkpoint_every=0,
        )
        curves[name] = run_trainer(pipe, cfg, reference, args.every_text)
    return summary(curves)


def cell(point: dict | None) -> str:
    if point is None:
        return "not reached"
    return f"{point['step']} steps, {point['cpu_s']:.0f} CPU s ({point['wall_s']:.0f} wall)"


def markdown(results: dict) -> str:
    lines = [
        "| mode | run | seed | final F | F within 0.05 of final from | F ≥ lower final F at | CPU s/step |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, per_seed in results.items():
        for seed, runs in per_seed.items():
            for name, r in runs.items():
                lines.append(
                    f"| {mode} | {name} | {seed} | {r['final_F']:.2f} | {cell(r['settled'])} | "
                    f"{cell(r['common'])} (F {r['common_F']:.2f}) | {r['cpu_s_per_step']:.3f} |"
                )
    return "\n".join(lines)


def lever(name: str, word: str) -> tuple[str, dict]:
    """A lever's label and its TrainConfig changes: init-word, warmup=N, lr=X, batch=N."""
    if name == "defaults":
        return "this package (defaults)", {}
    if name == "init-word":
        return f"this package, init from '{word}'", {"init": "words", "init_words": word}
    key, value = name.split("=")
    field = {"lr": "lr", "warmup": "warmup", "batch": "batch_size"}[key]
    return f"this package, {key} {value}", {field: type(getattr(TrainConfig, field))(float(value))}


def scene_of(name: str):
    from sd_softprompt.models.toyworld.world import HELD_OUT

    return UNNAMED if name == "unnamed" else HELD_OUT[int(name)]


def smooth(values: list[float], k: int) -> list[float]:
    """Running mean over the last k values (fewer at the start)."""
    return [statistics.mean(values[max(0, i - k + 1) : i + 1]) for i in range(len(values))]


def against_script(args) -> dict:
    """Images mode: this package's trainer (defaults and levers) against diffusers' own script, whole child
    processes, judged afterwards."""
    from diffusers_script import child_env, ours_command, prepare, save_pipeline, script_command, timed_child
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    pipe = load_pipeline(args.model, device="cpu", progress=False)
    pipe.set_progress_bar_config(disable=True)
    tok = pipe.tokenizer
    tok.add_tokens(["<judged>"])
    pipe.text_encoder.resize_token_embeddings(len(tok))
    row = tok.convert_tokens_to_ids("<judged>")
    table = pipe.text_encoder.get_input_embeddings().weight
    seeds = list(range(args.pictures))
    results: dict = {"patches": None, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runner, results["patches"] = prepare(args.diffusers_repo, tmp / "script")
        from diffusers_script import model_folder

        fp32 = load_pipeline(args.model, device="cpu", dtype="fp32", progress=False)
        results["pipeline_notes"] = save_pipeline(fp32, tmp / "model", model_folder(args.model))
        del fp32
        env = child_env(1)
        for scene_name in args.scenes:
            scene = scene_of(scene_name)
            reference = sorted(scene.attributes)
            folder = tmp / f"pictures-{scene.key()}"
            folder.mkdir()
            for i in range(8):
                render(scene, 100_000 + i).save(folder / f"{i}.png")
            for seed in args.seeds:
                jobs = {}
                for name in ["defaults", *args.levers]:
                    label, changes = lever(name, args.initializer_word)
                    cfg = {
                        "model": str(tmp / "model"),
                        "out": str(tmp / "ours.safetensors"),
                        "mode": "images",
                        "images": str(folder),
                        "vectors": args.vectors,
                        "steps": args.steps_images,
                        "seed": seed,
                        "resolution": 64,
                        "progress": False,
                        "checkpoint_every": 0,
                        **changes,
                    }
                    every = list(range(args.every, args.steps_images + 1, args.every))
                    jobs[label] = ("ours", ours_command(cfg, tmp / "ours.log", save_at=every, setup={"threads": 1}))
                out = tmp / "script-out"
                jobs["diffusers' script"] = (
                    "script",
                    script_command(
                        runner,
                        tmp / "model",
                        folder,
                        out,
                        args.recipe_steps_images,
                        4,
                        64,
                        save_steps=args.every,
                        initializer=args.initializer_word,
                        seed=seed,
                        vectors=args.vectors,
                    ),
                )
                for label, (kind, cmd) in jobs.items():
                    log = tmp / f"{kind}.log"
                    res = timed_child(cmd, env, log)
                    cpu_at = {m["at"]: m["cpu_s"] for m in res["marks"]}
                    if kind == "ours":
                        vectors = load_file(str(log) + ".vectors.safetensors")
                    else:
                        vectors = {
                            k: load_file(str(out / f"learned_embeds-steps-{k}.safetensors"))["<concept>"]
                            for k in cpu_at
                            if k.isdigit()
                        }
                    curve = []
                    for step in sorted((int(k) for k in vectors), key=int):
                        with torch.no_grad():
                            table[row] = vectors[str(step)][0].to(table.dtype)
                        f = fid.fidelity(fid.draw(pipe, "<judged>", seeds=seeds), reference)
                        curve.append({"step": step, "F": f, "cpu_s": cpu_at[str(step)]})
                    run = {"curve": curve, "process_cpu_s": res["cpu_s"], "start_cpu_s": cpu_at["start"]}
                    results["runs"].setdefault(scene.key(), {}).setdefault(label, {})[seed] = run
                    if args.json:  # after every run: a long study stopped early keeps what it measured
                        Path(args.json).write_text(json.dumps({"args": vars(args), **results}, indent=1) + "\n")
                    print(
                        f"{scene.key()} seed {seed} {label}: F {[round(p['F'], 2) for p in curve]} "
                        f"({res['cpu_s']:.0f} CPU s process)",
                        flush=True,
                    )
    results["summary"] = summarise(results["runs"], args.smooth, args.tolerance)
    return results


def summarise(runs: dict, k: int, tolerance: float) -> dict:
    out = {}
    for scene, tools in runs.items():
        means = {}
        for label, per_seed in tools.items():
            curves = list(per_seed.values())
            n = min(len(c["curve"]) for c in curves)
            steps = [c["curve"][i]["step"] for i in range(n) for c in curves[:1]]
            f = [statistics.mean(c["curve"][i]["F"] for c in curves) for i in range(n)]
            cpu = [statistics.mean(c["curve"][i]["cpu_s"] for c in curves) for i in range(n)]
            means[label] = {"steps": steps, "F_smoothed": smooth(f, k), "cpu_s": cpu, "F_raw": f}
        best = max(max(m["F_smoothed"]) for m in means.values())
        scene_out = {"best_F": best, "target_F": best - tolerance, "tools": {}}
        for label, m in means.items():
            hit = next((i for i, v in enumerate(m["F_smoothed"]) if v >= best - tolerance - 1e-9), None)
            scene_out["tools"][label] = {
                "final_F": m["F_smoothed"][-1],
                "max_F": max(m["F_smoothed"]),
                "step_to_target": m["steps"][hit] if hit is not None else None,
                "cpu_s_to_target": m["cpu_s"][hit] if hit is not None else None,
                "curve": list(
                    zip(m["steps"], [round(v, 3) for v in m["F_smoothed"]], [round(c, 1) for c in m["cpu_s"]])
                ),
            }
        script = scene_out["tools"].get("diffusers' script", {}).get("cpu_s_to_target")
        script_end = means["diffusers' script"]["cpu_s"][-1] if "diffusers' script" in means else None
        for label, t in scene_out["tools"].items():
            if t["cpu_s_to_target"] and label != "diffusers' script":
                t["script_cpu_s_over_this"] = script / t["cpu_s_to_target"] if script else None
                if not script and script_end:  # the script never got there: at least its whole run
                    t["script_cpu_s_over_this_at_least"] = script_end / t["cpu_s_to_target"]
        out[scene] = scene_out
    return out


def against_markdown(summary: dict, tolerance: float) -> str:
    lines = [
        f"| scene | run | best F (either) | CPU s to best - {tolerance:g} | at step | script's CPU s / this | final F |",
        "|---|---|---|---|---|---|---|",
    ]
    for scene, s in summary.items():
        for label, t in s["tools"].items():
            cpu = f"{t['cpu_s_to_target']:.0f}" if t["cpu_s_to_target"] else "not reached"
            ratio = t.get("script_cpu_s_over_this")
            least = t.get("script_cpu_s_over_this_at_least")
            shown = f"{ratio:.2f}x" if ratio else f"> {least:.2f}x (script never reached it)" if least else "–"
            lines.append(
                f"| {scene} | {label} | {s['best_F']:.3f} | {cpu} | {t['step_to_target'] or '–'} | "
                f"{shown} | {t['final_F']:.3f} |"
            )
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toyworld")
    p.add_argument("--mode", choices=["images", "text", "both"], default="both")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--vectors", type=int, default=1, help="images mode, both runs (diffusers' default is 1)")
    p.add_argument("--steps-images", type=int, default=200)
    p.add_argument("--recipe-steps-images", type=int, default=400)
    p.add_argument("--every", type=int, default=20, help="images mode: judge every K steps")
    p.add_argument("--steps-text", type=int, default=100)
    p.add_argument("--recipe-steps-text", type=int, default=300)
    p.add_argument("--every-text", type=int, default=10)
    p.add_argument("--snr-gamma", type=float, help="images mode: also the defaults with min-SNR weighting")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--against", choices=["diffusers"], help="images mode against diffusers' own script")
    p.add_argument("--diffusers-repo", help="--against diffusers: a diffusers checkout, bare repo, or the script")
    p.add_argument("--scenes", nargs="+", default=["unnamed", "0"], help="'unnamed' or an index of world.HELD_OUT")
    p.add_argument(
        "--levers", nargs="*", default=[], help="init-word, lr=X, warmup=N, batch=N (ours, besides defaults)"
    )
    p.add_argument("--initializer-word", default="landscape", help="the script's --initializer_token")
    p.add_argument("--pictures", type=int, default=8, help="--against: pictures per check")
    p.add_argument("--smooth", type=int, default=3, help="--against: running mean over this many checks")
    p.add_argument("--tolerance", type=float, default=0.0, help="--against: the target is best F minus this")
    args = p.parse_args(argv)
    if args.against:
        res = against_script(args)
        print(json.dumps(res["summary"], indent=1))
        print("patches:", *res["patches"], *res["pipeline_notes"], sep="\n- ")
        print(against_markdown(res["summary"], args.tolerance))
        if args.json:
            Path(args.json).write_text(json.dumps({"args": vars(args), **res}, indent=1, default=str) + "\n")
        return
    torch.set_num_threads(1)
    pipe = load_pipeline(args.model, device="cpu", progress=False)
    pipe.set_progress_bar_config(disable=True)
    modes = ["images", "text"] if args.mode == "both" else [args.mode]
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "pictures"
        folder.mkdir()
        for i in range(8):  # the renders toyworld_images_mode.py trains on
            render(UNNAMED, 100_000 + i).save(folder / f"{i}.png")
        for mode in modes:
            run = images_mode if mode == "images" else text_mode
            results[mode] = {
                seed: run(pipe, args, seed, folder if mode == "images" else Path(tmp)) for seed in args.seeds
            }
            print(json.dumps(results[mode], indent=1, default=str), flush=True)
    table = markdown(results)
    print(table)
    for mode, per_seed in results.items():
        for name in next(iter(per_seed.values())):
            cpu = [r[name]["settled"]["cpu_s"] for r in per_seed.values()]
            print(f"{mode} / {name}: settled after {statistics.mean(cpu):.0f} CPU s (mean of {len(cpu)} seeds)")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
