"""Message texts with the values filled in safely.

Messages go out in HTML mode (the shared Bot's default), so a value that came from a person —
a first name, a preset title, an admin's reason — is escaped before it is put into the text.
Button labels, pop-up notices and invoice fields are plain text: they use ``i18n.t`` as is.
"""

from __future__ import annotations

import html

from comfygram.i18n import t


def text(lang: str | None, key: str, **values: object) -> str:
    escaped = {
        name: html.escape(value, quote=False) if isinstance(value, str) else value
        for name, value in values.items()
    }
    return t(lang, key, **escaped)
