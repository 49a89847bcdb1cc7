"""Structured logs: one JSON object per line, carrying the ids a record is about.

Use :class:`JsonFormatter` from ``LOGGING`` (``{"()": "orchestration.logging.JsonFormatter"}``).
A record's ids come from, in order:

* ``extra={...}`` on the logging call (``instance_id``, ``step_run_id``, ``step``, ``attempt``,
  ``workflow``, ``event``, ``sweeper``... any non-standard attribute is kept);
* the current :func:`log_context` (a context variable, so threads and tasks do not mix);
* inside a Celery task: the task name and id, and for ``orchestration.run_step`` its
  ``step_run_id`` and ``attempt`` (set by Celery signal receivers the formatter installs).

This module imports no Django models: logging is configured before the apps are ready.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

_context: ContextVar[dict[str, Any] | None] = ContextVar("signoff_log_context", default=None)

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = set(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", (), None))) | {
    "message",
    "asctime",
    "taskName",
}


def current_context() -> dict[str, Any]:
    return dict(_context.get() or {})


@contextmanager
def log_context(**values: Any) -> Iterator[None]:
    """Add ``values`` (e.g. ``instance_id=...``) to every record logged inside the block."""
    merged = {**current_context(), **{k: v for k, v in values.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", ...ids, "traceback"?}`` on one line.

    ``static`` adds fixed fields (e.g. ``{"service": "worker"}``) from the LOGGING config."""

    def __init__(self, *args: Any, static: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.static = dict(static or {})
        install_celery_context()

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        data.update(self.static)
        data.update(current_context())
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exc_type"] = getattr(record.exc_info[0], "__name__", str(record.exc_info[0]))
            data["traceback"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["traceback"] = record.exc_text
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        return json.dumps(data, ensure_ascii=False, default=str)


# -- Celery: the task a record was logged in ---------------------------------------------------

_installed = False


def _task_started(task_id: str = "", task: Any = None, args: Any = None, **kwargs: Any) -> None:
    values: dict[str, Any] = {"task": getattr(task, "name", None), "task_id": task_id}
    if values["task"] == "orchestration.run_step" and args and len(args) >= 2:
        values["step_run_id"], values["attempt"] = args[0], args[1]
    _context.set({k: v for k, v in values.items() if v is not None})


def _task_finished(**kwargs: Any) -> None:
    _context.set(None)


def install_celery_context() -> None:
    """Connect the task receivers once per process (a no-op without Celery)."""
    global _installed
    if _installed:
        return
    try:
        from celery.signals import task_postrun, task_prerun
    except ImportError:  # pragma: no cover - Celery is a dependency
        return
    task_prerun.connect(_task_started, weak=False, dispatch_uid="signoff-log-context")
    task_postrun.connect(_task_finished, weak=False, dispatch_uid="signoff-log-context")
    _installed = True
