"""TensorFlow's import without its C++ start-up lines, where ``TF_CPP_MIN_LOG_LEVEL`` asks for that.

TensorFlow 2.21 logs its oneDNN notice through absl at import, once per native library it loads (with
absl's "All log messages before absl::InitializeLog() ..." preamble each time), and ignores
``TF_CPP_MIN_LOG_LEVEL`` for them. :func:`install` wraps the first import of ``tensorflow`` so that,
while it runs, the process's stderr passes through a filter that drops exactly those lines; every other
line, and everything after the import, reaches stderr as before.

After the import, TensorFlow's Python logger drops its "triggered tf.function retracing" hint: the
evaluate stage predicts at several batch shapes on purpose (a warm-up per shape, the batch-1 latency),
which is what that hint counts, and a user can do nothing about it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

#: Lines TensorFlow's import writes that say nothing a user can act on.
NOISE = ("WARNING: All log messages before absl::InitializeLog() is called", "oneDNN custom operations are on")
RETRACING = "triggered tf.function retracing"


def is_noise(line: str) -> bool:
    return any(marker in line for marker in NOISE)


@contextmanager
def filtered_stderr() -> Iterator[None]:
    """File descriptor 2 through a pipe whose lines are copied back unless they are :data:`NOISE`."""
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                if not is_noise(line.decode(errors="replace")):
                    os.write(saved, line)

    thread = threading.Thread(target=pump, name="quiet-stderr", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the pump sees end of file
        thread.join()
        os.close(saved)


class _NoRetracingHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return RETRACING not in str(record.msg)


class _Loader(importlib.abc.Loader):
    """TensorFlow's own loader, its module executed inside :func:`filtered_stderr`."""

    def __init__(self, inner: importlib.abc.Loader) -> None:
        self.inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with filtered_stderr():
            self.inner.exec_module(module)
        logging.getLogger("tensorflow").addFilter(_NoRetracingHint())

    def __getattr__(self, name: str) -> Any:  # resource readers and the like: the real loader's
        return getattr(self.inner, name)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any = None, target: ModuleType | None = None) -> Any:
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once, and out of the way of the real search below
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def install() -> None:
    """Filter TensorFlow's start-up lines, unless it is already imported or TF_CPP_MIN_LOG_LEVEL is 0."""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") in ("", "0") or "tensorflow" in sys.modules:
        return
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
