"""``pdd-hub``: distil, evaluate, inspect and publish PDD exports.

    pdd-hub configs                                   # the shipped configs
    pdd-hub methods                                   # the registered base methods
    pdd-hub distill --config quickstart_dm [key=value ...]
    pdd-hub eval SYNTHETIC --real DATASET --model convnet_d3 --model resnet18_cifar --seeds 3
    pdd-hub show SYNTHETIC
    pdd-hub push FOLDER ORG/NAME [--private] [--revision BRANCH] [--create-pr] [--tag TAG] [--dry-run]
    pdd-hub import-pt SRC OUTPUT --real DATASET --zca      # MTT / ProgressiveDD / DD-Ranking tensors
    pdd-hub export-pt EXPORT OUTPUT [--layout ddranking]

Run ``distill`` and ``eval`` under ``accelerate launch -m pdd_hub.cli ...`` to use several processes.
Errors a user can cause print as one paragraph, without a traceback, and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path

from pdd_hub.errors import ConfigError, PDDError
from pdd_hub.launch import report_user_error
from pdd_hub.outputs import check_writable, disk_full, disk_full_message, output_lock
from pdd_hub.validate import EPOCHS, IMAGE_SIDE, LR, SEED, Rule, positive_int

# The numeric options of the commands, checked before any work (validate.Rule: range and caps).
EVAL_OPTIONS = {
    "seeds": positive_int(10_000),
    "seed": SEED,
    "epochs_per_stage": positive_int(EPOCHS.high, optional=True),
    "image_size": positive_int(IMAGE_SIDE.high, optional=True),
}
SELECT_OPTIONS = {
    "num_stages": positive_int(10_000),
    "ipc": positive_int(),
    "lr": LR,
    "epochs": EPOCHS,
    "seed": SEED,
    "val_per_class": positive_int(),
    "train_per_class": positive_int(optional=True),
}


def _check_options(args: argparse.Namespace, rules: dict[str, Rule]) -> None:
    for name, rule in rules.items():
        rule.check(getattr(args, name), f"--{name.replace('_', '-')}", ConfigError)


def check_eval_args(args: argparse.Namespace) -> list[str]:
    """The models of ``pdd-hub eval``, with its options checked (before anything is loaded)."""
    from pdd_hub.models import check_model_name

    models = args.model or []
    if not models:
        raise PDDError("give at least one --model (any timm model name, e.g. convnet_d3 or resnet18_cifar)")
    _check_options(args, EVAL_OPTIONS)
    for name in models:
        check_model_name(name)
    return models


def _eval(args: argparse.Namespace) -> int:
    models = check_eval_args(args)
    accelerator = _eval_accelerator(args)
    output = Path(args.output)
    with contextlib.ExitStack() as stack:
        if accelerator.is_main_process:  # one evaluation per output at a time, and it can be written
            stack.enter_context(output_lock(output))
            check_writable(output.parent, min_free=2**20)
        return _evaluate(args, models, accelerator, output)


def _evaluate(args: argparse.Namespace, models: list[str], accelerator, output: Path) -> int:
    from dataclasses import replace

    from pdd_hub.data import load_real_data, load_split
    from pdd_hub.evaluate import EvalOptions, evaluate_export, random_baseline
    from pdd_hub.hub import load_pdd
    from pdd_hub.runtime import TrainingRuntime, batch_networks_by_default

    pdd = load_pdd(args.synthetic, revision=args.revision)
    _check_push(args, pdd)
    # by default, the real data is read the way it was read for distillation
    test_split = args.test_split or pdd.schedule.source.get("test_split") or "test"
    image_size = args.image_size or pdd.schedule.config.get("image_size")
    test = load_split(
        args.real,
        test_split,
        image_column=args.image_column,
        label_column=args.label_column,
        image_size=image_size,
    )
    seeds = list(range(args.seed, args.seed + args.seeds))
    options = EvalOptions(
        mode=args.mode,
        epochs_per_stage=args.epochs_per_stage,
        real_name=args.real,
        runs_dir=None if args.no_resume else Path(args.output).with_suffix(".runs"),
    )
    batched = batch_networks_by_default(accelerator.device) if args.batched is None else args.batched
    runtime = TrainingRuntime(precision=args.precision, batched=batched, compile=args.compile, progress=True)
    settings = {"runtime": runtime, "accelerator": accelerator}
    report = evaluate_export(pdd, test, models, seeds, options, **settings)
    if args.baseline == "random":
        train = load_real_data(
            args.real,
            val_per_class=pdd.schedule.config.get("val_per_class", 50),
            seed=pdd.schedule.config.get("seed", 0),
            image_column=args.image_column,
            label_column=args.label_column,
            test_split=test_split,
            image_size=image_size,
        ).train
        baseline = random_baseline(pdd, train, seed=args.seed)
        extra = evaluate_export(
            baseline, test, models, seeds, replace(options, tag=" [random real]"), **settings
        )
        report.accuracies.update(extra.accuracies)
    if accelerator.is_main_process:
        print(report.to_markdown())
        report.save_json(output)
        plot = Path(args.plot) if args.plot else output.with_suffix(".png")
        report.save_plot(plot)
        print(f"\nwrote {output} and {plot}")
        _share_report(args, accelerator, report, pdd, plot)
    return 0


def _push_options(args: argparse.Namespace, results: list[str]):
    from pdd_hub.publish import PushOptions

    return PushOptions(
        private=args.private,
        revision=args.push_revision,
        commit_message=args.commit_message,
        create_pr=args.create_pr,
        tag=args.tag,
        license=args.license,
        results=results,
        dry_run=args.dry_run,
    )


def _check_push(args: argparse.Namespace, pdd) -> None:
    """``eval --push-to-hub``: fail before any training if the push could not be made."""
    if args.push_to_hub:
        from huggingface_hub import HfApi

        from pdd_hub.publish import push_license

        _push_options(args, []).check()
        push_license(pdd, args.license, HfApi())


def _eval_accelerator(args: argparse.Namespace):
    """The evaluation's ``Accelerator``, with the ``--tracker`` (logging under ``--tracker-dir``, else
    beside the output: ``OUTPUT.logs/``)."""
    from pdd_hub.runtime import make_accelerator
    from pdd_hub.tracking import tracker_kwargs

    logs = Path(args.tracker_dir) if args.tracker_dir else Path(args.output).with_suffix(".logs")
    return make_accelerator(cpu=args.cpu, **tracker_kwargs(args.tracker, logs))


def _share_report(args: argparse.Namespace, accelerator, report, pdd, plot: Path) -> None:
    """``eval --tracker``: the results to the tracker; ``eval --push-to-hub``: onto the export's card."""
    from pdd_hub.tracking import log_eval_report

    if args.tracker != "none":
        accelerator.init_trackers("pdd-hub-eval", config={"export": args.synthetic, "real": args.real})
        log_eval_report(accelerator, report, plot)
        accelerator.end_training()
    if args.push_to_hub:
        _publish(pdd, args.push_to_hub, args, [args.output])


