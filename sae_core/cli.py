"""The `sae-explorer` command: train, evaluate, precompute, explain and browse SAEs; cache activations; list sites."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError
from .options import option

_EPILOG_TRAIN = """\
examples:
  sae-explorer train --sites L15R --tokens 2M --out runs/smol-l15
  sae-explorer train --model Qwen/Qwen3-1.7B --sites L*R,L*M,L*A --arch topk --k 64 --expansion 16 \\
                     --tokens 50M --corpus my_chats.jsonl --out runs/qwen3-1.7b
  sae-explorer train --config configs/demo.yaml --out runs/demo
  sae-explorer train --config configs/paper/qwen3-1.7b.yaml --dry-run --ranks 8

on several processes or GPUs (torchrun; see README "Scaling out"):
  torchrun --nproc_per_node 8 -m sae_core.cli train --config configs/paper/qwen3-1.7b.yaml --parallel sites
  torchrun --nproc_per_node 2 -m sae_core.cli train --sites L15R --expansion 64 --parallel data --out runs/wide

A killed run resumes from its last checkpoint when the same command is run again, on any number of ranks.
"""


_EPILOG_EXPLAIN = """\
examples:
  sae-explorer explain runs/demo --features 20                  # 20 features per SAE, spread over density
  sae-explorer explain runs/demo --saes L14R --features 12,40,77
  sae-explorer explain runs/demo --explainer-url http://127.0.0.1:8000/v1 --explainer Qwen/Qwen3-8B --features all
  sae-explorer explain runs/demo --explainer ~/models/qwen3-1.7b --device cuda
  torchrun --nproc_per_node 4 -m sae_core.cli explain runs/big --features all --device cuda

