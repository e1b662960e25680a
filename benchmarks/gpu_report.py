"""docs/RESULTS.md's GPU section, written from the JSON of benchmarks/gpu.py.

    python benchmarks/gpu_report.py runs/gpu/gpu.json [MORE.json ...] [--output FILE]

Given several runs (e.g. a second run of the pipeline alone, ``--only pipeline``), each item comes
from the run that got furthest with it.

Every ratio is pdd-hub / reference (below 1: pdd-hub takes less time or memory). Rows that are
missing (an item skipped, failed or cut by its budget) show as "–" and are listed at the end with
what was not finished in the time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PRECISIONS = ("fp32", "bf16")


def seconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.0f}" if value >= 100 else f"{value:.2f}" if value >= 1 else f"{value:.3g}"


def ratio(ours: float | None, reference: float | None) -> str:
    return f"{ours / reference:.2f}" if ours and reference else "–"


def unit(value: object) -> str:
    """The reference's own ratio: 1 where it was measured."""
    return "1" if value else "–"


def memory(row: dict) -> str:
    peak = row.get("peak_memory_gib")
    if peak is None:
        return "–"
    resident = row.get("resident_gib") or 0
    return f"{peak:.2f}" + (f" ({resident:.2f} resident)" if resident >= 0.01 else "")


def rows(results: dict, item: str) -> dict:
    return results["items"].get(item, {}).get("rows", {})


def table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(out + ["| " + " | ".join(line) + " |" for line in lines])


def header(results: dict) -> str:
    env = rows(results, "env").get("env", {})
    device = env.get("device", "an unknown device")
    unknown = "(commit not recorded)"
    text = [
        "## GPU figures (issue 22)",
        "",
        f"Measured by `benchmarks/gpu.sh` on {device} ({env.get('gpu_memory_gib', '?')} GiB, driver "
        f"{env.get('driver', '?')}), torch {env.get('torch', '?')}, CUDA {env.get('cuda', '?')}, cuDNN "
        f"{env.get('cudnn', '?')}, {results.get('threads')} CPU threads per process, {results.get('date')}, "
        f"in {seconds(results.get('wall_s'))} s of a {results.get('budget_s')} s budget; pdd-hub at "
        f"{results.get('git_commit') or unknown}, the reference (VITA-Group/ProgressiveDD) at "
        f"{results.get('reference_commit') or unknown} with benchmarks/reference_patch.py's patches. Ratios "
        "are pdd-hub / reference (below 1: pdd-hub takes less). Peak memory: CUDA max-allocated during the "
        "measured work, GiB (resident: already allocated when it began).",
    ]
    if results.get("mode") == "tiny":
        text[1:1] = ["", "> TINY RUN (`--tiny`, a smoke test of the harness): these figures measure nothing."]
    elif device == "cpu":
        text[1:1] = ["", "> Measured on a CPU, not a GPU: not GPU figures."]
    return "\n".join(text)


def iteration_section(results: dict) -> str:
    ours, reference = rows(results, "iteration_ours"), rows(results, "iteration_reference")
    lines = []
    for setting in ("ipc10", "ipc50"):
        ref = reference.get(setting, {})
        ipc, steps, *_ = results.get("sizes", {}).get("settings", {}).get(setting, ("?", "?"))
        label = f"{setting.upper()}: {ipc} per class and stage, syn_steps {steps}"
        ref_seconds = ref.get("seconds_per_iteration")
        lines.append([label, "reference", seconds(ref_seconds), unit(ref_seconds), memory(ref), unit(ref)])
        for mode in ("unrolled", "constant"):
            for precision in PRECISIONS:
                row = ours.get(f"{setting}/{mode}/{precision}", {})
                lines.append([
                    "", f"pdd-hub {mode} {precision}", seconds(row.get("seconds_per_iteration")),
                    ratio(row.get("seconds_per_iteration"), ref.get("seconds_per_iteration")),
                    memory(row), ratio(row.get("peak_memory_gib"), ref.get("peak_memory_gib")),
                ])  # fmt: skip
    warmups = results.get("sizes", {}).get("warmups", "?")
    intro = (
        "### Distillation iteration (MTT, stage 1, stand-in trajectories)\n\n"
        f"pdd-hub: median of the timed iterations after {warmups} warm-ups; the reference: `distill_mtt.py`, "
        "median of its iterations from the third on (each from the student's creation to the updates)."
    )
    return intro + "\n\n" + table(["setting", "run", "s / iteration", "ratio", "peak GiB", "ratio"], lines)


def expert_section(results: dict) -> str:
    ours = {**rows(results, "expert_epoch_ours"), **rows(results, "compile")}
    ref = rows(results, "expert_epoch_reference").get("one/fp32", {})
    ref_seconds = ref.get("seconds")
    lines = [["reference", seconds(ref_seconds), seconds(ref_seconds), unit(ref_seconds), memory(ref), "–"]]
    for key, row in ours.items():
        if not key.startswith(("one/", "stacked")):
            continue
        warm = seconds(row.get("warm_up_seconds")) if key.endswith("/compile") else "–"
        per_expert = row.get("seconds_per_expert")
        lines.append([
            f"pdd-hub {key.replace('/', ' ')}", seconds(row.get("seconds")), seconds(per_expert),
            ratio(per_expert, ref.get("seconds")), memory(row), warm,
        ])  # fmt: skip
    examples = next((row["examples"] for row in ours.values() if "examples" in row), ref.get("examples", "?"))
    intro = (
        f"### Expert epoch\n\nConvNet-D3 on {examples} training images, batch 256, DSA, ZCA; one expert, "
        "or several stacked under vmap (ratio per expert)."
    )
    header_ = ["run", "s / epoch", "s / expert", "ratio", "peak GiB", "compilation s (apart)"]
    return intro + "\n\n" + table(header_, lines)