def _show(args: argparse.Namespace) -> int:
    from pdd_hub.hub import load_pdd

    pdd = load_pdd(args.synthetic, revision=args.revision)
    s = pdd.schedule
    print(f"{pdd.path}: PDD + {s.method} on {s.source.get('dataset', '?')} with {s.distill_model}")
    print(
        f"{s.num_classes} classes, images {list(s.image_shape)}, preprocess: "
        f"{'ZCA' if s.preprocess.get('zca') else 'normalise'}"
    )
    print("| split | ipc | lr | epochs |\n|---|---|---|---|")
    for spec in s.stages:
        print(f"| {spec.split} | {spec.ipc} | {spec.recipe.lr:.6g} | {spec.recipe.epochs} |")
    if args.json:
        print(json.dumps(s.to_dict(), indent=2))
    return 0


def _pairs(items: list[str] | None, what: str) -> dict:
    from pdd_hub.config import parse_key_values

    return dict(parse_key_values(items or [], what))


def _select(args: argparse.Namespace) -> int:
    from pdd_hub.config import ScoringConfig, build_section
    from pdd_hub.selection.select import build_selector

    _check_options(args, SELECT_OPTIONS)
    build_selector(args.method, _pairs(args.param, "--param"))  # its settings, checked before any work
    scoring = build_section(ScoringConfig, _pairs(args.scoring, "--scoring"), "scoring")
    with output_lock(args.output):  # one writer of the export at a time, and it can be written
        check_writable(Path(args.output).parent)
        return _select_and_export(args, scoring)


