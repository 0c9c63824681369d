"""``python -m model_runtime.corpus build --out DIR``."""

from model_runtime.corpus.cli import main

raise SystemExit(main())
