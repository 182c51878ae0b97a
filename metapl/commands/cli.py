"""Command line: metapl train | eval | predict | export | label | shard | plot | demo | presets | config.

Every error a user can cause ends in one line on stderr that names the bad value and the fix, and exit code 2.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import os
import re
import sys
import warnings
from pathlib import Path

from metapl import __version__
from metapl.commands.shard import DEFAULT_BUFFER, DEFAULT_SHARD_SIZE
from metapl.core.errors import Interrupted, MetaplError
from metapl.parts.methods import METHODS, NETWORKS
from metapl.run.presets import preset_names

# This module imports neither PyTorch nor the config (which imports it): `--help`, `--version` and `presets`
# answer at once; each command imports what it needs.


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line on one line (no usage block) and exits with 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        if choice:  # add the closest choice, as config keys and presets do
            options = re.findall(r"'([^']*)'", choice.group(2))
            close = difflib.get_close_matches(choice.group(1), options, n=1, cutoff=0.6)
            if close:
                message = f"{message[: choice.start()]}invalid choice: {choice.group(1)!r} (did you mean {close[0]!r}?)"
        self.exit(2, f"metapl: error: {message}; see '{self.prog} --help'\n")


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", required=True, help=f"one of: {', '.join(preset_names())}")
    parser.add_argument("--method", choices=METHODS.names(), help="override method.name")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.steps=500 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="metapl", description="Meta Pseudo Labels and its baselines.")
    parser.add_argument("--version", action="version", version=f"metapl {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    train = commands.add_parser("train", help="train one run from a preset")
    _add_config_args(train)
    train.add_argument(
        "--out", type=Path, help="run directory (default runs/PRESET-METHOD-seedN); resumed if it holds a checkpoint"
    )
    train.add_argument(
        "--restart",
        action="store_true",
        help="discard what --out holds (checkpoints, weights, logs) and train from step 0",
    )
    train.add_argument(
        "--download",
        action="store_true",
        help="fetch a missing CIFAR-10/100, SVHN or Fashion-MNIST into data.root (torchvision's download code), "
        "and timm weights that model.pretrained=cache reads into timm's local cache",
    )
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard events")

    plot = commands.add_parser("plot", help="plot runs: training curves, or decision regions for 2-D data")
    plot.add_argument("runs", nargs="+", type=Path, help="run directories written by metapl train")
    plot.add_argument("--out", type=Path, help="output PNG (default: in the first run directory)")
    plot.add_argument(
        "--kind",
        choices=("auto", "curves", "regions"),
        default="auto",
        help="curves of the metrics, or decision regions side by side (2-D data); auto picks",
    )

    demo = commands.add_parser("demo", help="supervised vs UDA vs MPL on scikit-learn's digits (5 labels/class)")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="directory for the runs, table and plot")
    demo.add_argument("--steps", type=int, default=None, help="steps per method (default: the preset's)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-progress", action="store_true")

    commands.add_parser("presets", help="list the presets")

    show = commands.add_parser("config", help="print the resolved config of a preset with overrides")
    _add_config_args(show)

    weights_help = "final: model.pt, the evaluated model (EMA student); best: best_model.pt, best on validation"
    network_help = (
        "student (default): the evaluated model; teacher: the teacher's final weights (teacher_model.pt; "
        "methods mpl and pseudo_label)"
    )
    evaluate = commands.add_parser("eval", help="score a run's weights on its validation and test sets again")
    evaluate.add_argument("run", type=Path, help="run directory written by metapl train")
    evaluate.add_argument("--weights", choices=("final", "best"), default="final", help=weights_help)
    evaluate.add_argument("--network", choices=NETWORKS, default="student", help=network_help)
    evaluate.add_argument(
        "--batch-size", type=int, default=None, help="evaluation batch (default: train.eval_batch_size)"
    )

    predict = commands.add_parser("predict", help="class probabilities for image files or CSV rows")
    predict.add_argument("run", type=Path, help="run directory written by metapl train")
    predict.add_argument(
        "input",
        type=Path,
        help="an image file, a folder of images, or a CSV with one image path or the flattened input values per row",
    )
    predict.add_argument("--out", type=Path, help="output CSV (default RUN/predictions.csv)")
    predict.add_argument("--weights", choices=("final", "best"), default="final", help=weights_help)
    predict.add_argument("--network", choices=NETWORKS, default="student", help=network_help)
    predict.add_argument(
        "--invert",
        action="store_true",
        help="map image pixels x to 1-x (digits store ink as high values: use it for dark ink on white)",
    )

    export = commands.add_parser("export", help="export a run's model to safetensors or ONNX, checked against PyTorch")
    export.add_argument("run", type=Path, help="run directory written by metapl train")
    export.add_argument(
        "--format",
        required=True,
        choices=("safetensors", "onnx"),
        dest="export_format",
        help="safetensors: the state dict; onnx: the network with a dynamic batch dimension, output = logits",
    )
    export.add_argument("--out", type=Path, help="output file (default RUN/model.safetensors or RUN/model.onnx)")
    export.add_argument("--weights", choices=("final", "best"), default="final", help=weights_help)
    export.add_argument("--network", choices=NETWORKS, default="student", help=network_help)

    label = commands.add_parser(
        "label", help="store a teacher's class distributions on a data set's images, for method reduced_mpl"
    )
    label.add_argument(
        "source", metavar="SOURCE", help="a run directory written by metapl train, or a registered model name"
    )
    label.add_argument("--out", type=Path, required=True, help="label directory (resumed if a run was killed)")
    label.add_argument(
        "--weights",
        help="run: final (model.pt, default) or best (best_model.pt); model: its state-dict file (required)",
    )
    label.add_argument("--preset", help="model SOURCE: the preset whose data (and model settings) to use")
    label.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (a run SOURCE: data.* keys only, e.g. a moved data.root; repeatable)",
    )
    label.add_argument(
        "--top-k",
        type=int,
        default=None,
        help="store the k largest probabilities (0: all; default: all up to 100 classes, else 16)",
    )
    label.add_argument("--shard-size", type=int, default=10_000, help="images per shard file (default 10000)")
    label.add_argument("--precision", choices=("fp16", "fp32"), default="fp16", help="stored precision (default fp16)")
    label.add_argument(
        "--bias",
        default="",
        metavar="SPEC",
        help="experiment tool, a known error on images the teacher assigns to class A: A:B,C:D or half:A>B moves half "
        "of A's probability to B; shift:A>B:delta=D[:fraction=F] sets B's logit D nats above A's on that share of "
        "them (docs/reduced-mpl.md#bias)",
    )
    label.add_argument(
        "--batch-size", type=int, default=None, help="images per forward (default train.eval_batch_size)"
    )
    label.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    label.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    shard = commands.add_parser(
        "shard", help="write an image folder or CSV as WebDataset tar shards (unlabeled images)"
    )
    shard.add_argument(
        "source", type=Path, help="a folder of images (searched recursively) or a CSV with a 'path' column"
    )
    shard.add_argument(
        "--out",
        type=Path,
        required=True,
        help="a new or empty folder for shard-000000.tar, ..., or one metapl shard wrote: continued and extended",
    )
    shard.add_argument(
        "--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help=f"images per shard (default {DEFAULT_SHARD_SIZE})"
    )
    shard.add_argument("--no-shuffle", action="store_true", help="keep the source's order (default: seeded shuffle)")
    shard.add_argument("--seed", type=int, default=0, help="the shuffle's seed (default 0)")
    shard.add_argument(
        "--shuffle-buffer",
        type=int,
        default=DEFAULT_BUFFER,
        metavar="N",
        help=f"images shuffled together, in consecutive blocks of the source (default {DEFAULT_BUFFER})",
    )
    shard.add_argument(
        "--workers", type=int, default=None, help="processes writing shards (default: the cores, at most 8)"
    )
    shard.add_argument("--skip-bad", action="store_true", help="leave out unreadable images, listed in DIR/skipped.txt")
    shard.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(commands=commands.choices)
    return parser


def _unrecognized(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str]) -> None:
    """Exit 2 with one line for arguments the command does not take, with the option or config key meant."""
    command = args.commands[args.command]
    message = f"unrecognized arguments: {' '.join(extra)}"
    option = next((a.split("=")[0] for a in extra if a.startswith("--")), None)
    if option is not None:
        from metapl.run.config import Config
        from metapl.run.values import flatten

        name = option[2:].replace("-", "_")
        # a key's own name, or a nested section's (--feedback: method.feedback.mode)
        keys = [k for k, _ in flatten(Config().to_dict()) if name in (k.rpartition(".")[2], *k.split(".")[1:2])]
        known = [o for action in command._actions for o in action.option_strings if o.startswith("--")]
        close = difflib.get_close_matches(option, known, n=1, cutoff=0.75)
        if keys and "--set" in known:
            message += f" (a config value: use --set {keys[0]}=...)"
        elif close:
            message += f" (did you mean {close[0]}?)"
    command.error(message)


def main(argv: list[str] | None = None) -> int:
    # torch.func.jvp (soft feedback) triggers a torch-internal deprecation warning that users cannot act on.
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated")
    # torch.load's remark on a file that is not a checkpoint at all: the error that follows names the file.
    warnings.filterwarnings("ignore", message="Detected pickle protocol")
    # Redirected to a file (CI, nohup), stdout is block-buffered: its lines would reach the log after stderr's.
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(line_buffering=True)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        _unrecognized(parser, args, extra)
    try:
        _check_paths(args)
        return _COMMANDS[args.command](args)
    except Interrupted as stop:
        _say(f"metapl: {_one_line(str(stop))}")
        return stop.exit_code
    except MetaplError as err:
        _say(f"metapl: error: {_one_line(str(err))}")
        return 2
    except (MemoryError, RuntimeError, OSError) as err:
        if isinstance(err, BrokenPipeError) and _reader_gone():  # metapl presets | head: nobody left to tell
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that the exit's flush is quiet
            return 0
        message = _allocation_failure(err, args)  # an allocation that failed: one line naming the sizes
        if message is None:  # a path that cannot be written or read: the OS says why
            message = _os_failure(err, args)
        if message is None:
            raise
        _say(f"metapl: error: {_one_line(message)}")
        return 2
    except KeyboardInterrupt:
        print("metapl: interrupted", file=sys.stderr)
        return 130


def _say(line: str) -> None:
    """One line on stderr in one write: under torchrun the ranks share stderr, and print's separate writes of the
    text and its newline let two ranks' lines run into each other."""
    sys.stderr.flush()
    try:
        os.write(sys.stderr.fileno(), (line + "\n").encode("utf-8", "replace"))
    except (OSError, ValueError, AttributeError):  # no real file behind stderr (a test's capture): print it
        print(line, file=sys.stderr)