def _select_and_export(args: argparse.Namespace, scoring) -> int:
    from pdd_hub.augment import DEFAULT_STRATEGY
    from pdd_hub.data import Preprocess, load_real_data
    from pdd_hub.data.transforms import normalization_constants
    from pdd_hub.runtime import make_accelerator
    from pdd_hub.schedule import SGDRecipe
    from pdd_hub.selection.select import Selection, select_and_export
    from pdd_hub.train import TrainingRecipe

    real = load_real_data(
        args.real,
        val_per_class=args.val_per_class,
        seed=args.seed,
        image_column=args.image_column,
        label_column=args.label_column,
        image_size=args.image_size,
    )
    if args.train_per_class is not None:
        real.keep_train_per_class(args.train_per_class, args.seed)
    mean, std = normalization_constants(args.normalization, args.mean, args.std)
    preprocess = Preprocess.fit(
        real.train.images, normalize=not args.no_normalize, zca=args.zca, mean=mean, std=std
    )
    selection = Selection(args.method, args.num_stages, args.ipc, _pairs(args.param, "--param"), args.seed)
    folder = select_and_export(
        args.output,
        real,
        preprocess,
        selection,
        scoring=scoring,
        recipe=TrainingRecipe(
            sgd=SGDRecipe(lr=args.lr, epochs=args.epochs), augment=f"dsa:{DEFAULT_STRATEGY}"
        ),
        accelerator=make_accelerator(),
    )
    print(f"wrote {args.num_stages} stages x {args.ipc} images per class ({args.method}): {folder}")
    return 0


def _distill(args: argparse.Namespace) -> int:
    from pdd_hub.recipe import distill, recipe_main

    return recipe_main(args.args, distill)


def _configs(args: argparse.Namespace) -> int:
    from pdd_hub.configs import configs_dir, list_configs
    from pdd_hub.evidence import measured_gain
    from pdd_hub.registry import METHODS

    rows = list_configs()
    width = max(len(name) for name, _ in rows)
    for name, description in rows:
        print(f"{name:<{width}}  {description}")
    print(f"\n(in {configs_dir()}; run one with `pdd-hub distill --config NAME [key=value ...]`)")
    print("\nWhat PDD measured against each base method alone:")
    for method in METHODS.names():
        print(f"  {method:<4} {measured_gain(method)}")
    return 0


def _methods(args: argparse.Namespace) -> int:
    from pdd_hub.registry import METHODS, registry_summary

    for name, summary in registry_summary(METHODS):
        print(f"{name:<6}  {summary}")
    return 0


def _push(args: argparse.Namespace) -> int:
    from pdd_hub.hub import load_pdd

    _publish(load_pdd(args.folder), args.repo_id, args, args.results)
    return 0


def _publish(pdd, repo_id: str, args: argparse.Namespace, results: list[str]) -> None:
    """Push ``pdd`` with the push options in ``args`` and say what happened (token: HF_TOKEN or the
    cached login)."""
    from huggingface_hub import HfApi

    from pdd_hub.publish import push_export

    result = push_export(pdd, repo_id, _push_options(args, results), HfApi())
    if args.dry_run:
        print(f"dry run: {pdd.path}\n{result.plan.describe()}")
        return
    where = f"pull request {result.pr_url}" if result.pr_url else result.commit_url
    tagged = f", tagged {result.tag}" if result.tag else ""
    print(f"pushed {pdd.path} to {repo_id}: {where}{tagged}")


