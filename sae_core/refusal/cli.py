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
    from .study import StudyConfig

    alphas = [float(a) for a in args.alphas.split(",")] if args.alphas else None
    return StudyConfig(
        harmful=args.harmful, harmless=args.harmless, sites=args.sites.split(",") if args.sites else None,
        steer_site=args.steer_site, top=args.top, k=args.k, **({"alphas": alphas} if alphas else {}),
        steer_prompts=args.steer_prompts, positions=args.positions, max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size, judge_model=args.judge_model, judge_label=args.judge_label, seed=args.seed,
    )


def _find(args: argparse.Namespace) -> int:
    from .results import refusal_dir
    from .study import run_find

    results = run_find(args.run, _config(args), device=args.device)
    top = results.contrasts["prompt"][results.steer_site].features.head(5)
    print(f"top refusal features at {results.steer_site} (prompt contrast): "
          + ", ".join(f"#{int(r.feature)} (Δ {r.diff:.2f}, d {r.effect:.2f})" for r in top.itertuples()))
    print(f"saved to {refusal_dir(args.run)}")
    return 0


def _steer(args: argparse.Namespace) -> int:
    from .results import REPORT_MD, refusal_dir
    from .study import run_steer

    run_steer(args.run, _config(args), device=args.device)
    print(f"report: {refusal_dir(args.run) / REPORT_MD} (and report.html)")
    return 0


def _study(args: argparse.Namespace) -> int:
    from .results import REPORT_MD, refusal_dir
    from .study import run_study

    run_study(args.run, _config(args), device=args.device)
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
        s.add_argument("--harmful", help="requests to refuse (default: data/refusal/harmful.jsonl, 240 prompts)")
        s.add_argument("--harmless", help="harmless requests (default: data/refusal/harmless.jsonl, 240 prompts)")
        s.add_argument("--sites", help="SAEs to search, e.g. L12R,L14R (default: every residual-stream SAE)")
        s.add_argument("--steer-site", help="SAE to steer with (default: the searched one nearest the middle layer)")
        s.add_argument("--top", type=int, default=50, help="features kept in each ranking (default: 50)")
        s.add_argument("--k", type=int, default=3, help="features combined in the top-k method (default: 3)")
        s.add_argument("--alphas", help="steering strengths in units of the median residual norm (default: 0.05,0.1,0.2,0.4)")
        s.add_argument("--steer-prompts", type=int, default=32, help="held-out harmless prompts per strength (default: 32)")
        s.add_argument("--positions", type=int, help="read the last N prompt tokens (default: the assistant-start tokens)")
        s.add_argument("--max-new-tokens", type=int, default=32, help="answer length limit (default: 32)")
        s.add_argument("--batch-size", type=int, default=64, help="prompts per generation batch (default: 64)")
        s.add_argument("--judge-model", help="a text-classification model to judge refusals instead of the phrase list")
        s.add_argument("--judge-label", default="REJECTION", help="the judge model's refusal label (default: REJECTION)")
        s.add_argument("--seed", type=int, default=0, help="picks the steered subset of harmless prompts (default: 0)")
        s.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
