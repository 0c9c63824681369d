"""``python -m model_runtime.training --config FILE.json`` (see ``training.cli``)."""

from model_runtime.training.cli import main

raise SystemExit(main())
