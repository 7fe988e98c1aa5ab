"""``dlr-hf evaluate``: D_LR of Hub or local checkpoints from the shell.

With no model it runs the built-in demo (a rich and a lazy checkpoint on the digits data, built
offline on first use). Also runs under ``accelerate launch -m dlr_hf evaluate ...``: every process
computes, the main process prints and writes files.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from dlr_hf.errors import DLRError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dlr-hf", description="D_LR: how rich (0) or lazy (1) a network's learning was.")
    commands = parser.add_subparsers(dest="command", required=True)
    ev = commands.add_parser("evaluate", help="measure D_LR of one or more checkpoints on a dataset")
    ev.add_argument("models", nargs="*", metavar="MODEL", help="Hub id (ORG/NAME) or local folder; none = the built-in demo")
    ev.add_argument("--dataset", help="Hub id, local folder or data file (default with no MODEL: the demo's digits)")
    ev.add_argument("--dataset-config", help="dataset configuration name")
    ev.add_argument("--split", help="split (default: test, else validation, else train)")
    ev.add_argument("--revision", help="model revision (branch, tag or commit)")
    ev.add_argument("--dataset-revision", help="dataset revision")
    ev.add_argument("--num-samples", type=int, default=1000, help="examples drawn from the split (default 1000; 0 = all)")
    ev.add_argument("--batch-size", type=int, default=32)
    ev.add_argument("--seed", type=int, default=0, help="seed of the example subsample")
    ev.add_argument("--layer", help="layer-wise D_LR: module path of any nn.Linear (its input are the features)")
    ev.add_argument("--input-column", action="append", dest="input_columns", help="input column (twice for text pairs)")
    ev.add_argument("--label-column", help="label column (default: detected)")
    ev.add_argument("--reference", help="initial checkpoint, for S_init and the parameter change")
    ev.add_argument("--device-map", choices=["auto"], help="spread a model larger than one device (single process)")
    ev.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    ev.add_argument("--rtol", type=float, default=1e-6, help="relative singular-value tolerance of ranks")
    ev.add_argument("--output", type=Path, help="write the JSON report here")
    ev.add_argument("--plot", type=Path, help="write a PNG of the spectrum, U(k), Q(k) and π_k here")
    ev.add_argument("--trust-remote-code", action="store_true", help="allow custom model code from the Hub (review it first)")
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _targets(args: argparse.Namespace) -> tuple[list[tuple[str, str]], str]:
    """(label, model) pairs and the dataset; the demo fills in what was left out."""
    if args.models:
        if not args.dataset:
            raise DLRError("--dataset is required when a MODEL is given (e.g. --dataset stanfordnlp/imdb)")
        return [(model, model) for model in args.models], args.dataset
    from dlr_hf.engine import ensure_demo

    print("No model given: running the built-in demo (rich vs lazy ViT on the digits data).", file=sys.stderr)
    demo = ensure_demo()
    return [("demo rich", str(demo["rich"])), ("demo lazy", str(demo["lazy"]))], args.dataset or str(demo["data"])


def run_evaluate(args: argparse.Namespace) -> int:
    from dlr_hf.engine import evaluate
    from dlr_hf.engine.stream import make_accelerator

    accelerator = make_accelerator(args.precision)
    targets, dataset = _targets(args)
    reports = []
    for label, model in targets:
        report = evaluate(
            model,
            dataset,
            revision=args.revision,
            dataset_config=args.dataset_config,
            split=args.split,
            dataset_revision=args.dataset_revision,
            input_columns=args.input_columns,
            label_column=args.label_column,
            num_samples=args.num_samples or None,
            batch_size=args.batch_size,
            seed=args.seed,
            layer=args.layer,
            precision=args.precision,
            device_map=args.device_map,
            trust_remote_code=args.trust_remote_code,
            reference_model=args.reference,
            rtol=args.rtol,
            accelerator=accelerator,
            progress=not args.quiet,
        )
        reports.append((label, report))
        if accelerator.is_main_process:
            print(report.summary() + "\n")
    if not accelerator.is_main_process:
        return 0
    if args.output:
        documents = [report.to_dict() for _, report in reports]
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(documents[0] if len(documents) == 1 else documents, indent=2) + "\n")
        print(f"report written to {args.output}")
    if args.plot:
        from dlr_hf.surfaces.plots import visualisation_figure

        figure = visualisation_figure([r.result for _, r in reports], [label for label, _ in reports])
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(args.plot, dpi=110)
        print(f"plot written to {args.plot}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return run_evaluate(args)
    except DLRError as error:
        print(f"dlr-hf: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dlr-hf: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
