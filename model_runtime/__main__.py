"""``python -m model_runtime``: see :mod:`model_runtime.cli`."""

from model_runtime.cli import main

raise SystemExit(main())
