"""The admin token that guards ``/shutdown``, ``/start_server``, ``/kill_server``, ``/update_workers``.

Taken from ``BIS_ADMIN_TOKEN``, else the config's ``ADMIN_TOKEN``; else generated at startup and
written to ``_cache/_data/admin_token`` (mode 0600). The token itself is never logged.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

logger = logging.getLogger(__name__)

ENV_VAR = "BIS_ADMIN_TOKEN"
TOKEN_FILE = "admin_token"


def resolve_admin_token(config_token: str | None, data_folder: Path) -> str:
    """Return the admin token, generating and storing one if none is configured."""
    from_env = os.environ.get(ENV_VAR)
    if from_env:
        logger.info("Admin token: from the %s environment variable", ENV_VAR)
        return from_env
    if config_token:
        logger.info("Admin token: from ADMIN_TOKEN in the configuration")
        return config_token
    path = data_folder / TOKEN_FILE
    data_folder.mkdir(parents=True, exist_ok=True)
    if path.exists():
        token = path.read_text(encoding="utf-8").strip()
        if len(token) >= 16:
            logger.info("Admin token: reusing the one stored in %s", path)
            return token
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    os.chmod(path, 0o600)
    logger.info("Admin token: generated and written to %s (read it from there)", path)
    return token

