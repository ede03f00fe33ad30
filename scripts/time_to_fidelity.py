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
toy world saved in fp32 (it ships parts in fp16; in an fp16 text encoder the script trains into NaN); each
records its CPU seconds from process start (imports, loading and set-up included) and its vector every
--every steps; they are judged afterwards in this process with --pictures pictures per check (seeds
0..K-1). Per scene, the seeds' mean curve is smoothed with a running mean over --smooth checks; per run
of this package, "best" is the higher of its and the script's best smoothed F; reported: each seed's max
and final smoothed F (mean ± sd), the mean curve's, the CPU seconds until each tool's smoothed curve
reaches best - --tolerance, their ratio (the goal: 3x sooner, ending at least as high), and the CPU
seconds each takes to the script's own best. Levers: init-word (--initializer-word), init-mean (the
vocabulary's mean embedding), init-nearest (the candidate word whose "a photo of {word}" best denoises
--nearest-latents noisy latents of the pictures, chosen once per scene here; its CPU seconds are added to
that run's clock), lr=X, warmup=N, batch=N. --every-script judges the script at its own cadence.
--reuse JSON keeps the runs a former --json holds (scene, run and seed) and runs only the others, so a
study can grow scene by scene, its script runs measured once; --report JSON prints the tables of one.

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


def lever(name: str, word: str, nearest: str | None = None) -> tuple[str, dict]:
    """A lever's label and its TrainConfig changes: init-word, init-mean, init-nearest (`nearest`, the word
    nearest_word chose), warmup=N, lr=X, batch=N."""
    if name == "defaults":
        return "this package (defaults)", {}
    if name == "init-word":
        return f"this package, init from '{word}'", {"init": "words", "init_words": word}
    if name == "init-mean":
        return "this package, init from the vocabulary's mean", {"init": "mean"}
    if name == "init-nearest":
        return "this package, init from the nearest word", {"init": "words", "init_words": nearest}
    key, value = name.split("=")
    field = {"lr": "lr", "warmup": "warmup", "batch": "batch_size"}[key]
    return f"this package, {key} {value}", {field: type(getattr(TrainConfig, field))(float(value))}


def candidate_words(tokenizer) -> list[str]:
    """The tokenizer's whole-word, alphabetic tokens of 3 letters or more: the words a nearest-word start
    chooses among (single tokens, so one vector holds the word exactly)."""
    vocab = tokenizer.get_vocab()
    return sorted(w[:-4] for w in vocab if w.endswith("</w>") and w[:-4].isalpha() and len(w) >= 7)


