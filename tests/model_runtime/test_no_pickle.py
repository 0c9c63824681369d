"""No pickle in model_runtime: a checkpoint must never be able to run code when loaded.

Walks the AST of every .py file under model_runtime/ and fails on an import of a pickle-family
module, on a ``torch.load`` (under any alias) without ``weights_only=True``, and on numpy's
``allow_pickle=True``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import model_runtime

PACKAGE_DIR = Path(model_runtime.__file__).resolve().parent
PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "shelve", "joblib"}


def pickle_violations(source: str, filename: str = "<source>") -> list[str]:
    """Descriptions (file:line: what) of every pickle use in ``source``."""
    tree = ast.parse(source, filename=filename)
    torch_names = {"torch"}  # names bound to the torch module
    load_names: set[str] = set()  # names bound to torch.load itself
    found: list[str] = []

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                root = alias.name.split(".")[0]
                if root in PICKLE_MODULES:
                    found.append(f"{filename}:{node.lineno}: imports {alias.name}")
                if alias.name == "torch":
                    torch_names.add(alias.asname or "torch")
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            root = node.module.split(".")[0]
            if root in PICKLE_MODULES:
                found.append(f"{filename}:{node.lineno}: imports from {node.module}")
            if node.module in ("torch", "torch.serialization"):
                for alias in node.names:
                    if alias.name == "load":
                        load_names.add(alias.asname or "load")

    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        is_torch_load = (
            isinstance(func, ast.Attribute)
            and func.attr == "load"
            and isinstance(func.value, ast.Name)
            and func.value.id in torch_names
        ) or (isinstance(func, ast.Name) and func.id in load_names)
        keywords = {kw.arg: kw.value for kw in node.keywords if kw.arg is not None}
        if is_torch_load:
            weights_only = keywords.get("weights_only")
            if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                found.append(f"{filename}:{node.lineno}: torch.load without weights_only=True")
        allow_pickle = keywords.get("allow_pickle")
        if isinstance(allow_pickle, ast.Constant) and allow_pickle.value is True:
            found.append(f"{filename}:{node.lineno}: allow_pickle=True")
    return found


def test_model_runtime_never_unpickles() -> None:
    files = sorted(PACKAGE_DIR.rglob("*.py"))
    assert PACKAGE_DIR / "palm.py" in files  # the walk really covers the package
    violations = [
        v for path in files for v in pickle_violations(path.read_text("utf-8"), str(path))
    ]
    assert violations == []


def test_the_checker_catches_each_kind_of_pickle_use() -> None:
    bad = {
        "import pickle": "imports pickle",
        "import dill as d": "imports dill",
        "from pickle import loads": "imports from pickle",
        "import torch\ntorch.load('x.pt')": "without weights_only",
        "import torch as t\nt.load('x.pt', weights_only=False)": "without weights_only",
        "from torch import load as tl\ntl('x.pt')": "without weights_only",
        "import numpy as np\nnp.load('x.npy', allow_pickle=True)": "allow_pickle",
    }
    for source, message in bad.items():
        violations = pickle_violations(source)
        assert len(violations) == 1 and message in violations[0], (source, violations)
    good = "import torch\nstate = torch.load('trainer_state.pt', weights_only=True)"
    assert pickle_violations(good) == []
