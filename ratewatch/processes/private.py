"""The data dir kept to its owner: API key hashes, webhook secrets (encrypted), Valkey's
append-only files and chDB's tables (IP addresses, user ids) are nobody else's to read.

``ratewatch up`` sets the umask to ``0o077`` before it starts anything, so everything the
embedded Valkey, chDB and the children create is ``0600`` (directories ``0700``); what an
earlier version or another umask left readable is tightened at start.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from limiter.errors import ConfigError

PRIVATE_UMASK = 0o077


def make_private(data_dir: Path) -> None:
    """Set this process's umask (which children inherit) to ``0o077``, create ``data_dir``
    and take the group's and others' permissions off everything in it."""
    os.umask(PRIVATE_UMASK)
    data_dir.mkdir(parents=True, exist_ok=True)
    for path in (data_dir, *data_dir.rglob("*")):
        try:
            status = path.lstat()
            mode = stat.S_IMODE(status.st_mode)
            if not stat.S_ISLNK(status.st_mode) and mode & 0o077:
                path.chmod(mode & 0o700)
        except FileNotFoundError:  # removed while we walked (a merged chDB part)
            continue
        except OSError as exc:
            raise ConfigError(f"cannot make {path} private to its owner: {exc.strerror}") from None
