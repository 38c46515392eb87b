"""HTTP basic auth against the web config's bcrypt hashes, safe under a password flood.

bcrypt is slow on purpose (cost 12: ~0.3 s of one core per check), which makes it a lever for
anyone who can reach the port: 64 clients sending wrong passwords used to keep every core busy,
delay the first real login by seconds and starve the default executor that renders /metrics.
So:

- every check runs in one dedicated thread, never the default executor, so at most one core goes
  to bcrypt and the pollers and the renderer keep theirs;
- at most `queue_limit` checks wait for that thread, and at most `per_source_limit` of them
  from one client address; a request beyond either gets 429 with Retry-After instead of a queue
  that grows with the flood, so a flood from one address leaves room for a scraper logging in
  from another;
- a successful check is remembered (bounded, expires when unused), so a scraper pays bcrypt
  once, not on every scrape, and is answered from the cache while a flood is going on;
- an unknown user is checked against a dummy hash of the configured users' cost, and a wrong
  password for a real user against that user's hash: both cost one bcrypt check of the same
  cost, so timing does not tell which users exist.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import hashlib
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import bcrypt

log = logging.getLogger(__name__)

# bcrypt refuses longer passwords (bcrypt 5 raises; older releases silently truncated).
MAX_PASSWORD_BYTES = 72

# $2a$/$2b$/$2y$, a two-digit cost 04..31, then 22 salt and 31 hash characters of bcrypt's
# base64 alphabet: the modular crypt format exporter-toolkit (Go's x/crypto/bcrypt) accepts.
_BCRYPT_HASH = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")

CheckPw = Callable[[bytes, bytes], bool]


def hash_problem(hashed: str) -> str | None:
    """Why `hashed` cannot be used as a bcrypt hash, or None when it can.

    The format check alone passes hashes whose salt bcrypt still refuses, which used to fail
    every request with a 500; so the hash is also tried once at cost 4 (the same salt and
    digest, a millisecond of work), which exercises bcrypt's own parsing without paying the
    configured cost at start.
    """
    if not _BCRYPT_HASH.fullmatch(hashed):
        return ("is not a bcrypt hash ($2a$, $2b$ or $2y$, a cost 04-31, 53 characters of salt "
                "and digest; make one with htpasswd -nBC 12 USER)")
    cheap = hashed[:4] + "04" + hashed[6:]
    try:
        bcrypt.checkpw(b"", cheap.encode())
    except ValueError as exc:
        return f"is not a bcrypt hash bcrypt can read ({exc})"
    return None


def bcrypt_cost(hashed: bytes) -> int:
    return int(hashed[4:6])


class Verdict(enum.Enum):
    OK = "ok"
    DENIED = "denied"
    BUSY = "busy"  # too many checks waiting: the caller answers 429


class BasicAuth:
    """The users' bcrypt hashes, a cache of verified credentials and one bcrypt thread.

    `checkpw` is the bcrypt seam (tests count and time the checks through it)."""

    def __init__(self, users: dict[str, str], *, queue_limit: int = 8, per_source_limit: int = 1,
                 cache_size: int = 64, cache_ttl: float = 600.0,
                 checkpw: CheckPw | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._users = {u: h.encode() for u, h in users.items()}
        self._checkpw = checkpw
        self._clock = clock
        self._queue_limit = queue_limit
        self._per_source_limit = per_source_limit
        self._pending_by_source: dict[str, int] = {}
        self._cache_size = cache_size
        self._cache_ttl = cache_ttl
        self._verified: OrderedDict[bytes, float] = OrderedDict()  # key -> expiry
        self._lock = threading.Lock()
        self._pending = 0  # checks queued or running; only touched on the event loop
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._dummy = _dummy_hash(self._users)
        self._broken_logged = False

    @property
    def enabled(self) -> bool:
        return bool(self._users)

    @property
    def pending(self) -> int:
        return self._pending

    def _key(self, user: str, password: str, target: bytes) -> bytes:
        return hashlib.sha256(user.encode() + b"\0" + password.encode() + b"\0" + target).digest()

    def _target(self, user: str) -> tuple[bytes | None, bytes]:
        hashed = self._users.get(user)
        return hashed, hashed if hashed is not None else self._dummy

    def cached(self, user: str, password: str) -> bool:
        """True when these exact credentials were verified recently (cheap, no bcrypt)."""
        hashed, target = self._target(user)
        if hashed is None:
            return False
        key = self._key(user, password, target)
        now = self._clock()
        with self._lock:
            expiry = self._verified.get(key)
            if expiry is None:
                return False
            if expiry < now:
                del self._verified[key]
                return False
            # Used: keep it another TTL and move it to the young end of the LRU.
            self._verified[key] = now + self._cache_ttl
            self._verified.move_to_end(key)
            return True

    def verify(self, user: str, password: str) -> bool:
        """One bcrypt check (slow by design; `check` runs it in the bcrypt thread)."""
        if len(password.encode()) > MAX_PASSWORD_BYTES:
            return False  # no bcrypt hash can match it; the same answer for every user
        hashed, target = self._target(user)
        try:
            checkpw = self._checkpw or bcrypt.checkpw  # looked up per call: a test seam
            matched = checkpw(password.encode(), target)
        except ValueError as exc:  # the start-up check makes this unreachable; say so once
            if not self._broken_logged:
                self._broken_logged = True
                log.error("basic auth: bcrypt refused the hash of user %r: %s", user, exc)
            return False
        ok = matched and hashed is not None
        if ok:
            self._remember(self._key(user, password, target))
        return ok

    def _remember(self, key: bytes) -> None:
        with self._lock:
            self._verified[key] = self._clock() + self._cache_ttl
            self._verified.move_to_end(key)
            while len(self._verified) > self._cache_size:
                self._verified.popitem(last=False)

    async def check(self, user: str, password: str, source: str = "") -> Verdict:
        """The cache, else one bcrypt check in the bcrypt thread, else BUSY when too many
        checks already wait, overall or from `source` (the client's address), so a flood is
        refused at once instead of queueing."""
        if self.cached(user, password):
            return Verdict.OK
        if len(password.encode()) > MAX_PASSWORD_BYTES:
            return Verdict.DENIED
        from_source = self._pending_by_source.get(source, 0)
        if self._pending >= self._queue_limit or from_source >= self._per_source_limit:
            return Verdict.BUSY
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="kvscope-bcrypt")
        self._pending += 1
        self._pending_by_source[source] = from_source + 1
        try:
            loop = asyncio.get_running_loop()
            ok = await loop.run_in_executor(self._pool, self.verify, user, password)
        finally:
            self._pending -= 1
            left = self._pending_by_source[source] - 1
            if left:
                self._pending_by_source[source] = left
            else:
                del self._pending_by_source[source]
        return Verdict.OK if ok else Verdict.DENIED

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _dummy_hash(users: dict[str, bytes]) -> bytes:
    """A hash nobody's password matches, of the highest cost among the users, so an unknown
    user costs what a known one costs (made once, at start: one bcrypt of that cost)."""
    costs = [bcrypt_cost(h) for h in users.values() if _BCRYPT_HASH.fullmatch(h.decode())]
    if not costs:
        return b""
    return bcrypt.hashpw(b"kvscope: no such user", bcrypt.gensalt(rounds=max(costs)))
