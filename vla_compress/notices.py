"""Third-party notices go to a log file, not to the user's terminal.

The libraries under the CLI talk a lot (transformers' FutureWarnings, torch.onnx's "torchvision is
not installed" lines, nncf's and onnxscript's INFO chatter). A user of `vla-compress` should see the
tool's own output, its own warnings and its errors; everything else is appended to
`$XDG_CACHE_HOME/vla-compress/logs/<date>.log` (default ~/.cache/...), created only when something
is written, so nothing is lost for a bug report.

- Python warnings: a warning whose category is defined in vla_compress, or one raised from our own
  code that is not a deprecation notice, is shown as usual; every other one is logged.
- Logging: the libraries' own terminal handlers are replaced by the log file. torch and nncf install
  theirs when imported (after this runs: commands import them lazily), so each library is adopted
  again right after its import finishes.
- The root logger (where e.g. onnxruntime.quantization logs) writes to the file too; vla_compress's
  own loggers still print WARNING and above to stderr.
- Worker processes: routing sets VLA_COMPRESS_ROUTE_NOTICES in the environment, which spawned workers
  (and Ray actors, given it in their runtime_env) inherit; they call `route_if_inherited()` first, so
  a library that a worker imports (transformers pulling in torchao, say) stays off the terminal too.
  A program using vla_compress as a library keeps its own output setup: nothing is routed unless the
  CLI started it.
"""

from __future__ import annotations

import datetime
import importlib.abc
import importlib.util
import logging
import os
import sys
import warnings
from pathlib import Path

# top-level packages whose loggers are moved to the file
THIRD_PARTY = ("torch", "transformers", "huggingface_hub", "onnx", "onnxscript", "onnxruntime", "nncf", "optimum",
               "openvino", "gymnasium", "llama_cpp", "tensorrt")
_PACKAGE_DIR = str(Path(__file__).resolve().parents[1])
_DEPRECATIONS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
_state: dict = {}
ENV_FLAG = "VLA_COMPRESS_ROUTE_NOTICES"


def log_path() -> Path:
    """Today's log file (not created here)."""
    from .resources import user_dir

    return user_dir("logs") / f"{datetime.date.today().isoformat()}.log"


class _StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is at emit time (click's test runner swaps it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # noqa: BLE001 - logging must never fail a command
            self.handleError(record)


class _NotOurs(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith("vla_compress")


def _is_ours(category: type, filename: str) -> bool:
    if getattr(category, "__module__", "").startswith("vla_compress"):
        return True
    return str(filename).startswith(_PACKAGE_DIR) and not issubclass(category, _DEPRECATIONS)


def _adopt(name: str, handler: logging.Handler) -> None:
    """Replace the terminal handlers of logger `name` and its children with the log file."""
    terminal = (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)
    for qname, lg in list(logging.Logger.manager.loggerDict.items()):
        if not isinstance(lg, logging.Logger) or (qname != name and not qname.startswith(name + ".")):
            continue
        for h in list(lg.handlers):
            if type(h) is logging.StreamHandler and getattr(h, "stream", None) in terminal:
                lg.removeHandler(h)
        if qname != name and not lg.handlers:
            lg.propagate = True  # up to `name`, which writes to the file (else logging's last resort prints it)
    top = logging.getLogger(name)
    if handler not in top.handlers:
        top.addHandler(handler)
    top.propagate = False


class _AdoptAfterImport(importlib.abc.MetaPathFinder):
    """Adopts a third-party package's loggers once its own import has set up its handlers."""

    def __init__(self, handler: logging.Handler) -> None:
        self.handler, self.busy = handler, set()

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in THIRD_PARTY or fullname in self.busy:
            return None
        self.busy.add(fullname)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self.busy.discard(fullname)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run, handler = loader.exec_module, self.handler

        def exec_module(module):
            run(module)
            _adopt(fullname, handler)

        loader.exec_module = exec_module
        return spec


def route_third_party_output() -> None:
    """Send third-party warnings and log records to `log_path()`; idempotent."""
    if "file" not in _state:
        path = log_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError:  # no writable cache folder: leave the output as the libraries set it up
            return
        handler = logging.FileHandler(path, delay=True, encoding="utf-8")  # no file until something is logged
        handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(name)s %(levelname)s: %(message)s"))
        handler.setLevel(logging.DEBUG)
        handler.addFilter(_NotOurs())  # vla_compress's own records go to stderr (below), not here
        own = _StderrHandler(logging.WARNING)
        own.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        _state.update(file=handler, own=own, finder=_AdoptAfterImport(handler))
        os.environ[ENV_FLAG] = "1"  # worker processes started from here route theirs too
    handler = _state["file"]
    for name in THIRD_PARTY:
        if name in sys.modules:
            _adopt(name, handler)
    if _state["finder"] not in sys.meta_path:
        sys.meta_path.insert(0, _state["finder"])
    root = logging.getLogger()
    if handler not in root.handlers:
        root.addHandler(handler)
    ours = logging.getLogger("vla_compress")
    if _state["own"] not in ours.handlers:
        ours.addHandler(_state["own"])
    notices = logging.getLogger("py.warnings")
    if handler not in notices.handlers:
        notices.addHandler(handler)
        notices.propagate = False
    if not getattr(warnings.showwarning, "_vla_compress", False):
        shown = warnings.showwarning

        def showwarning(message, category, filename, lineno, file=None, line=None):
            if _is_ours(category, filename):
                shown(message, category, filename, lineno, file, line)
            else:
                notices.warning(warnings.formatwarning(message, category, filename, lineno, line).rstrip())

        showwarning._vla_compress = True
        warnings.showwarning = showwarning


def route_if_inherited() -> None:
    """In a worker process: route as the parent does, when the parent routed (see the module doc)."""
    if os.environ.get(ENV_FLAG) == "1":
        route_third_party_output()