def _import_pt(args: argparse.Namespace) -> int:
    from pdd_hub.data.transforms import normalization_constants
    from pdd_hub.interop import ImportSettings, ReferenceNormalization, import_pt

    mean, std = normalization_constants(args.normalization, args.mean, args.std)
    folder = import_pt(
        args.src,
        args.output,
        real=args.real,
        normalization=ReferenceNormalization(zca=args.zca, zca_eps=args.zca_eps, mean=mean, std=std),
        settings=ImportSettings(
            method=args.method,
            distill_model=args.distill_model,
            lr=args.lr,
            epochs=args.epochs,
            batch_size=args.batch_size,
            augment=args.augment,
        ),
    )
    print(
        f"wrote {folder}; evaluate it with pdd-hub eval {folder} --real {args.real or 'DATASET'} --model ..."
    )
    return 0


def _export_pt(args: argparse.Namespace) -> int:
    from pdd_hub.interop import export_pt

    out = export_pt(args.export, args.output, layout=args.layout)
    print(f"wrote {out}/stage_*/ ({args.layout} file names, stages 1..k in stage_k)")
    return 0


def _add_interop_parsers(sub: argparse._SubParsersAction) -> None:
    from pdd_hub.interop import LAYOUTS, ImportSettings

    defaults = ImportSettings()
    im = sub.add_parser(
        "import-pt", help="turn the .pt tensors of MTT / ProgressiveDD / DD-Ranking into an export"
    )
    im.add_argument("src", help="folder of saved tensors (see docs/INTEROP.md for the layouts read)")
    im.add_argument("output", help="export folder to write")
    im.add_argument("--real", default=None, help="the dataset the tensors were distilled from")
    im.add_argument("--zca", action="store_true", help="the images are ZCA-whitened as the MTT family does")
    im.add_argument("--zca-eps", type=float, default=0.1)
    add_normalization_options(im)
    im.add_argument("--method", default=defaults.method, help="the base method that made them (default mtt)")
    im.add_argument("--distill-model", default=defaults.distill_model)
    im.add_argument("--lr", type=float, default=None, help="training LR where the files hold none")
    im.add_argument("--epochs", type=int, default=defaults.epochs, help="training epochs per stage")
    im.add_argument("--batch-size", type=int, default=defaults.batch_size)
    im.add_argument("--augment", default=defaults.augment, help="training augmentation (pdd-hub notation)")
    im.set_defaults(func=_import_pt)
    ex = sub.add_parser(
        "export-pt", help="write an export as .pt tensors for ProgressiveDD / MTT / DD-Ranking"
    )
    ex.add_argument("export", help="export folder or Hub dataset repo id")
    ex.add_argument("output", help="folder to write stage_1/, stage_2/, ... into")
    ex.add_argument("--layout", choices=sorted(LAYOUTS), default="progressivedd")
    ex.set_defaults(func=_export_pt)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pdd-hub", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    di = sub.add_parser(
        "distill",
        help="distil a dataset into progressive stages (pdd-hub distill --config NAME_OR_FILE key=value ...)",
        add_help=False,  # --help goes to the config parser, which lists every key
    )
    di.add_argument("args", nargs="*", help="--config NAME_OR_FILE, then key=value overrides")
    di.set_defaults(func=_distill)
    sub.add_parser("configs", help="list the shipped configs").set_defaults(func=_configs)
    sub.add_parser("methods", help="list the registered base methods").set_defaults(func=_methods)

    _add_eval_parser(sub)
    sh = sub.add_parser("show", help="print an export's schedule")
    sh.add_argument("synthetic")
    sh.add_argument("--revision", default=None)
    sh.add_argument("--json", action="store_true", help="also print the whole pdd_schedule.json")
    sh.set_defaults(func=_show)
    _add_select_parser(sub)
    _add_interop_parsers(sub)
    pu = sub.add_parser("push", help="upload an export folder to a Hub dataset repo")
    pu.add_argument("folder")
    pu.add_argument("repo_id")
    add_push_options(pu)
    pu.set_defaults(func=_push)
    return parser


