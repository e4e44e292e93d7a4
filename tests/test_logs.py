"""Secrets never reach a log line, whatever shape they arrive in."""

import json
import logging

from comfygram.logs import REDACTED, RedactingFormatter, redact

BOT_TOKEN = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"


def test_known_secrets_are_replaced():
    assert redact("token=abc-secret-123 ok", ["abc-secret-123"]) == f"token={REDACTED} ok"


def test_secret_shapes_are_redacted_without_being_known():
    lines = [
        f"POST https://api.telegram.org/bot{BOT_TOKEN}/sendPhoto",
        "Authorization: Bearer sk-live-abcdef",
        "redis://:hunter2@redis:6379/0",
        "postgresql+asyncpg://app:pa55word@db/comfygram",
        "X-Telegram-Bot-Api-Secret-Token: secret_token=abcDEF_123",
    ]
    for line in lines:
        cleaned = redact(line, [])
        for secret in ("AAHdqTcv", "sk-live-abcdef", "hunter2", "pa55word", "abcDEF_123"):
            assert secret not in cleaned
    assert redact("redis://:hunter2@redis:6379/0", []) == f"redis://:{REDACTED}@redis:6379/0"


def test_formatter_redacts_messages_arguments_and_tracebacks():
    formatter = RedactingFormatter(["super-secret-value"], as_json=True)
    try:
        raise RuntimeError("failed with super-secret-value")
    except RuntimeError:
        import sys

        record = logging.LogRecord(
            "t",
            logging.ERROR,
            __file__,
            1,
            "calling %s",
            (f"/bot{BOT_TOKEN}/getMe",),
            sys.exc_info(),
        )
    record.job_id = "job-1"
    line = formatter.format(record)
    entry = json.loads(line)
    assert entry["job_id"] == "job-1"
    assert "super-secret-value" not in line and BOT_TOKEN not in line
    assert REDACTED in entry["message"] and REDACTED in entry["exception"]
