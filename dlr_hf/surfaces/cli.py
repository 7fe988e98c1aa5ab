"""``dlr-hf evaluate``: D_LR of Hub or local checkpoints from the shell.

With no model it runs the built-in demo (a rich and a lazy checkpoint on the digits data, built
offline on first use, measured against their initial checkpoint). Also runs under several processes
(``accelerate launch --multi_gpu [--cpu] --num_processes N -m dlr_hf evaluate ...`` or
``python -m torch.distributed.run --nproc_per_node N -m dlr_hf evaluate ...``): every process
computes, the main process prints and writes files.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from accelerate import Accelerator

from dlr_hf.engine import (
    CLI,
    MeasurementOptions,
    check_writable,
    ensure_demo,
    evaluate,
    make_accelerator,
    require_existing,
    write_atomic,
)
from dlr_hf.engine.report import MANY_SCHEMA, EvaluationReport
from dlr_hf.errors import DLRError, InvalidArgumentError

log = logging.getLogger("dlr_hf.cli")

REFERENCE_FIRST = "first"
"""``--reference first``: the first MODEL is the initial checkpoint of the others (checkpoints of one run)."""
CLI_HELP = {"reference": f"; {REFERENCE_FIRST!r} = the first MODEL (checkpoints of one run: it is the initial one)"}
"""What a flag means on the CLI beyond its ``MeasurementOptions`` help."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument as the CLI's one error line (no usage block)."""

    def error(self, message: str) -> NoReturn:
        raise InvalidArgumentError(f"{message} (see {self.prog} --help)")


def _checked(validate: Callable[[Any], Any], parse: Callable[[str], Any] = int) -> Callable[[str], Any]:
    """An argparse ``type=``: parse the text, then the engine's own check (one message on every surface)."""

    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text[:40]!r}") from None
        try:
            return validate(value)
        except InvalidArgumentError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = validate.__name__
    return convert


def _add_options(parser: argparse.ArgumentParser) -> None:
    """One flag per ``MeasurementOptions`` field offered on the CLI (``--num-samples`` for num_samples)."""
    defaults = MeasurementOptions()
    for name in MeasurementOptions.on(CLI):
        spec = MeasurementOptions.spec(name)
        default = getattr(defaults, name)
        if isinstance(default, bool):  # on by default: a --no-NAME flag turns it off
            parser.add_argument(f"--no-{name.replace('_', '-')}", dest=name, action="store_false",
                                help=f"leave out {spec['help']}")
            continue
        shown = f" (default {default})" if default is not None else ""
        kind = {"choices": spec["choices"]} if spec["choices"] else {"type": _checked(spec["validate"], spec["parse"] or str)}
        parser.add_argument(f"--{name.replace('_', '-')}", default=default, help=spec["help"] + CLI_HELP.get(name, "") + shown,
                            **kind)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dlr-hf", description="D_LR: how rich (0) or lazy (1) a network's learning was. "
                     "Command: evaluate (dlr-hf evaluate --help).")
    commands = parser.add_subparsers(dest="command", metavar="evaluate")
    ev = commands.add_parser("evaluate", help="measure D_LR of one or more checkpoints on a dataset")
    ev.add_argument("models", nargs="*", metavar="MODEL", help="Hub id (ORG/NAME) or local folder; none = the built-in demo")
    ev.add_argument("--dataset", help="Hub id, local folder or data file (default with no MODEL: the demo's digits)")
    ev.add_argument("--dataset-config", help="dataset configuration name")
    ev.add_argument("--split", help="split (default: test, else validation, else train)")
    ev.add_argument("--revision", help="model revision (branch, tag or commit)")
    ev.add_argument("--dataset-revision", help="dataset revision")
    _add_options(ev)
    ev.add_argument("--input-column", action="append", dest="input_columns", help="input column (twice for text pairs)")
    ev.add_argument("--label-column", help="label column (default: detected)")
    ev.add_argument("--device-map", choices=["auto"], help="spread a model larger than one device (single process)")
    ev.add_argument("--output", type=Path, help="write the JSON report here (one model: a report; several: "
                    "{\"schema\": ..., \"reports\": [...]}; fields in docs/report-schema.md)")
    ev.add_argument("--plot", type=Path, help="write a PNG of the spectrum, U(k), Q(k) and π_k here (with --layers: "
                    "also the profile across depth, beside it as NAME-layers.EXT)")
    ev.add_argument("--trust-remote-code", action="store_true", help="allow custom model code from the Hub (review it first)")
    ev.add_argument("--allow-pickle", action="store_true",
                    help="load Hub checkpoints that ship only pickle weights (pickle can run code; local folders always load)")
    ev.add_argument("--quiet", action="store_true", help="no progress bars (forward passes, weight loading, data)")
    return parser


