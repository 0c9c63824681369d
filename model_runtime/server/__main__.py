"""``python -m model_runtime.server``: see :mod:`model_runtime.server.cli`."""

from model_runtime.server.cli import main

raise SystemExit(main())