def nearest_word(pipe, folder: Path, latents: int = 4, seed: int = 0) -> dict:
    """The single-token word whose template prompt ("a photo of {word}") best denoises the training
    pictures: the mean denoising loss on `latents` noisy latents (pictures 0.., fixed noise, timesteps spread
    over the schedule; the same for every word), batched, no grad. Returns the word, the CPU seconds it
    took and the five best words with their losses."""
    from sd_softprompt.families import detect_family
    from sd_softprompt.train.data import load_image
    from sd_softprompt.train.losses import image_loss
    from sd_softprompt.train.objectives import ImageObjective

    start = time.process_time()
    family = detect_family(pipe)
    words = candidate_words(pipe.tokenizer)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        paths = sorted(folder.glob("*.png"))[:latents]
        x = torch.stack([load_image(q, 64) for q in paths]).to(pipe.vae.dtype)
        x0 = ImageObjective._latent(pipe, family, x, pipe.vae.config.get("shift_factor") or 0.0)
        noise = torch.randn(x0.shape, generator=g).to(x0.dtype)
        n = pipe.scheduler.config.num_train_timesteps
        t = torch.linspace(n * 0.2, n * 0.8, len(paths)).long()
        losses = []
        for i in range(0, len(words), 16):  # 16 words x `latents` denoiser rows per call
            chunk = words[i : i + 16]
            cond = family.encode(pipe, [f"a photo of {w}" for w in chunk])
            k = len(paths)
            rep = {key: v.repeat_interleave(k, 0) for key, v in cond.items()}
            for j, w in enumerate(chunk):
                one = {key: v[j * k : (j + 1) * k] for key, v in rep.items()}
                losses.append((image_loss(pipe, family, x0, noise, t, one).item(), w))
    losses.sort()
    return {"word": losses[0][1], "cpu_s": time.process_time() - start, "best": losses[:5], "candidates": len(words)}


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
    results: dict = {"patches": None, "runs": {}, "nearest": {}}
    if args.reuse and Path(args.reuse).is_file():  # runs measured before (same settings): not run again
        earlier = json.loads(Path(args.reuse).read_text())
        for scene, tools in earlier.get("runs", {}).items():
            for label, per_seed in tools.items():
                results["runs"].setdefault(scene, {})[label] = {int(k): v for k, v in per_seed.items()}
        results["nearest"] = earlier.get("nearest", {})
    every_script = args.every_script or args.every
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
            if "init-nearest" in args.levers and scene.key() not in results["nearest"]:
                # chosen once per scene, in this process; its CPU seconds are added to that lever's clock
                results["nearest"][scene.key()] = nearest_word(pipe, folder, args.nearest_latents)
                print(f"{scene.key()}: nearest word {results['nearest'][scene.key()]}", flush=True)
            nearest = results["nearest"].get(scene.key(), {})
            done = results["runs"].get(scene.key(), {})
            for seed in args.seeds:
                jobs = {}
                out = tmp / "script-out"
                if seed not in done.get("diffusers' script", {}):  # first: every seed has its reference
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
                            save_steps=every_script,
                            initializer=args.initializer_word,
                            seed=seed,
                            vectors=args.vectors,
                        ),
                    )
                for name in ["defaults", *args.levers]:
                    label, changes = lever(name, args.initializer_word, nearest.get("word"))
                    if seed in done.get(label, {}):
                        continue
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
                    # the nearest-word start pays for its choice: its CPU seconds join the run's clock
                    extra = nearest.get("cpu_s", 0.0) if label.endswith("nearest word") else 0.0
                    curve = []
                    for step in sorted(int(k) for k in vectors):
                        with torch.no_grad():
                            table[row] = vectors[str(step)][0].to(table.dtype)
                        f = fid.fidelity(fid.draw(pipe, "<judged>", seeds=seeds), reference)
                        curve.append({"step": step, "F": f, "cpu_s": cpu_at[str(step)] + extra})
                    run = {
                        "curve": curve,
                        "process_cpu_s": res["cpu_s"] + extra,
                        "start_cpu_s": cpu_at["start"],
                        **({"init_words": nearest["word"], "choice_cpu_s": extra} if extra else {}),
                    }
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
            per = [smooth([p["F"] for p in c["curve"][:n]], k) for c in curves]
            means[label] = {
                "steps": steps,
                "F_smoothed": smooth(f, k),
                "cpu_s": cpu,
                "F_raw": f,
                "seeds": len(curves),
                "max_F_seeds": [max(v) for v in per],
                "final_F_seeds": [v[-1] for v in per],
            }
        best = max(max(m["F_smoothed"]) for m in means.values())
        scene_out = {"best_F": best, "target_F": best - tolerance, "tools": {}}

        def first(m: dict, level: float) -> int | None:
            return next((i for i, v in enumerate(m["F_smoothed"]) if v >= level - tolerance - 1e-9), None)

        script = means.get("diffusers' script")
        for label, m in means.items():
            t = scene_out["tools"][label] = {
                "final_F": m["F_smoothed"][-1],
                "max_F": max(m["F_smoothed"]),
                "seeds": m["seeds"],
                "max_F_seeds": m["max_F_seeds"],
                "final_F_seeds": m["final_F_seeds"],
                "curve": list(
                    zip(m["steps"], [round(v, 3) for v in m["F_smoothed"]], [round(c, 1) for c in m["cpu_s"]])
                ),
            }
            if script is None or m is script:
                continue
            # the goal, per setting: the best smoothed F of this run and the script, and who gets there when
            pair = max(t["max_F"], max(script["F_smoothed"]))
            hit, hit_script = first(m, pair), first(script, pair)
            t |= {
                "pair_best_F": pair,
                "step_to_pair_best": m["steps"][hit] if hit is not None else None,
                "cpu_s_to_pair_best": m["cpu_s"][hit] if hit is not None else None,
                "script_step_to_pair_best": script["steps"][hit_script] if hit_script is not None else None,
                "script_cpu_s_to_pair_best": script["cpu_s"][hit_script] if hit_script is not None else None,
                "script_final_F": script["F_smoothed"][-1],
            }
            if hit is not None and hit_script is not None:
                t["script_cpu_s_over_this"] = t["script_cpu_s_to_pair_best"] / t["cpu_s_to_pair_best"]
            elif hit is not None:  # the script never got there: at least its whole run
                t["script_cpu_s_over_this_at_least"] = script["cpu_s"][-1] / t["cpu_s_to_pair_best"]
            # and the script's own best (mean curve): how soon each gets to what the script reaches at all
            own, mine = first(script, max(script["F_smoothed"])), first(m, max(script["F_smoothed"]))
            if mine is not None:
                t["script_best_F"] = max(script["F_smoothed"])
                t["to_script_best"] = (m["cpu_s"][mine], script["cpu_s"][own])
            ratio = t.get("script_cpu_s_over_this") or t.get("script_cpu_s_over_this_at_least") or 0.0
            t["goal_met"] = ratio >= 3 and t["final_F"] >= t["script_final_F"] - 1e-9
        out[scene] = scene_out
    return out