A local explainer is the embedded SmolLM2-135M-Instruct unless --explainer names another; it writes weak
explanations (see docs/explanations.md): point --explainer-url at a larger model served by vLLM, llama.cpp's
server or Ollama for useful ones. The scorer is the explainer unless --scorer / --scorer-url say otherwise.
"""


def _train(args: argparse.Namespace) -> int:
    from .evaluation.evaluate_run import evaluate_run, read_metrics
    from .evaluation.metrics_table import metrics_table
    from .options import config_from_args
    from .parallel import init_parallel
    from .training import TrainConfig, train

    cfg: TrainConfig = config_from_args(args, TrainConfig)
    if args.dry_run:
        from .training.plan import plan_training

        print(plan_training(cfg, args.ranks).describe())
        return 0
    run = train(cfg, stop_after_tokens=args.stop_after)
    par, device = init_parallel(cfg.device)  # the job train() joined (a single process: no job)
    if run.read().get("status") != "complete":  # type: ignore[union-attr]
        if par.main:
            print(f"stopped early; run the same command again to resume {run.path}", file=sys.stderr)
        return 0
    if cfg.eval:
        evaluate_run(str(run.path), device=device, par=par, mode=cfg.parallel)
        par.barrier()
        if par.main:
            print(metrics_table(read_metrics(str(run.path))))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .evaluation.evaluate_run import EvalOptions, evaluate_run
    from .evaluation.metrics_table import metrics_table
    from .options import config_from_args
    from .parallel import init_parallel

    options: EvalOptions = config_from_args(args, EvalOptions)
    par, device = init_parallel(options.device)  # under torchrun, the ranks share the batches
    metrics = evaluate_run(args.run, eval_tokens=options.tokens or None, ce_tokens=options.ce_tokens,
                           corpus=options.corpus, device=device, par=par)
    if par.main:
        print(metrics_table(metrics))
    return 0


def _precompute(args: argparse.Namespace) -> int:
    from .features.precompute import PrecomputeOptions, precompute_run
    from .options import config_from_args

    precompute_run(args.run, config_from_args(args, PrecomputeOptions))
    return 0


def _import(args: argparse.Namespace) -> int:
    from .devices import resolve_device
    from .features.precompute import PrecomputeOptions, precompute_run
    from .model.load import load_model
    from .options import config_from_args
    from .runs.import_saes import ImportOptions, import_saes

    options: ImportOptions = config_from_args(args, ImportOptions)
    precompute_options: PrecomputeOptions = config_from_args(args, PrecomputeOptions)  # checked before any work
    loaded = load_model(options.model, device=resolve_device(precompute_options.device))
    run = import_saes(args.sae_folders, options.out, loaded, model=options.model, corpus=precompute_options.corpus,
                      overwrite=options.overwrite, outlier_factor=options.outlier_factor,
                      log=lambda m: print(m, file=sys.stderr))
    if options.eval:
        from .evaluation.evaluate_run import evaluate_run
        from .evaluation.metrics_table import metrics_table

        print(metrics_table(evaluate_run(str(run.path), corpus=precompute_options.corpus, loaded=loaded)))
    if options.precompute:
        precompute_run(run.path, precompute_options, loaded=loaded)
    return 0


def _import_stats(args: argparse.Namespace) -> int:
    from .features.release_stats import ReleaseStatsOptions, import_release_stats, parse_columns, release_files
    from .options import config_from_args

    options: ReleaseStatsOptions = config_from_args(args, ReleaseStatsOptions)
    files = release_files(args.source, options.metrics, options.prompts)
    columns = parse_columns(options.columns)
    done = import_release_stats(args.run, options.sae, files, options.origin or args.source, columns=columns,
                                log=lambda m: print(m, file=sys.stderr))
    print(f"{args.run}: {done.sae} now holds {done.features:,} feature rows and {done.examples:,} top prompts from "
          f"{done.origin} (shown on each feature's page beside this run's own statistics)")
    return 0


def _circuit(args: argparse.Namespace) -> int:
    import time

    from .circuits.graph import CircuitOptions, CircuitRequest, find_circuit
    from .circuits.means import run_means
    from .devices import resolve_device
    from .features.parts import store_path, store_stamp
    from .features.reader import FeatureStore
    from .interventions.attribution import Target, token_id, top_predictions
    from .interventions.prompt_activations import tokenize_prompt
    from .io import write_json
    from .options import config_from_args
    from .runs.open_run import open_run_saes

    options: CircuitOptions = config_from_args(args, CircuitOptions)
    request: CircuitRequest = config_from_args(args, CircuitRequest)
    opened = open_run_saes(args.run, device=resolve_device(request.device))
    loaded = opened.loaded
    prompt = tokenize_prompt(loaded, request.prompt, chat=request.chat)
    position = request.position if request.position >= 0 else len(prompt.ids) + request.position
    if not 0 <= position < len(prompt.ids):
        raise UserError(f"--position {request.position} is outside the prompt's {len(prompt.ids)} tokens")
    token = token_id(loaded.tokenizer, request.target) if request.target else top_predictions(loaded, prompt, position, 1)[0][0]
    target = Target(position, token, token_id(loaded.tokenizer, request.minus) if request.minus else None)
    means = run_means(opened, opened.saes, options.mean_tokens) if options.ablate_to == "mean" else None
    store = FeatureStore(args.run) if store_stamp(store_path(args.run)) else None
    try:
        graph = find_circuit(loaded, opened.saes, prompt, target, options, means=means,
                             labels=store.describe if store is not None else None)
    finally:
        if store is not None:
            store.close()
    out = Path(request.out) if request.out else opened.run.path / "circuits" / f"circuit-{time.strftime('%Y%m%d-%H%M%S')}.json"
    write_json(out, graph)
    shown = prompt.tokens[position]
    metric = f"logit({loaded.tokenizer.decode([token])!r})" + (f" − logit({request.minus!r})" if request.minus else "")
    print(f"{metric} after {shown!r} (position {position}) = {graph['metric']:.4f}; {len(graph['nodes'])} nodes, "
          f"{len(graph['edges'])} edges → {out}")
    print(f"{'nodes':>6}  {'faithfulness':>12}  {'completeness':>12}")
    for point in graph["curve"]:
        print(f"{point['nodes']:>6}  {point['faithfulness']:>12.3f}  {point['completeness']:>12.3f}")
    for node in graph["nodes"][:10]:
        what = "error" if node["error"] else f"#{node['feature']} {node['label'] or ''}"
        print(f"  {node['effect']:+.4f}  {node['site']:<5} {node['token']!r:<12} {what}")
    return 0


def _explain(args: argparse.Namespace) -> int:
    from .interp.config import ExplainConfig
    from .interp.explain import explain_run
    from .options import config_from_args

    summary = explain_run(args.run, config_from_args(args, ExplainConfig))
    if summary.means:
        print(f"explained {summary.explained} feature(s) with {summary.explainer}, scored by {summary.scorer} "
              "(balanced accuracy / AUROC; 0.5 = chance):")
        print(summary.table())
    return 0


def _embed(args: argparse.Namespace) -> int:
    from .devices import resolve_device
    from .features.embed import EmbedOptions, embed_run
    from .model.sentence_embedder import load_embedder
    from .options import config_from_args

    options: EmbedOptions = config_from_args(args, EmbedOptions)
    embedder = load_embedder(options.embedder, device=resolve_device(options.device))
    embed_run(args.run, embedder, n_examples=options.examples, half_width=options.window, batch_size=options.batch_size,
              log=lambda m: print(m, file=sys.stderr))
    return 0


def _upgrade(args: argparse.Namespace) -> int:
    from .features.amend import upgrade

    old, new = upgrade(args.run)
    print(f"{args.run}: schema version {old}" + (f" → {new}" if old != new else " is current; nothing to do"))
    return 0


def _index(args: argparse.Namespace) -> int:
    import time

    from .features.amend import feature_file
    from .features.ann_index import build_vector_index, faiss_available, vector_index_info
    from .features.search_index import build_search_index, fts5_available, search_index_info

    if not fts5_available():
        raise UserError("this Python's SQLite lacks FTS5's trigram tokenizer (SQLite >= 3.34 needed); searches will scan")
    db = feature_file(args.run)
    start = time.perf_counter()
    path = build_search_index(db)
    rows = ", ".join(f"{n:,} {table}" for table, n in search_index_info(path).items())
    print(f"{path}: {rows}; {path.stat().st_size / 2**20:,.1f} MiB, built in {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    path = build_vector_index(db)
    info = vector_index_info(path)
    ann = (f"IVF-PQ over {info['nlist']:,} lists" if "nlist" in info else
           "no IVF-PQ index (faiss-cpu is not installed)" if not faiss_available() and info["rows"] else "searched exactly")
    print(f"{path}: {info['rows']:,} vectors, {ann}; {info['bytes'] / 2**20:,.1f} MiB, built in {time.perf_counter() - start:.1f} s")
    return 0


@dataclass(frozen=True)
class ExportFormat:
    """Which export `sae-explorer export` writes."""

    format: str = option("parquet", "parquet: every table, for other engines; neuronpedia: the dashboards Neuronpedia "
                         "imports (the options below)", choices=("parquet", "neuronpedia"))


def _export(args: argparse.Namespace) -> int:
    from .features.amend import feature_file
    from .features.export_neuronpedia import NeuronpediaOptions, export_neuronpedia
    from .features.export_parquet import export_parquet
    from .options import config_from_args

    db = feature_file(args.run)
    try:
        if config_from_args(args, ExportFormat).format == "neuronpedia":
            run_name = db.resolve().parent.name  # RUN/features.duckdb or RUN/features/
            counts = export_neuronpedia(db, args.out, config_from_args(args, NeuronpediaOptions), run_name)
            print(f"{args.out}: Neuronpedia export of {counts['sources']} source(s): {counts['features']:,} features, "
                  f"{counts['activations']:,} activations, {counts['explanations']:,} explanations")
            return 0
        rows = export_parquet(db, args.out)
    except FileExistsError as e:
        raise UserError(str(e)) from None
    print(f"{args.out}: " + ", ".join(f"{n:,} {table}" for table, n in rows.items() if n) + "; columns in schema.json")
    return 0


def _split(args: argparse.Namespace) -> int:
    from .features.amend import feature_file
    from .features.parts import part_files
    from .features.split import split_feature_file

    db = feature_file(args.run)
    if db.is_dir():
        raise UserError(f"{db} is split already ({len(part_files(db))} files)")
    folder = split_feature_file(db)
    size = sum(p.stat().st_size for p in part_files(folder))
    print(f"{folder}: {len(part_files(folder))} feature files, {size / 2**20:,.1f} MiB; {db.name} removed")
    return 0


def _features_command(sub: Any, name: str, func: Callable[[argparse.Namespace], int], **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand that works on a run's features (its one argument: the run folder or feature file)."""
    p = sub.add_parser(name, **kwargs)
    p.add_argument("run", help="run folder, its features.duckdb, or its features/ folder of per-SAE files")
    p.set_defaults(func=func)
    return p


