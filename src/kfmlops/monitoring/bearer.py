"""The sink's bearer token: read from a file (a mounted Secret), re-read when the file changes.

Consumes the token file's path; :meth:`BearerToken.accepts` takes a request's ``Authorization``
header and says whether it carries the token (compared in constant time). The file is checked
(``stat``) on every call and read again when its inode, size or modification time changed, which
is how a rotated Secret shows (the kubelet swaps the mount's ``..data`` link). A missing, unreadable
or empty file accepts nothing: the sink refuses every event rather than run open by mistake.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading

log = logging.getLogger(__name__)

_SCHEME = "bearer "


class BearerToken:
    """The token in ``path``; thread-safe."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None  # inode, size, mtime (ns) of the file last read
        self._token: bytes = b""
        self.problem: str | None = None  # why no token is in force, for /healthz

    def accepts(self, authorization: str | None) -> bool:
        """Whether ``authorization`` (the header's value) is ``Bearer <the token>``."""
        token = self._current()
        if not token or not authorization or not authorization[: len(_SCHEME)].lower() == _SCHEME:
            return False
        return hmac.compare_digest(authorization[len(_SCHEME):].strip().encode(), token)

    def _current(self) -> bytes:
        try:
            stat = os.stat(self.path)
        except OSError as exc:
            return self._forget(f"token file {self.path}: {exc.strerror}")
        seen = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if seen == self._seen:
                return self._token
            try:
                with open(self.path, "rb") as handle:
                    token = handle.read().strip()
            except OSError as exc:
                return self._forget(f"token file {self.path}: {exc.strerror}")
            self._seen, self._token = seen, token
            self.problem = None if token else f"token file {self.path} is empty"
            log.info("sink: bearer token %s from %s", "loaded" if token else "EMPTY: every event refused", self.path)
            return token

    def _forget(self, problem: str) -> bytes:
        with self._lock:
            if self.problem != problem:
                log.error("sink: %s; every event is refused until it is readable", problem)
            self._seen, self._token, self.problem = None, b"", problem
        return b""
