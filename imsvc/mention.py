"""When a message mentions the assistant (SPEC §11): `@<AI_BOT_USER_ID>` or `AI_BOT_MENTION`, case-insensitive,
standing alone: neither directly after nor directly before an id character."""

from __future__ import annotations

import re

ID_CHARS = "A-Za-z0-9_.:@-"


def mention_pattern(bot_user_id: str, alias: str) -> re.Pattern[str]:
    names = "|".join(re.escape(name) for name in (f"@{bot_user_id}", alias))
    return re.compile(rf"(?<![{ID_CHARS}])(?:{names})(?![{ID_CHARS}])", re.IGNORECASE)


def mentions(pattern: re.Pattern[str], text: str) -> bool:
    return pattern.search(text) is not None