def _app(args: argparse.Namespace) -> int:
    import signal
    import subprocess
    from dataclasses import asdict

    from .features.parts import store_path, store_stamp
    from .options import config_from_args
    from .runs.run_folder import RunDir
    from .serving.catalog import RunCatalog
    from .serving.settings import AUTH_ENV, AppOptions, ServeLimits, ServeSettings, is_loopback

    options: AppOptions = config_from_args(args, AppOptions)
    limits: ServeLimits = config_from_args(args, ServeLimits)

    runs = {}
    for given in args.runs:
        run = RunDir(given)
        run.require()
        name = run.path.resolve().name
        if name in runs:
            raise UserError(f"two runs are called {name!r} ({runs[name]} and {given}); rename one folder")
        runs[name] = str(run.path.resolve())
        if not store_stamp(store_path(run.path)):
            print(f"note: {given} has no feature file yet; the Features page needs `sae-explorer precompute {given}`",
                  file=sys.stderr)
    runs_dir = options.runs_dir or (None if runs else "runs")
    if runs_dir is not None and not Path(runs_dir).is_dir():
        raise UserError(f"--runs-dir {runs_dir} is not a folder" if options.runs_dir else
                        "name the runs to serve (`sae-explorer app runs/demo`) or a folder of runs (--runs-dir); "
                        "there is no ./runs here (`make demo` makes one)")
    token = options.auth_token or os.environ.get(AUTH_ENV) or None
    if not is_loopback(options.host):
        if not token and not options.no_auth:
            raise UserError(f"--host {options.host} lets other machines reach the app: give --auth-token TOKEN (or set "
                            f"{AUTH_ENV}), or pass --no-auth to serve without one on purpose")
        print(f"warning: serving on {options.host}, reachable from other machines"
              + (" WITHOUT an access token (--no-auth)" if not token else "; visitors need the access token")
              + "; put it behind a TLS reverse proxy (docs/serving.md)", file=sys.stderr)
    settings = ServeSettings(**{
        **asdict(limits), "runs": runs, "runs_dir": str(Path(runs_dir).resolve()) if runs_dir else None,
        "model_threads": limits.model_threads or max(1, (os.cpu_count() or 2) - 1),
    })
    served = RunCatalog(settings.runs, settings.runs_dir).names()
    spec = importlib.util.find_spec("explorer")
    script = Path(spec.origin).parent / "app.py" if spec and spec.origin else None
    if script is None or not script.is_file():
        raise UserError("the app is not installed with this package (explorer/app.py is missing); reinstall "
                        "sae-explorer (`pip install sae-explorer`, or `pip install -e .` in a checkout)")
    url = f"http://{options.host}:{options.port}" + (f"/?token={token}" if token else "")
    print(f"SAE Explorer on {url} serving {len(served)} run(s): {', '.join(served[:8])}"
          + (" …" if len(served) > 8 else "") + "; Ctrl-C stops it", file=sys.stderr, flush=True)
    env = {k: v for k, v in os.environ.items() if k != AUTH_ENV}
    env.update(settings.to_env())
    if token:
        env[AUTH_ENV] = token
    command = [sys.executable, "-m", "streamlit", "run", str(script), "--server.address", options.host,
               "--server.port", str(options.port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
               "--server.enableXsrfProtection", "true", "--server.enableCORS", "true", "--server.fileWatcherType", "none",
               "--client.toolbarMode", "minimal", "--client.showErrorDetails", "none", "--server.maxUploadSize", "1",
               # a full garbage collection after every page run costs ~0.1 s in a process holding torch and a model
               "--runner.postScriptGC", "false"]
    proc = subprocess.Popen(command, env=env, cwd=script.parent)
    # stopping this command (SIGTERM, as test harnesses and process managers do) stops the server with it
    signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:  # Ctrl-C reached the server too; wait for it to shut down
            continue


def _cache(args: argparse.Namespace) -> int:
    import torch

    from .activations.cache import CacheOptions, write_cache
    from .devices import resolve_device
    from .model.load import load_model
    from .model.sites import parse_sites
    from .options import config_from_args
    from .text.corpus import describe_source, iter_documents
    from .text.tokens import check_context_size, token_batches

    o: CacheOptions = config_from_args(args, CacheOptions)
    loaded = load_model(o.model, device=resolve_device(o.device))
    sites = parse_sites(o.sites, loaded.layout.n_layers)
    check_context_size(o.context_size, loaded.layout.max_positions, loaded.name)
    docs = iter_documents(o.corpus, o.split, eval_fraction=o.eval_fraction, text_field=o.text_field)
    batches = token_batches(docs, loaded.tokenizer, o.context_size, o.lm_batch_size)
    description = {"corpus": describe_source(o.corpus), "split": o.split, "context_size": o.context_size}
    folder = write_cache(loaded, sites, batches, o.tokens, o.out, description=description, shard_tokens=o.shard_tokens,
                         dtype=getattr(torch, o.dtype))
    print(f"wrote {folder}; train on it with: sae-explorer train --activation-cache {folder} --sites {o.sites} …")
    return 0


def _sites(args: argparse.Namespace) -> int:
    from .model.load import load_model
    from .model.sites import ALL_KINDS, Site
    from .options import ModelOptions, config_from_args

    loaded = load_model(config_from_args(args, ModelOptions).model)
    n = loaded.layout.n_layers
    print(f"{loaded.name}: {n} layers, d_model {loaded.layout.d_model}, family {loaded.layout.family}")
    for kind in ALL_KINDS:
        first, last = Site(0, kind), Site(n - 1, kind)
        print(f"  {kind:<10}  {first.short} … {last.short}   ({first.hook_name} … {last.hook_name})")
    return 0


def _report(args: argparse.Namespace) -> int:
    from .evaluation.layer_report import ReportOptions, write_report
    from .options import config_from_args

    for path in write_report(args.run, config_from_args(args, ReportOptions).out):
        print(path)
    return 0


def _info(args: argparse.Namespace) -> int:
    from .evaluation.evaluate_run import read_metrics
    from .evaluation.metrics_table import metrics_table
    from .features.parts import store_path, store_stamp
    from .features.reader import FeatureStore
    from .runs.run_folder import RunDir

    run = RunDir(args.run)
    info = run.require()
    print(f"run {args.run}: {info.get('status')}, model {info.get('model')}, corpus {info.get('corpus')}")
    print(f"  sites: {', '.join(info.get('sites', []))}")
    metrics = read_metrics(args.run)
    print(metrics_table(metrics) if metrics else "  no metrics yet; run `sae-explorer eval` on it")
    db = store_path(run.path)
    if store_stamp(db):
        from .evaluation.metrics_table import markdown_table
        from .interp.summary import explanation_summary

        with FeatureStore(db) as store:
            n = int(store.saes().d_sae.sum())
            print(f"features: {db} ({n:,} features, {store.meta.get('tokens', 0):,} tokens of {store.meta.get('corpus')})")
            summary = explanation_summary(store)
            n_explained = int(summary["features"].max()) if len(summary) else 0
            if n_explained:
                print(f"explanations of {n_explained:,} features (0.5 = chance; `sae-explorer explain` adds more):")
                print(markdown_table(list(summary.columns), [[_cell(v) for v in row] for row in summary.itertuples(index=False)]))
            else:
                print(f"explanations: none yet; `sae-explorer explain {args.run}` writes and scores them")
    else:
        print(f"features: none yet; run `sae-explorer precompute {args.run}` to browse them")
    return 0


def _cell(value: object) -> str:
    """A table cell: numbers to three decimals, missing values as a dash."""
    if isinstance(value, float):
        return "—" if value != value else f"{value:.3f}"
    return str(value)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand (also used to render --help in docs)."""
    from .activations.cache import CacheOptions
    from .circuits.graph import CircuitOptions, CircuitRequest
    from .evaluation.evaluate_run import EvalOptions
    from .evaluation.layer_report import ReportOptions
    from .features.embed import EmbedOptions
    from .features.export_neuronpedia import NeuronpediaOptions
    from .features.precompute import PrecomputeOptions
    from .features.release_stats import ReleaseStatsOptions
    from .interp.config import ExplainConfig
    from .loading import FORMATS
    from .options import ModelOptions, add_config_arguments
    from .refusal.cli import add_refusal_parser
    from .runs.import_saes import ImportOptions
    from .serving.settings import AppOptions, ServeLimits
    from .training import TrainConfig

    parser = argparse.ArgumentParser(
        prog="sae-explorer",
        description="Train, evaluate and browse sparse autoencoders on the activations of any Hugging Face causal LM.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="train SAEs at one or more sites from one stream of forward passes",
        description="Train one SAE per site (residual stream, MLP output, attention output) and save them in "
        "SAELens format under --out, then evaluate them on held-out text.",
        epilog=_EPILOG_TRAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(p, TrainConfig)
    p.add_argument("--stop-after", type=int, default=None, metavar="TOKENS",
                   help="stop after the first checkpoint at or beyond this many tokens per SAE (resume later)")
    p.add_argument("--dry-run", action="store_true",
                   help="load the model, check every option and print the SAEs, memory and steps the job would take; train nothing")
    p.add_argument("--ranks", type=int, default=None,
                   help="with --dry-run: plan for this many torchrun ranks (default: WORLD_SIZE or 1)")
    p.set_defaults(func=_train)

    p = sub.add_parser(
        "eval",
        help="evaluate a run's SAEs on held-out text and write metrics.json",
        description="Reconstruction (FVU, explained variance, MSE), sparsity (L0, dead, dense) and model-level "
        "recovery (CE-loss recovered vs zero ablation, KL, delta LM loss) on the held-out split.",
    )
    p.add_argument("run", help="run folder, e.g. runs/demo")
    add_config_arguments(p, EvalOptions)
    p.set_defaults(func=_eval)

    p = sub.add_parser(
        "precompute",
        help="precompute feature statistics of a run's SAEs into RUN/features.duckdb",
        description="Stream text through the model once, encode it with every SAE of the run and write "
        "RUN/features.duckdb: firing density, max/mean activation, activation histograms, top and quantile-interval "
        "examples, logit effects, decoder-cosine and co-activation neighbours, labels, per-site summaries. "
        "The file is replaced only when the new one is complete; a killed run resumes when run again.",
    )
    p.add_argument("run", help="run folder, e.g. runs/demo")
    add_config_arguments(p, PrecomputeOptions)
    p.set_defaults(func=_precompute)

    p = sub.add_parser(
        "import",
        help="make a run from published SAEs: SAELens, sparsify, dictionary_learning, Gemma Scope, Llama Scope, Qwen Scope (then precompute it)",
        description="Read SAEs written by other libraries, convert each to the encoding its library uses, check it against "
        "the model (d_in at its site; one SAE per site), save them as a run folder in SAELens format and precompute its "
        "features.duckdb, so any published SAE becomes browsable. Formats: " + "; ".join(FORMATS) + ". Loading never "
        "unpickles: .pt files are read as plain tensors only, .npz without pickles.",
        epilog="examples:\n  sae-explorer import ~/saes/blocks.6.hook_resid_post ~/sparsify-run/layers.8 "
        "--model Qwen/Qwen3-1.7B --out runs/qwen-imported\n"
        "  sae-explorer import ~/dl/resid_post_layer_14/trainer_0 --model Qwen/Qwen3-1.7B --out runs/qwen-dl\n"
        "  sae-explorer import ~/gemma-scope/params.npz=L12R --model google/gemma-2-2b --out runs/gemma-scope\n\n"
        "A path may end in =SITE (e.g. =L12R) to say which site an SAE reads when its files do not.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sae_folders", nargs="+", metavar="SAE", help="SAE folders or files, one per site, each optionally "
                   "PATH=SITE")
    add_config_arguments(p, ImportOptions, PrecomputeOptions, skip=("saes",))
    p.set_defaults(func=_import)

    p = sub.add_parser(
        "circuit",
        help="the sparse feature circuit behind one prediction: nodes, edges, faithfulness (JSON)",
        description="Find the features (and SAE error terms) at every SAE site of RUN that drive one next-token "
        "prediction, and the edges between them (Marks et al. 2024: attribution patching or integrated gradients, "
        "edges by attribution patching through the model with the SAEs spliced in). Writes the graph as JSON and "
        "prints the metric and the circuit's faithfulness (the metric with everything else ablated, relative to the "
        "whole model) and completeness (with the circuit ablated) over circuit sizes. See docs/circuits.md.",
        epilog="examples:\n  sae-explorer circuit runs/demo --prompt \"The capital of France is\" --target \" Paris\"\n"
        "  sae-explorer circuit runs/demo --prompt \"The keys to the cabinet\" --target \" are\" --minus \" is\" "
        "--method ig --ig-steps 16\n"
        "  sae-explorer circuit runs/demo --prompt \"The keys to the cabinet\" --target \" are\" --minus \" is\" "
        "--positions sum   # one node per feature",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", help="run folder with SAEs (its feature file, when there is one, labels the nodes)")
    add_config_arguments(p, CircuitRequest, CircuitOptions)
    p.set_defaults(func=_circuit)

    p = sub.add_parser(
        "import-stats",
        help="bring a published release's own feature statistics (metrics, top prompts in Parquet) into a run",
        description="Read a release's per-feature metrics and top prompts (a \"reverse index\" of Parquet files, local "
        "or hf:ORG/REPO/PATH) and store them in the run's feature file for one SAE, marked with their origin: the "
        "Features page shows them beside the run's own statistics. Columns are recognised by name (see "
        "docs/files.md#release-statistics); --columns names the others. Columns not recognised are kept as they are. "
        "Importing from the same origin again replaces what it wrote.",
        epilog="examples:\n  sae-explorer import-stats runs/qwen8b hf:sammyliu/qwen3-8b-sae-l36-topk64/reverse-index/"
        "l36-complete-merged --sae L35R\n  sae-explorer import-stats runs/demo ~/release-stats --sae L14R "
        "--columns density=act_rate",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", help="run folder whose feature file receives the statistics (precompute it first)")
    p.add_argument("source", help="folder holding the release's statistics (feature_metrics.parquet, "
                   "feature_prompts.parquet, summary.json), local or hf:ORG/REPO/PATH")
    add_config_arguments(p, ReleaseStatsOptions)
    p.set_defaults(func=_import_stats)

    p = sub.add_parser(
        "app",
        help="serve the explorer app on runs (Streamlit; this machine only unless --host says otherwise)",
        description="Start the Streamlit app on the runs named (and/or every run folder directly under --runs-dir) "
        "and print its URL. A URL names a run by its folder name (?run=NAME); nothing outside these runs is ever "
        "opened. Models stay in memory for the --max-live-runs most recently used runs; model work (prompts, "
        "attribution, steering) runs --max-live-jobs at a time, the rest wait in line. Binding to another address "
        "than loopback needs --auth-token or --no-auth; see docs/serving.md for a TLS reverse proxy.",
        epilog="examples:\n  sae-explorer app runs/demo\n  sae-explorer app --runs-dir runs --max-live-runs 2\n"
        "  sae-explorer app --runs-dir /srv/runs --host 0.0.0.0 --auth-token \"$(openssl rand -hex 16)\"",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("runs", nargs="*", help="run folders to serve, e.g. runs/demo (default: --runs-dir runs)")
    add_config_arguments(p, AppOptions, ServeLimits)
    p.set_defaults(func=_app)

    p = sub.add_parser(
        "cache",
        help="harvest activations once into a folder that `train --activation-cache` reads",
        description="Run the model over the corpus once and store the real-token activations of every site "
        "(safetensors shards plus cache.json). Training on the cache skips the model's forward passes, which "
        "is most of the cost when you train many SAEs on the same text (sweeps of k, width, learning rate).",
        epilog="example:\n  sae-explorer cache --sites L15R,L15M --tokens 2M --out runs/cache-l15\n"
        "  sae-explorer train --activation-cache runs/cache-l15 --sites L15R --k 64 --out runs/l15r-k64",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(p, CacheOptions)
    p.set_defaults(func=_cache)

    p = sub.add_parser(
        "explain",
        help="explain features in one sentence with an LLM and score how far to trust each explanation",
        description="Write a one-sentence explanation of each chosen feature from its precomputed examples (firing "
        "tokens marked, promoted tokens listed), then score it on held-out contexts the explainer never saw: detection, "
        "fuzzing (balanced accuracy, as EleutherAI delphi defines them) and embedding (AUROC), each beside two "
        "baselines (another feature's explanation, and the token handle). Results go into RUN/features.duckdb; a killed "
        "job resumes where it stopped when run again.",
        epilog=_EPILOG_EXPLAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", help="run folder with a features.duckdb, e.g. runs/demo")
    add_config_arguments(p, ExplainConfig)
    p.set_defaults(func=_explain)

    p = sub.add_parser(
        "embed",
        help="embed every feature of a run for search by meaning (sentence embeddings of its examples and explanation)",
        description="Embed each feature's top-example contexts, and its explanation if it has one, with a sentence-embedding "
        "model (default: all-MiniLM-L6-v2 from PyPI) into RUN/features.duckdb, replacing earlier vectors. precompute "
        "does this already when the model is installed.",
    )
    p.add_argument("run", help="run folder with a features.duckdb, e.g. runs/demo")
    add_config_arguments(p, EmbedOptions)
    p.set_defaults(func=_embed)

    _features_command(
        sub, "upgrade", _upgrade,
        help="bring a run's features.duckdb of an older schema version up to date, in place",
        description="Upgrade RUN/features.duckdb to the current schema without recomputing anything (the file is "
        "rewritten atomically: an interrupted upgrade leaves the old one).",
    )

    _features_command(
        sub, "index", _index,
        help="(re)build the indexes beside a run's features.duckdb (text search, search by meaning)",
        description="Build RUN/features.search.sqlite (a SQLite FTS5 trigram index of labels and explanations and the "
        "token postings: searches become index lookups instead of scans, same results) and RUN/features.vectors/ (the "
        "feature vectors memory-mapped, with a faiss IVF-PQ index from 400k vectors up: search by meaning without "
        "loading every vector, the top candidates re-scored exactly). precompute, explain, embed and upgrade rebuild "
        "both themselves; run this after copying a feature file without its indexes, or when the app says one is "
        "missing or stale.",
    )

    p = _features_command(
        sub, "export", _export,
        help="write a run's features as Parquet (every table, partitioned by SAE) or as a Neuronpedia export",
        description="--format parquet (default): write the tables of RUN/features.duckdb under OUT as Parquet for other "
        "engines (DuckDB, Spark, BigQuery, pandas): features, examples, neighbours, explanations and feature_vectors one "
        "folder per SAE, hive style (OUT/features/sae_id=3/data_0.parquet), the others one file each, and OUT/schema.json "
        "with every table's columns and the file's meta. --format neuronpedia: the folder Neuronpedia imports as "
        "dashboards (OUT/MODEL/SOURCE/{features,activations,explanations}/batch-N.jsonl.gz and the release, model, "
        "source-set and source rows; docs/importing.md). OUT is replaced as a whole, only when the export succeeds.",
    )
    add_config_arguments(p, ExportFormat, NeuronpediaOptions)
    p.add_argument("out", help="folder to write (new, or an earlier export to replace)")

    _features_command(
        sub, "split", _split,
        help="split a run's features.duckdb into one feature file per SAE (RUN/features/L6R.duckdb …)",
        description="Move every row of RUN/features.duckdb into RUN/features/, one feature file per SAE (with the "
        "vocabulary and the contexts its examples show), then remove the single file and rebuild the indexes for "
        "the folder. Every command and the app read the folder as they read one file; parts can be copied, served "
        "and rebuilt one by one, and each opens alone as a feature file of one SAE.",
    )

    add_refusal_parser(sub)

    p = sub.add_parser("sites", help="list the sites of a model", description="List the SAE sites of a model and their names.")
    add_config_arguments(p, ModelOptions)
    p.set_defaults(func=_sites)

    p = sub.add_parser("info", help="show a run's status and metrics", description="Show a run folder's status and metrics table.")
    p.add_argument("run", help="run folder")
    p.set_defaults(func=_info)

    p = sub.add_parser(
        "report",
        help="the run's metrics against layer, one line per site (PNG) and the full table (Markdown)",
        description="Write RUN/report/by_layer.png (explained variance, L0, dead fraction, CE-loss recovered, KL and "
        "delta LM loss against layer, one line per site: the paper's suite figure) and RUN/report/metrics.md (every "
        "SAE's metrics, with the notes behind n/a and * cells). Needs an evaluated run (`sae-explorer eval`).",
    )
    p.add_argument("run", help="run folder")
    add_config_arguments(p, ReportOptions)
    p.set_defaults(func=_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: user errors print one line and exit 2; Ctrl-C says how to resume."""
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if os.environ.get("SAE_EXPLORER_DEBUG"):
            raise
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130
    except Exception as exc:
        from .errors import disk_full

        if not disk_full(exc) or os.environ.get("SAE_EXPLORER_DEBUG"):
            raise
        print(f"error: the disk is full ({exc}); files are written beside their old versions and renamed at the end, "
              "so nothing was replaced or left half-written: free some space and run the same command again",
              file=sys.stderr)
        return 2
    if "torch.distributed" in sys.modules:  # a command that may have joined a torchrun job
        from .parallel import finish_parallel

        finish_parallel()  # every rank leaves together
    return code


if __name__ == "__main__":
    sys.exit(main())