def spread(values: list[float]) -> str:
    """Mean ± standard deviation over seeds (the mean alone for one seed)."""
    if len(values) < 2:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def against_markdown(summary: dict, tolerance: float) -> str:
    """Per scene and run: max and final smoothed F (per seed: mean ± sd; and of the seeds' mean curve), and
    against the script: the better of the two runs' best smoothed F (mean curves), the CPU seconds each takes
    to it (minus `tolerance`), their ratio, and whether the goal is met (3x sooner, ending at least as high)."""
    lines = [
        "| scene | run | seeds | max F, per seed | final F, per seed | max F | final F | best of this and the script "
        f"| this: CPU s (step) to it - {tolerance:g} | script: CPU s (step) | script / this | goal met "
        "| to the script's best: this / script CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def at(cpu, step) -> str:
        return f"{cpu:.1f} ({step})" if cpu is not None else "not reached"

    def to_best(t: dict) -> str:
        if "to_script_best" not in t:
            return "not reached"
        mine, theirs = t["to_script_best"]
        return f"{mine:.1f} / {theirs:.1f} ({theirs / mine:.2f}x)"

    for scene, s in summary.items():
        for label, t in s["tools"].items():
            row = (
                f"| {scene} | {label} | {t['seeds']} | {spread(t['max_F_seeds'])} | {spread(t['final_F_seeds'])} | "
                f"{t['max_F']:.3f} | {t['final_F']:.3f} |"
            )
            if "pair_best_F" not in t:
                lines.append(row + " | | | | | |")
                continue
            ratio, least = t.get("script_cpu_s_over_this"), t.get("script_cpu_s_over_this_at_least")
            shown = f"{ratio:.2f}x" if ratio else f"> {least:.2f}x (script never)" if least else "–"
            lines.append(
                row + f" {t['pair_best_F']:.3f} | {at(t['cpu_s_to_pair_best'], t['step_to_pair_best'])} | "
                f"{at(t['script_cpu_s_to_pair_best'], t['script_step_to_pair_best'])} | {shown} | "
                f"{'yes' if t['goal_met'] else 'no'} | {to_best(t)} |"
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
    p.add_argument("--every-script", type=int, help="--against: judge the script every K steps (default --every)")
    p.add_argument("--steps-text", type=int, default=100)
    p.add_argument("--recipe-steps-text", type=int, default=300)
    p.add_argument("--every-text", type=int, default=10)
    p.add_argument("--snr-gamma", type=float, help="images mode: also the defaults with min-SNR weighting")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--against", choices=["diffusers"], help="images mode against diffusers' own script")
    p.add_argument("--diffusers-repo", help="--against diffusers: a diffusers checkout, bare repo, or the script")
    p.add_argument("--scenes", nargs="+", default=["unnamed", "0"], help="'unnamed' or an index of world.HELD_OUT")
    p.add_argument(
        "--levers",
        nargs="*",
        default=[],
        help="init-word, init-mean, init-nearest, lr=X, warmup=N, batch=N (ours, besides defaults)",
    )
    p.add_argument("--initializer-word", default="landscape", help="the script's --initializer_token")
    p.add_argument("--pictures", type=int, default=8, help="--against: pictures per check")
    p.add_argument("--smooth", type=int, default=3, help="--against: running mean over this many checks")
    p.add_argument("--tolerance", type=float, default=0.0, help="--against: the target is best F minus this")
    p.add_argument("--nearest-latents", type=int, default=8, help="--against, init-nearest: noisy latents per word")
    p.add_argument(
        "--reuse", help="--against: a JSON this script wrote; its runs are kept and not run again (same settings)"
    )
    p.add_argument("--report", help="--against: print the tables of a JSON this script wrote (runs nothing)")
    args = p.parse_args(argv)
    if args.report:
        print(
            against_markdown(
                summarise(json.loads(Path(args.report).read_text())["runs"], args.smooth, args.tolerance),
                args.tolerance,
            )
        )
        return
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
