"""Logging set-up shared by every component: plain or JSON lines, with secrets redacted."""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterable, Iterator
from contextvars import ContextVar

REDACTED = "***"

# The job a line of log is about, across backend, worker and bot: set with job_context().
JOB_ID: ContextVar[str | None] = ContextVar("job_id", default=None)


@contextlib.contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Every log line written inside (tasks started inside too) carries ``job_id``."""
    token = JOB_ID.set(job_id)
    try:
        yield
    finally:
        JOB_ID.reset(token)


class _JobIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "job_id") and (job_id := JOB_ID.get()) is not None:
            record.job_id = job_id
        return True


# Shapes of secrets that may reach a log without being known settings: bot tokens inside
# Telegram URLs, bearer tokens, passwords inside connection URLs.
_PATTERNS = [
    re.compile(r"(?<!\d)\d{5,}:[A-Za-z0-9_-]{30,}"),
    re.compile(r"(?i)(bearer\s+)[^\s'\"]+"),
    re.compile(r"(?i)(secret[_-]token['\"]?\s*[:=]\s*['\"]?)[^\s'\",}]+"),
    re.compile(r"(://[^:/@\s]*:)[^@\s]+(@)"),
]


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: _keep_groups(m), text)
    return text


def _keep_groups(match: re.Match[str]) -> str:
    groups = [g for g in match.groups() if g is not None]
    if not groups:
        return REDACTED
    if len(groups) == 1:
        return groups[0] + REDACTED
    return groups[0] + REDACTED + groups[-1]


class RedactingFormatter(logging.Formatter):
    def __init__(self, secrets: Iterable[str], as_json: bool) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.secrets = sorted(set(secrets), key=len, reverse=True)
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        if self.as_json:
            entry = {
                "time": self.formatTime(record),
                "level": record.levelname,
                "logger": record.name,
                "message": record.getMessage(),
            }
            for field in ("job_id", "telegram_id"):
                if hasattr(record, field):
                    entry[field] = getattr(record, field)
            if record.exc_info:
                entry["exception"] = self.formatException(record.exc_info)
            text = json.dumps(entry, ensure_ascii=False)
        else:
            text = super().format(record)
            if hasattr(record, "job_id"):
                text += f" [job {record.job_id}]"
        return redact(text, self.secrets)


def setup_logging(level: str, as_json: bool, secrets: Iterable[str]) -> None:
    """Route every logger (ours, uvicorn's, httpx's) through one redacting handler."""
    handler = logging.StreamHandler()
    handler.setFormatter(RedactingFormatter(secrets, as_json))
    handler.addFilter(_JobIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Noise for an operator even at DEBUG: alembic's plugin list, every aiosqlite call,
    # every PNG chunk Pillow reads.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    logging.getLogger("aiosqlite").setLevel(logging.INFO)
    logging.getLogger("PIL").setLevel(logging.INFO)
    # One line per HTTP request drowns what matters; their failures surface as our errors.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