def add_push_options(parser: argparse.ArgumentParser, eval_command: bool = False) -> None:
    """The options of ``pdd-hub push``; ``eval --push-to-hub`` takes them too, less ``--results``
    (the evaluation's own) and with ``--push-revision`` (its ``--revision`` names the export's)."""
    parser.add_argument("--private", action="store_true", default=None, help="create the repo private")
    parser.add_argument(
        "--push-revision" if eval_command else "--revision",
        dest="push_revision",
        default=None,
        help="branch to push to (created from main if missing)",
    )
    parser.add_argument("--commit-message", default=None)
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    parser.add_argument("--tag", default=None, help="tag the pushed commit, e.g. v1.0")
    parser.add_argument(
        "--license", default=None, help="Hub license id (default: the source dataset's, when it names one)"
    )
    if not eval_command:
        parser.add_argument(
            "--results",
            action="append",
            default=[],
            help="a pdd-hub eval JSON to add to the card and the repo (repeatable)",
        )
    parser.add_argument("--dry-run", action="store_true", help="list what would be uploaded; upload nothing")


def _add_eval_parser(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval", help="train timm models on an export's schedule and test them on real data")
    ev.add_argument("synthetic", help="export folder or Hub dataset repo id")
    ev.add_argument("--real", required=True, help="real dataset: Hub id, local folder or sklearn:digits")
    ev.add_argument("--model", action="append", help="timm model name (repeat for several)")
    ev.add_argument("--seeds", type=int, default=3, help="number of seeds per model (default 3)")
    ev.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    ev.add_argument("--epochs-per-stage", type=int, default=None, help="override the schedule's epochs")
    ev.add_argument("--mode", choices=["progressive", "union", "sequential"], default="progressive")
    ev.add_argument("--output", default="results.json", help="JSON output path (the plot goes beside it)")
    ev.add_argument("--plot", default=None, help="PNG plot path (default: OUTPUT with .png)")
    ev.add_argument("--test-split", default=None, help="default: the export's test split, else 'test'")
    ev.add_argument("--image-size", type=int, default=None, help="resize real images (default: as distilled)")
    ev.add_argument("--image-column", default=None)
    ev.add_argument("--label-column", default=None)
    ev.add_argument("--revision", default=None, help="Hub revision of the export")
    ev.add_argument(
        "--baseline",
        choices=["random"],
        default=None,
        help="also train the same models, with the same recipe, on as many random real training images "
        "per stage (rows marked [random real])",
    )
    ev.add_argument(
        "--batched",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train the seeds of a model at once, stacked under vmap (default: on GPUs, not on CPUs)",
    )
    ev.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="bf16: autocast the forward passes (faster where the hardware has bf16; see docs/RESULTS.md)",
    )
    ev.add_argument(
        "--compile",
        action="store_true",
        help="train each seed through torch.compile (pays after its first seconds; see docs/RESULTS.md)",
    )
    ev.add_argument("--cpu", action="store_true", help="force the CPU even if a GPU is present")
    ev.add_argument(
        "--tracker",
        default="none",
        help="log the results to a tracker accelerate supports (tensorboard, wandb, trackio, mlflow, ...)",
    )
    ev.add_argument("--tracker-dir", default=None, help="the tracker's log folder (default: OUTPUT.logs)")
    ev.add_argument(
        "--push-to-hub",
        default=None,
        metavar="REPO",
        help="push the export with these results on its card (and the JSON in the repo) to REPO",
    )
    add_push_options(ev, eval_command=True)
    ev.add_argument(
        "--no-resume",
        action="store_true",
        help="retrain every run instead of reusing finished ones saved in OUTPUT with suffix .runs/",
    )
    ev.set_defaults(func=_eval)