def evaluation_section(results: dict) -> str:
    ours = {**rows(results, "evaluation_ours"), **rows(results, "compile")}
    reference = rows(results, "evaluation_reference")
    lines = []
    keys = [key.split("/") for key in [*reference, *ours] if key.count("/") >= 1]
    for model in dict.fromkeys(parts[0] for parts in keys):
        for union in dict.fromkeys(parts[1] for parts in keys if parts[0] == model):
            ref = reference.get(f"{model}/{union}", {})
            mine = {k: v for k, v in ours.items() if k.startswith(f"{model}/{union}/")}
            images = next(iter(mine.values()), ref).get("images", "?")
            label = f"{union.upper()} ({images} images)"
            ref_seconds = ref.get("seconds_per_epoch")
            lines.append([model, label, "reference", seconds(ref_seconds), unit(ref_seconds), memory(ref)])
            for key, row in mine.items():
                run = "pdd-hub " + key.split("/", 2)[2].replace("/", " ")
                per_seed = row.get("seconds_per_seed_epoch")
                lines.append(
                    [
                        "",
                        "",
                        run,
                        seconds(per_seed),
                        ratio(per_seed, ref.get("seconds_per_epoch")),
                        memory(row),
                    ]
                )
    seeds = results.get("sizes", {}).get("eval_seeds", "?")
    intro = (
        "### Evaluation epoch (the union of 5 stages)\n\n"
        "Training epochs (LR 0.01, DSA, batch 256) on the union of 5 stages of random images; pdd-hub "
        f"{seeds} seeds one after another (unbatched) or stacked (batched), per seed; the reference one seed "
        "(`utils.evaluate_synset`)."
    )
    return intro + "\n\n" + table(["model", "union", "run", "s / epoch / seed", "ratio", "peak GiB"], lines)


def pipeline_section(results: dict) -> str:
    item = results["items"].get("pipeline", {})
    phases = item.get("phases", [])
    lines = [[p["phase"], seconds(p.get("seconds")), p["status"]] for p in phases]
    per_it, val = item.get("seconds_per_iteration", {}), item.get("val_acc", {})
    stages = sorted(set(per_it) | set(val), key=int)
    notes = [
        f"stage {k}: {seconds(per_it.get(k))} s / iteration (median of the logged)"
        + (f", val acc {val[k]:.4f}" if k in val else "")
        for k in stages
    ]
    summary = rows(results, "pipeline").get("final_evaluation", {}).get("summary", {})
    for model, per_stage in summary.items():
        last = per_stage[-1]
        accuracy = f"{100 * last['mean']:.2f} ± {100 * last['std']:.2f}"
        notes.append(f"final evaluation, {model}: {accuracy} after stage {len(per_stage)}")
    intro = (
        "### The `cifar10_ipc10_fast` pipeline\n\n"
        f"Experts, stages with transitions, then the final evaluation, in {seconds(item.get('wall_s'))} s of "
        f"the {seconds(item.get('budget_s'))} s left to it ({item.get('status', 'not run')}). A stage's "
        "time includes its experts' (the row above it)."
    )
    body = table(["phase", "seconds", "status"], lines) if lines else "No phase ran."
    return intro + "\n\n" + body + ("\n\n" + "\n".join(f"- {n}" for n in notes) if notes else "")


def unfinished_section(results: dict) -> str:
    notes = []
    for name, item in results["items"].items():
        status = item.get("status")
        if status == "done":
            continue
        why = (
            item.get("reason")
            or f"{status} after {seconds(item.get('wall_s'))} s of {seconds(item.get('budget_s'))}"
        )
        notes.append(f"{name}: {status} ({why})")
    for phase in results["items"].get("pipeline", {}).get("phases", []):
        if phase["status"] != "done":
            notes.append(f"pipeline phase {phase['phase']}: {phase['status']}")
    if not notes:
        return "### Not finished in the time\n\nNothing: every item and phase finished."
    return "### Not finished in the time\n\n" + "\n".join(f"- {n}" for n in notes)


def progress(item: dict) -> tuple:
    """How far an item got: run at all, finished, pipeline phases finished, rows measured."""
    phases = sum(phase["status"] == "done" for phase in item.get("phases", []))
    return (item.get("status") != "skipped", item.get("status") == "done", phases, len(item.get("rows", {})))


def merge(runs: list[dict]) -> dict:
    """One result of several gpu.py runs: per item, the run that got furthest (the later on ties); the
    header's facts are the first run's."""
    merged = {**runs[0], "items": {}}
    for name in dict.fromkeys(name for run in runs for name in run["items"]):
        candidates = [run["items"][name] for run in runs if name in run["items"]]
        merged["items"][name] = max(enumerate(candidates), key=lambda pair: (progress(pair[1]), pair[0]))[1]
    return merged


def render(results: dict) -> str:
    """The GPU section of docs/RESULTS.md for one gpu.py run."""
    sections = [header, iteration_section, expert_section, evaluation_section, pipeline_section,
                unfinished_section]  # fmt: skip
    return "\n\n".join(section(results) for section in sections) + "\n"


def main() -> int:
    import json

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="+", help="the JSON files benchmarks/gpu.py wrote")
    parser.add_argument("--output", help="write the section here (default: print it)")
    args = parser.parse_args()
    text = render(merge([json.loads(Path(path).read_text()) for path in args.results]))
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
