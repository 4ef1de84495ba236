#!/usr/bin/env bash
# GPU smoke check of the core paths (train + eval, precompute, refusal study) with --device cuda, on a
# randomly initialised model shaped like SmolLM2-135M (30 layers, d_model 576) with the tiny test tokenizer.
# Run on a CUDA machine from the repo root: bash scripts/gpu_check.sh [OUT_DIR]
# Needs torch with CUDA, transformers, safetensors, pandas, pyarrow, duckdb, scipy, plotly, tqdm, pyyaml.
set -euo pipefail
OUT=${1:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 - <<'PY'
import torch, transformers
from transformers import LlamaConfig, LlamaForCausalLM
from sae_core.testing.tiny_models import tiny_tokenizer
print("torch", torch.__version__, "transformers", transformers.__version__, "cuda", torch.cuda.is_available())
tok = tiny_tokenizer()
cfg = LlamaConfig(vocab_size=len(tok), hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                  num_key_value_heads=3, max_position_embeddings=2048, tie_word_embeddings=True,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
torch.manual_seed(0)
LlamaForCausalLM(cfg).save_pretrained("/tmp/smol-random")
tok.save_pretrained("/tmp/smol-random")
PY
run() { echo "+ $*"; /usr/bin/time -f "%e s wall, %M KiB max RSS" "$@"; }
run python3 -m sae_core.cli train --model /tmp/smol-random --sites L14R,L14M,L14A --tokens 2M --batch-size 4096 \
    --lm-batch-size 64 --device cuda --out /tmp/runs/gpu --overwrite 2>&1 | tr '\r' '\n' | grep -v "it/s\]$" | tail -25
run python3 -m sae_core.cli precompute /tmp/runs/gpu --tokens 256k --device cuda 2>&1 | tr '\r' '\n' | grep -v "it/s\]$" | tail -8
run python3 -m sae_core.cli refusal study /tmp/runs/gpu --device cuda 2>&1 | tr '\r' '\n' | grep -v "answer/s\]$\|^ *$" | tail -45
cp /tmp/runs/gpu/metrics.json /tmp/runs/gpu/refusal/report.md "$OUT/" 2>/dev/null || true
