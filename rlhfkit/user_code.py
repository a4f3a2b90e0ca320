"""Code named in a config or on the command line: `module:function` or `path/to/file.py:function`.

Used for reward sources (`reward.source`, `best-of-n --reward`) and annotator factories
(`annotator.name`). Importing a module runs it, so such a spec runs code: name only code you
trust (the same rule as trust_remote_code). `module:function` imports an installed module (or
one on PYTHONPATH) and never looks in the current folder: `python -m rlhfkit.cli` puts the working
directory first on sys.path, and a stray `scores.py` beside the data must not run just because
its name matches. A file in the current folder is named by its path: `./scores.py:brevity`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from rlhfkit.config import ConfigError

SPEC_WARNING = "runs that Python code: name only code you trust"
_MODULE_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_FILE_SPEC = re.compile(r"^(?P<path>.+\.py):(?P<attr>[A-Za-z_]\w*)$")


def is_code_spec(text: str) -> bool:
    return bool(_MODULE_SPEC.match(text) or _FILE_SPEC.match(text))


def load_object(spec: str, what: str) -> Any:
    """The object `spec` names; a one-line ConfigError (naming `what`, e.g. "reward source") if
    the module or file cannot be found or has no such attribute."""
    if m := _FILE_SPEC.match(spec):
        where, attr = m["path"], m["attr"]
        module = _import_file(Path(where).expanduser(), spec, what)
    elif _MODULE_SPEC.match(spec):
        where, attr = spec.split(":")
        module = _import_installed(where, spec, what)
    else:
        raise ConfigError(f"{what} {spec!r}: expected 'module:function' or 'path/to/file.py:function'")
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{what} {spec!r}: cannot import {attr!r} from {where}: it has no such name") from None


def _import_installed(name: str, spec: str, what: str) -> ModuleType:
    """Import `name` with the current folder taken off sys.path for the import."""
    saved = list(sys.path)
    sys.path[:] = [p for p in saved if not _is_cwd(p)]
    try:
        return importlib.import_module(name)
    except ImportError as e:
        hint = f" (a file in the current folder is named by its path, e.g. ./{name.replace('.', '/')}.py:...)"
        raise ConfigError(f"{what} {spec!r}: cannot import {name}: {e}{hint}") from None
    finally:
        sys.path[:] = saved


def _is_cwd(entry: str) -> bool:
    return os.path.realpath(entry or ".") == os.path.realpath(".")


def _import_file(path: Path, spec: str, what: str) -> ModuleType:
    """Import a Python file by path, once per file (a second spec naming it reuses the module)."""
    if not path.is_file():
        raise ConfigError(f"{what} {spec!r}: no such file {path}")
    path = path.resolve()
    name = f"rlhfkit_user_code_{path.stem}_{abs(hash(str(path))):x}"
    if name in sys.modules:
        return sys.modules[name]
    loader_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module  # before running it, as `import` does (dataclasses look themselves up there)
    try:
        loader_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
