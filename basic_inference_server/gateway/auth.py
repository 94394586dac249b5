"""The admin token that guards ``/shutdown``, ``/start_server``, ``/kill_server``, ``/update_workers``.

Taken from ``BIS_ADMIN_TOKEN``, else the config's ``ADMIN_TOKEN``; else generated at startup and
written to ``_cache/_data/admin_token`` (mode 0600). The token itself is never logged.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

ENV_VAR = "BIS_ADMIN_TOKEN"
TOKEN_FILE = "admin_token"


@dataclass(frozen=True)
class AdminToken:
    """The admin token and where an operator finds it (said by a 401, never the token itself)."""

    value: str
    where: str


def resolve_admin_token(config_token: str | None, data_folder: Path, app_root: Path | None = None) -> AdminToken:
    """Return the admin token, generating and storing one if none is configured."""
    from_env = os.environ.get(ENV_VAR)
    if from_env:
        logger.info("Admin token: from the %s environment variable", ENV_VAR)
        return AdminToken(from_env, f"the {ENV_VAR} the gateway was started with")
    if config_token:
        logger.info("Admin token: from ADMIN_TOKEN in the configuration")
        return AdminToken(config_token, "ADMIN_TOKEN in the gateway's configuration")
    path = data_folder / TOKEN_FILE
    shown = _shown(path, app_root)
    where = f"the one the gateway generated, in {shown} (bis, run from the gateway's folder, reads it)"
    data_folder.mkdir(parents=True, exist_ok=True)
    if path.exists():
        token = path.read_text(encoding="utf-8").strip()
        if len(token) >= 16:
            logger.info("Admin token: reusing the one stored in %s", path)
            return AdminToken(token, where)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    os.chmod(path, 0o600)
    logger.info("Admin token: generated and written to %s (read it from there)", path)
    return AdminToken(token, where)


def _shown(path: Path, app_root: Path | None) -> str:
    """The token file as a 401 names it: relative to the gateway's folder (no absolute path of
    the machine to whoever asks), else only its last parts."""
    try:
        return str(path.resolve().relative_to((app_root or Path.cwd()).resolve()))
    except ValueError:
        return str(Path(*path.parts[-3:]))