def _add_select_parser(sub: argparse._SubParsersAction) -> None:
    se = sub.add_parser("select", help="export real images chosen by a selection baseline as stages")
    se.add_argument("--real", required=True, help="real dataset: Hub id, local folder or sklearn:digits")
    se.add_argument(
        "--method",
        default="random",
        help="random, herding, kcenter, forgetting, unforgettable or sensitivity (default random)",
    )
    se.add_argument("--param", action="append", help="a setting of the method, e.g. clusters=20 (repeatable)")
    se.add_argument(
        "--scoring",
        action="append",
        help="a setting of the networks trained on the real data for features and forgetting scores, e.g. "
        "epochs=10, runs=3 or model=resnet10_cifar_bn (repeatable; see pdd_hub.config.ScoringConfig)",
    )
    se.add_argument("--train-per-class", type=int, default=None, help="select from a random subset per class")
    se.add_argument("--num-stages", type=int, default=5)
    se.add_argument("--ipc", type=int, default=2, help="images per class per stage")
    se.add_argument("--output", required=True, help="export folder to write")
    se.add_argument("--zca", action="store_true", help="ZCA-whiten (as the MTT family does)")
    se.add_argument("--no-normalize", action="store_true", help="skip mean/std normalisation")
    add_normalization_options(se)
    se.add_argument("--lr", type=float, default=0.01, help="training LR recorded for every stage")
    se.add_argument("--epochs", type=int, default=500, help="training epochs recorded for every stage")
    se.add_argument("--seed", type=int, default=0)
    se.add_argument("--val-per-class", type=int, default=50)
    se.add_argument("--image-size", type=int, default=None, help="resize the real images (eval: pass it too)")
    se.add_argument("--image-column", default=None)
    se.add_argument("--label-column", default=None)
    se.set_defaults(func=_select)


def add_normalization_options(parser: argparse.ArgumentParser) -> None:
    """Fixed normalisation constants instead of the ones measured on the training split."""
    from pdd_hub.data.transforms import NORMALIZATION_PRESETS

    parser.add_argument(
        "--mean", type=float, nargs="+", default=None, help="per-channel mean, e.g. 0.4914 0.4822 0.4465"
    )
    parser.add_argument(
        "--std", type=float, nargs="+", default=None, help="per-channel std, e.g. 0.2023 0.1994 0.2010"
    )
    parser.add_argument(
        "--normalization",
        choices=sorted(NORMALIZATION_PRESETS),
        default=None,
        help="the reference code's constants for a dataset (cifar10: the literature's CIFAR-10 mean and std)",
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["distill"]:  # everything after it is the config parser's (--config, key=value, --help)
        return _distill(argparse.Namespace(args=argv[1:]))
    if argv[:1] == ["launch"]:  # everything after it is accelerate launch's, then the command's
        return _launch(argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("eval", "select"):  # the commands that train networks: every core
            from pdd_hub.runtime import configure_threads

            configure_threads()
        return args.func(args)
    except Exception as exc:
        return user_error(exc, f"pdd-hub {args.command}: error: ")


def user_error(exc: Exception, prefix: str) -> int:
    """Print an error the user can fix (a :class:`PDDError`, a full disk) as one paragraph and return
    exit status 2; re-raise anything else."""
    if isinstance(exc, PDDError):
        message = str(exc)
    elif disk_full(exc):
        message = disk_full_message(exc)
    else:
        raise exc
    print(prefix + message, file=sys.stderr)
    report_user_error(message)
    return 2


def _launch(argv: list[str]) -> int:
    from pdd_hub.launch import launch

    try:
        return launch(argv)
    except Exception as exc:
        return user_error(exc, "pdd-hub launch: error: ")


if __name__ == "__main__":
    sys.exit(main())