def _reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (a broken pipe anywhere else is an error to report)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def _one_line(text: str) -> str:
    """The message with line breaks and other control characters escaped (a path or CSV cell may hold them)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _check_paths(args: argparse.Namespace) -> None:
    """Every path on the command line that the OS could not open for its length, refused naming its option."""
    from metapl.core.settings import check_path

    for action in args.commands[args.command]._actions:
        value = getattr(args, action.dest, None)
        if action.type is Path and value is not None:
            key = action.option_strings[0] if action.option_strings else (action.metavar or action.dest).upper()
            for path in value if isinstance(value, list) else [value]:
                check_path(path, key)


def _output_of(args: argparse.Namespace) -> Path:
    """Where the command writes: --out, else the run directory it reads (eval, predict, export and plot write there)."""
    runs = getattr(args, "runs", None)
    return getattr(args, "out", None) or getattr(args, "run", None) or (runs[0] if runs else Path("runs"))


def _os_failure(err: BaseException, args: argparse.Namespace) -> str | None:
    """One line for a file that could not be written or read: a full disk (whichever writer met it), a path too
    long (shortened), or what the OS says, with the path; None for an error that is none of these."""
    from metapl.core.errors import disk_full, no_space, shorten

    filename = getattr(err, "filename", None)
    path = filename if filename else _output_of(args)
    if disk_full(err, path):
        again = "run the same command to go on" if args.command == "train" else "run the command again"
        return f"{no_space(path)}; free space on that disk or pass another --out, then {again}"
    if not isinstance(err, OSError):
        return None
    if err.errno == errno.ENAMETOOLONG:
        return (
            f"path too long for the file system: {shorten(path)} ({len(os.fsencode(path)):,} bytes); use a shorter one"
        )
    where = f": {shorten(filename)}" if filename else f" (writing or reading {shorten(path)})"
    return f"{err.strerror or err}{where}; check the path and its permissions"


def _allocation_failure(err: BaseException, args: argparse.Namespace) -> str | None:
    if not isinstance(err, (MemoryError, RuntimeError)) and getattr(err, "errno", None) != errno.ENOMEM:
        return None  # budget imports PyTorch: only for what may be an allocation failure
    from metapl.run.budget import allocation_failure

    return allocation_failure(err, args.command, getattr(args, "overrides", ()), _train_config(args))


def _train_config(args: argparse.Namespace):
    """The config `metapl train` ran with (its size keys are those of the parts it chose); None for other commands
    or when it cannot be built again."""
    if args.command != "train":
        return None
    from metapl.core.errors import MetaplError
    from metapl.run.config import build_config

    try:
        return build_config(args.preset, args.overrides, args.method)
    except MetaplError:
        return None


def _train(args: argparse.Namespace) -> int:
    from metapl.run.config import build_config
    from metapl.run.experiment import run_experiment

    cfg = build_config(args.preset, args.overrides, args.method)
    out = args.out or Path("runs") / f"{cfg.preset}-{cfg.method.name}-seed{cfg.train.seed}"
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 speaks
    if args.download and main_rank:
        from metapl.parts.data import download_dataset
        from metapl.parts.data.registry import DATASETS
        from metapl.parts.models.timm_models import download_pretrained

        weights = download_pretrained(cfg.model)  # model.pretrained=cache: timm's weights into its local cache
        if not weights or DATASETS.get(cfg.data.name).download is not None:
            download_dataset(cfg.data)
    summary = run_experiment(
        cfg,
        out,
        progress=not args.no_progress,
        tensorboard=not args.no_tensorboard,
        restart=args.restart,
        announce=lambda line: print(line, flush=True),
    )
    if not main_rank:
        return 0
    final = ("method", "test_top1", "test_top1_selected", "teacher_test_top1", "teacher_test_top1_selected")
    shown = {k: summary[k] for k in (*final, "train_seconds") if k in summary}
    print(f"run directory: {out}")
    print(" ".join(f"{k}={_fmt(v)}" for k, v in shown.items()))
    return 0


def _plot(args: argparse.Namespace) -> int:
    from metapl.commands.plot import plot_runs

    path = plot_runs(args.runs, args.out, args.kind)
    print(f"wrote {path}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from metapl.commands.demo import run_demo

    run_demo(args.out, steps=args.steps, seed=args.seed, progress=not args.no_progress)
    return 0


def _presets(args: argparse.Namespace) -> int:
    from metapl.run.presets import preset_table

    rows = preset_table()
    columns = ("preset", "data", "model", "method", "steps", "about")
    shown = [{**row, "steps": f"{int(row['steps']):,}" if row["steps"].isdigit() else row["steps"]} for row in rows]
    widths = {c: max(len(c), *(len(row[c]) for row in shown)) for c in columns[:-1]}
    print("  ".join(c.ljust(widths[c]) for c in columns[:-1]) + "  about")
    for row in shown:
        print("  ".join(row[c].ljust(widths[c]) for c in columns[:-1]) + "  " + row["about"])
    return 0


def _config(args: argparse.Namespace) -> int:
    import yaml

    from metapl.run.config import build_config

    cfg = build_config(args.preset, args.overrides, args.method)
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from metapl.commands.evaluate import eval_path, evaluate_run, format_eval_table

    result = evaluate_run(args.run, args.weights, args.batch_size, args.network)
    print(format_eval_table(result))
    print(f"wrote {eval_path(args.run, args.network)}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from metapl.commands.predict import predict_run

    out, rows = predict_run(args.run, args.input, args.out, args.weights, args.invert, args.network)
    print(f"wrote {rows} prediction{'s' if rows != 1 else ''} to {out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from metapl.commands.export import export_run

    result = export_run(args.run, args.export_format, args.out, args.weights, args.network)
    print(f"wrote {result.path}")
    print(f"checked on {result.checked_examples} test inputs: max abs difference to PyTorch {result.max_abs_diff:.3g}")
    return 0


def _label(args: argparse.Namespace) -> int:
    from metapl.commands.label import LabelOptions, label_pool, parse_bias

    options = LabelOptions(
        top_k=args.top_k,
        shard_size=args.shard_size,
        precision=args.precision,
        bias=parse_bias(args.bias),
        batch_size=args.batch_size,
        device=args.device,
    )
    manifest = label_pool(
        args.source,
        args.out,
        weights=args.weights,
        preset=args.preset,
        overrides=args.overrides,
        options=options,
        progress=not args.no_progress,
        announce=lambda line: print(line, flush=True),
    )
    if os.environ.get("RANK", "0") == "0":
        stored = f"top {manifest['top_k']}" if manifest["top_k"] else "all"
        keyed = (manifest.get("unlabeled_shards") or {}).get("files", [])
        sharded = f", and {sum(e['count'] for e in keyed)} of {len(keyed)} input shards by key" if keyed else ""
        print(
            f"{args.out} holds {manifest['pool_size']} distributions ({stored} of {manifest['num_classes']} classes, "
            f"{manifest['precision']}) in {len(manifest['shards'])} shards{sharded}"
        )
    return 0


def _shard(args: argparse.Namespace) -> int:
    from metapl.commands.shard import default_workers, write_shards

    write_shards(
        args.source,
        args.out,
        shard_size=args.shard_size,
        shuffle=not args.no_shuffle,
        seed=args.seed,
        progress=not args.no_progress,
        announce=lambda line: print(line, flush=True),
        workers=default_workers() if args.workers is None else args.workers,
        buffer=args.shuffle_buffer,
        skip_bad=args.skip_bad,
    )
    return 0


def _fmt(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


_COMMANDS = {
    "train": _train,
    "plot": _plot,
    "demo": _demo,
    "presets": _presets,
    "config": _config,
    "eval": _eval,
    "predict": _predict,
    "export": _export,
    "label": _label,
    "shard": _shard,
}

if __name__ == "__main__":
    sys.exit(main())