def _targets(args: argparse.Namespace) -> tuple[list[tuple[str, str, str | None]], str]:
    """(label, model, reference) triples and the dataset; the demo fills in what was left out.

    ``--reference first`` measures the first MODEL on its own (it is the initial checkpoint) and
    every later one against it.
    """
    first = args.reference == REFERENCE_FIRST
    for what, name in [*(("model folder", model) for model in args.models), ("dataset path", args.dataset),
                       ("reference folder", None if first else args.reference)]:
        if name:
            require_existing(name, what)
    if args.models:
        if not args.dataset:
            raise DLRError("--dataset is required when a MODEL is given (e.g. --dataset stanfordnlp/imdb)")
        if first and len(args.models) < 2:
            raise InvalidArgumentError("--reference first needs at least two MODELs: the initial checkpoint, then the trained ones")
        if first:
            initial = args.models[0]
            return [(initial, initial, None), *((model, model, initial) for model in args.models[1:])], args.dataset
        return [(model, model, args.reference) for model in args.models], args.dataset
    print("No model given: running the built-in demo (rich vs lazy ViT on the digits data, against their initial "
          "checkpoint).", file=sys.stderr)
    demo = ensure_demo(progress=not args.quiet)
    reference = str(demo["initial"]) if args.reference in (None, REFERENCE_FIRST) else args.reference
    return ([("demo rich", str(demo["rich"]), reference), ("demo lazy", str(demo["lazy"]), reference)],
            args.dataset or str(demo["data"]))


def _check_outputs(args: argparse.Namespace) -> None:
    """--output and --plot must be writable (and the plot's format known) before minutes of measuring."""
    if args.output:
        check_writable(args.output, "--output")
    if args.plot:
        from matplotlib.backend_bases import FigureCanvasBase

        formats = FigureCanvasBase.get_supported_filetypes()
        if args.plot.suffix.lower().lstrip(".") not in formats:
            raise InvalidArgumentError(
                f"--plot {args.plot}: unknown image format {args.plot.suffix or '(none)'}; end the name with one of "
                + ", ".join(f".{name}" for name in sorted(formats))
            )
        check_writable(args.plot, "--plot")
        if args.layers:
            check_writable(profile_plot_path(args.plot), "--plot (profile)")


def run_evaluate(args: argparse.Namespace) -> int:
    _check_outputs(args)
    targets, dataset = _targets(args)
    options = MeasurementOptions.from_mapping({**vars(args), "reference": None})
    accelerator = make_accelerator(options.precision)
    warn_if_fewer_processes(accelerator)
    reports = []
    for label, model, reference in targets:
        report = evaluate(
            model,
            dataset,
            revision=args.revision,
            dataset_config=args.dataset_config,
            split=args.split,
            dataset_revision=args.dataset_revision,
            input_columns=args.input_columns,
            label_column=args.label_column,
            device_map=args.device_map,
            trust_remote_code=args.trust_remote_code,
            safetensors_only=not args.allow_pickle,
            options=options.with_changes(reference=reference),
            accelerator=accelerator,
            progress=not args.quiet,
        )
        reports.append((label, report))
        if accelerator.is_main_process:
            print(report.summary() + "\n")
    if not accelerator.is_main_process:
        return 0
    if args.output:
        write_atomic(args.output, json.dumps(json_document([report for _, report in reports]), indent=2) + "\n")
        print(f"report written to {args.output}")
    if args.plot:
        _write_plots(args.plot, reports)
    return 0


