"""`sae-explorer refusal find | steer | study | report`: the refusal case study from the command line."""

from __future__ import annotations

import argparse
import sys

from ..errors import UserError

_EPILOG = """\
examples:
  sae-explorer refusal study runs/demo                       # the whole study, shipped prompt sets
  sae-explorer refusal find runs/qwen3 --sites L12R,L14R,L16R --harmful mine.csv --harmless ok.jsonl
  sae-explorer refusal steer runs/qwen3 --steer-site L14R --alphas 0.5,1,2,4 --steer-prompts 100

Prompt files: .jsonl with a "prompt" field, .csv with a "prompt" column, or .txt with one prompt per line;
an optional "split" field ("discovery" / "heldout") says which half a prompt is in, else they alternate.
Results, answers and report.md / report.html go to RUN/refusal/.
"""


def _config(args: argparse.Namespace):
    from ..options import config_from_args
    from .study import StudyConfig

    return config_from_args(args, StudyConfig)


def _device(args: argparse.Namespace) -> str:
    from ..options import DeviceOptions, config_from_args

    return config_from_args(args, DeviceOptions).device


def _find(args: argparse.Namespace) -> int:
    from .results import refusal_dir
    from .study import run_find

    results = run_find(args.run, _config(args), device=_device(args))
    top = results.contrasts["prompt"][results.steer_site].features.head(5)
    print(f"top refusal features at {results.steer_site} (prompt contrast): "
          + ", ".join(f"#{int(r.feature)} (Δ {r.diff:.2f}, d {r.effect:.2f})" for r in top.itertuples()))
    print(f"saved to {refusal_dir(args.run)}")
    return 0


def _steer(args: argparse.Namespace) -> int:
    from .results import REPORT_MD, refusal_dir
    from .study import run_steer

    run_steer(args.run, _config(args), device=_device(args))
    print(f"report: {refusal_dir(args.run) / REPORT_MD} (and report.html)")
    return 0


def _study(args: argparse.Namespace) -> int:
    from .results import REPORT_MD, refusal_dir
    from .study import run_study

    run_study(args.run, _config(args), device=_device(args))
    print(f"report: {refusal_dir(args.run) / REPORT_MD} (and report.html)")
    return 0


def _report(args: argparse.Namespace) -> int:

    from .annotate import write_refusal_annotations
    from .report import write_report
    from .results import FEATURES_FILE, RefusalResults, refusal_dir

    folder = refusal_dir(args.run)
    if not (folder / FEATURES_FILE).is_file():
        raise UserError(f"no refusal study in {folder}; run `sae-explorer refusal study {args.run}` first")
    results = RefusalResults.load(folder)
    md, html = write_report(folder, results, args.run)
    annotations = write_refusal_annotations(args.run)
    print(f"report: {md} and {html}; annotations for the app: {annotations}", file=sys.stderr)
    return 0


def add_refusal_parser(sub: argparse._SubParsersAction) -> None:
    """The `refusal` command and its four subcommands."""
    from ..options import DeviceOptions, add_config_arguments
    from .study import StudyConfig

    p = sub.add_parser(
        "refusal",
        help="find refusal features, steer the model with them, and measure it (the paper's case study)",
        description="The refusal case study on any instruct model: rank SAE features that separate harmful from "
        "harmless requests (and the model's refusing from its complying answers), steer held-out harmless prompts "
        "toward refusal with them and ablate them on harmful prompts, and compare with the difference-of-means "
        "direction at matched norm. Refusal rate by a documented phrase judge (or a classifier you name), coherence "
        "by perplexity under the unsteered model.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    stages = p.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, func, help_text in (
        ("study", _study, "find, then steer and measure, then write the report (one model load)"),
        ("find", _find, "rank refusal features and difference-of-means directions on the discovery prompts"),
        ("steer", _steer, "steer and ablate with the features `find` saved, measure, and write the report"),
        ("report", _report, "write report.md / report.html again from saved results"),
    ):
        s = stages.add_parser(name, help=help_text, description=help_text, epilog=_EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
        s.add_argument("run", help="run folder with SAEs of an instruct model, e.g. runs/demo")
        s.set_defaults(func=func)
        if name == "report":
            continue
        add_config_arguments(s, StudyConfig, DeviceOptions)
