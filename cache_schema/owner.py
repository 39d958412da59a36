"""Who owns a staging directory: `<host>-<pid>-<nonce>` tokens in its name.

Clean-up may remove a leftover only when its owner is this process or a dead process on this
host; a live writer's directory (another process, or another host we cannot ask) is never touched.
"""

from __future__ import annotations

import os
import re
import socket
import uuid

_TOKEN_RE = re.compile(r"^(?P<host>[A-Za-z0-9_-]+)-(?P<pid>[0-9]+)-(?P<nonce>[0-9a-f]{12})$")


def _host() -> str:
    # no dots: unit ids may hold dots, and staging names split the token off at the last one
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


def owner_token() -> str:
    """A fresh `<host>-<pid>-<nonce>` for a directory this process is about to create."""
    return f"{_host()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def is_abandoned(token: str) -> bool:
    """True when the token's owner is dead on this host, or the token carries no owner (written
    by an older version that named staging dirs with a bare nonce). Another host's dirs are kept:
    we cannot ask whether their writer lives."""
    m = _TOKEN_RE.match(token)
    if m is None:
        return True
    if m["host"] != _host():
        return False
    pid = int(m["pid"])
    return pid != os.getpid() and not pid_alive(pid)