def json_document(reports: list[EvaluationReport]) -> dict[str, Any]:
    """One model: its report (top-level ``dlr``); several: ``{"schema": MANY_SCHEMA, "reports": [...]}``."""
    if len(reports) == 1:
        return reports[0].to_dict()
    return {"schema": MANY_SCHEMA, "reports": [report.to_dict() for report in reports]}


def warn_if_fewer_processes(accelerator: Accelerator) -> None:
    """Warn when a launcher asked for several processes and this one runs alone.

    ``accelerate launch --cpu --num_processes N`` (accelerate 1.15) starts ONE process: it sets
    MASTER_ADDR for N but no WORLD_SIZE; ``ACCELERATE_NUM_PROCESSES`` may also state N.
    """
    if accelerator.num_processes > 1:
        return
    asked = os.environ.get("ACCELERATE_NUM_PROCESSES", "")
    launched_alone = "ACCELERATE_MIXED_PRECISION" in os.environ and "MASTER_ADDR" in os.environ and "WORLD_SIZE" not in os.environ
    if (asked.isdigit() and int(asked) > 1) or launched_alone:
        wanted = asked if asked.isdigit() and int(asked) > 1 else "several"
        log.warning(
            "the launch asked for %s processes but this is the only one (accelerate launch --cpu --num_processes N "
            "starts a single process); for N CPU processes use accelerate launch --multi_gpu --cpu --num_processes N, "
            "or python -m torch.distributed.run --nproc_per_node N -m dlr_hf evaluate ...", wanted,
        )


def profile_plot_path(plot: Path) -> Path:
    """Where ``--plot`` puts the profile across depth: beside the visualisations, NAME-layers.EXT."""
    return plot.with_name(f"{plot.stem}-layers{plot.suffix}")


def _write_plots(plot: Path, reports: list[tuple[str, Any]]) -> None:
    """The SPEC §3 visualisations at ``plot``; with a profile, D_LR across depth (every model overlaid) beside it."""
    from dlr_hf.surfaces.plots import profile_figure, save_figure, visualisation_figure

    labels = [label for label, _ in reports]
    figures = [(plot, visualisation_figure([r.result for _, r in reports], labels, plot_title([r for _, r in reports])))]
    if any(report.layers for _, report in reports):
        title = plot_title([r for _, r in reports], across_depth=True)
        profile = profile_figure([r.layers for _, r in reports], labels, [r.dlr for _, r in reports], title)
        figures.append((profile_plot_path(plot), profile))
    for path, figure in figures:
        save_figure(figure, path)
        print(f"plot written to {path}")


def plot_title(reports: list[EvaluationReport], across_depth: bool = False) -> str:
    """What a plot shows: the model(s), the dataset and its split, the measured layer (or head)."""
    models = ", ".join(dict.fromkeys(Path(str(r.model.get("id"))).name or str(r.model.get("id")) for r in reports))
    first = reports[0]
    dataset = Path(str(first.dataset.get("id"))).name + (f" [{first.dataset['split']}]" if first.dataset.get("split") else "")
    where = "layers across depth" if across_depth else ("layer " if first.head.get("layer") else "head ") + first.site
    return f"{models} · {dataset} · {where} (n = {first.result.num_samples})"


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            raise InvalidArgumentError("no command given: use dlr-hf evaluate [MODEL ...] --dataset DATA "
                                       "(no MODEL: the built-in demo); see dlr-hf evaluate --help")
        return run_evaluate(args)
    except DLRError as error:
        print(f"dlr-hf: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dlr-hf: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
