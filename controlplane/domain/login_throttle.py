"""Failed sign-ins: who must wait, for how long, and which refusals are worth an audit row.

The rule, and why it cannot be turned into locking a shift out of AD:
- AD locks an account after `ad_lockout_threshold` bad passwords that each follow the previous
  one within its observation window. ShiftDesk forwards at most `budget` of them per user per
  `window_s` (which must be at least AD's window): `budget = threshold - reserve`, where the
  reserve (a fifth of the threshold, at least one) is left for the user's own typos elsewhere
  (their Windows sign-in). So nobody can lock a real AD account *through ShiftDesk*; once a user's
  budget is spent, further attempts are refused here (HTTP 429) without reaching AD, and AD's
  counter decays while ours does.
- That per-user budget is split in two halves that cannot borrow from each other: one for
  *familiar* addresses (where this user signed in successfully in the last `familiar_days`), one
  for every other address. An attacker, who is never familiar, can only spend the unfamiliar
  half: an agent signing in from home keeps working while their name is being sprayed.
- Per (user, address): after `pair_free_failures` the wait doubles from 1 s up to
  `max_backoff_s`: typos cost nothing, guessing gets slow. One address cannot block a user
  for other addresses this way.
- Per address (any user): after `source_failures` the same doubling back-off, so one address
  spraying many names is slowed. Familiar (user, address) pairs are exempt, so one abuser behind
  a contact centre's shared NAT does not lock out the agents on that floor.
- A success clears that user's failure counts (as AD resets badPwdCount on a good sign-in) and
  makes the address familiar. Refused attempts do not count as failures: they never reached AD.
- Usernames are compared lower-cased and without an `@domain` suffix, so `Alice` and
  `alice@corp.example` share one budget. (A UPN prefix that differs from the sAMAccountName
  is a second spelling of one account: the reserve absorbs it.)

Memory is bounded: every table is an LRU capped at `max_entries`, so a flood of distinct names
costs O(1) each and evicts the least recently used entries. State is in-process: each replica
keeps its own, so N replicas behind a balancer multiply the budgets by N; run one, or keep
N * budget below AD's threshold.

Audit volume: `AuditTally` says when a refusal is worth a row: the 1st, 2nd, 4th, 8th... of a
key (user, address) in a window, each row carrying the running count, so a flood of a million
attempts writes about twenty rows per key, and a lone typo is still visible at once.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")
C = TypeVar("C", "_Count", "_UserCount")
DAY_S = 86400.0
UNFAMILIAR_ONLY_BUDGET = 10  # per half when AD never locks (threshold 0): still no unbounded guessing


@dataclass(frozen=True)
class ThrottleRules:
    ad_lockout_threshold: int = 10
    window_s: float = 1800.0
    pair_free_failures: int = 3
    max_backoff_s: float = 900.0
    source_failures: int = 30
    familiar_days: float = 30.0
    max_entries: int = 50_000

    def budgets(self) -> tuple[int, int]:
        """(unfamiliar, familiar) failures per user per window; together below AD's threshold."""
        t = self.ad_lockout_threshold
        if t <= 0:
            return UNFAMILIAR_ONLY_BUDGET, UNFAMILIAR_ONLY_BUDGET
        budget = max(1, t - max(1, t // 5))
        unfamiliar = max(1, budget // 2)
        return unfamiliar, max(1, budget - unfamiliar)


@dataclass(frozen=True)
class Refusal:
    """Refused without asking AD: come back in `retry_after` seconds. `scope` is for the audit only."""

    retry_after: int
    scope: str  # "user+source", "source" or "user"


@dataclass
class _Count:
    failures: int = 0
    last: float = 0.0


@dataclass
class _UserCount:
    """Both halves of a user's budget decay together, a window after the user's last failure of
    either kind: that is when AD's own counter resets."""

    unfamiliar: int = 0
    familiar: int = 0
    last: float = 0.0


class Lru(Generic[K, V]):
    """A dict that forgets its least recently used entry beyond `cap`: O(1) per operation."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._data: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.cap:
            self._data.popitem(last=False)

    def pop(self, key: K) -> None:
        self._data.pop(key, None)

    def __len__(self) -> int:
        return len(self._data)


def user_key(username: str) -> str:
    return username.strip().lower().split("@", 1)[0][:256]


class LoginThrottle:
    """The rule above. Thread-safe (sign-ins run in a thread pool); `now` is seconds (injected)."""

    def __init__(self, rules: ThrottleRules | None = None) -> None:
        self.rules = rules or ThrottleRules()
        cap = self.rules.max_entries
        self._pairs: Lru[tuple[str, str], _Count] = Lru(cap)
        self._sources: Lru[str, _Count] = Lru(cap)
        self._users: Lru[str, _UserCount] = Lru(cap)
        self._familiar: Lru[tuple[str, str], float] = Lru(cap)
        self._lock = threading.Lock()
        self.audit = AuditTally(self.rules.window_s, cap)

    def check(self, username: str, source: str, now: float) -> Refusal | None:
        """None if this attempt may go to AD, else how long to wait."""
        user = user_key(username)
        with self._lock:
            familiar = self._is_familiar(user, source, now)
            hard = self._hard_wait(self._users.get(user), familiar, now)
            if hard:
                return Refusal(hard, "user")
            pair = self._backoff(self._pairs.get((user, source)), self.rules.pair_free_failures, now)
            if pair:
                return Refusal(pair, "user+source")
            if not familiar:
                src = self._backoff(self._sources.get(source), self.rules.source_failures, now)
                if src:
                    return Refusal(src, "source")
            return None

    def failed(self, username: str, source: str, now: float) -> None:
        """AD said no (wrong password, unknown, disabled...): count it everywhere it applies."""
        user = user_key(username)
        with self._lock:
            familiar = self._is_familiar(user, source, now)
            count = self._live(self._users.get(user), now) or _UserCount()
            count.familiar += familiar
            count.unfamiliar += not familiar
            count.last = now
            self._users.put(user, count)
            self._bump(self._pairs, (user, source), now)
            if not familiar:
                self._bump(self._sources, source, now)

    def succeeded(self, username: str, source: str, now: float) -> None:
        user = user_key(username)
        with self._lock:
            self._users.pop(user)
            self._pairs.pop((user, source))
            self._familiar.put((user, source), now)

    # --- the arithmetic --------------------------------------------------------------------

    def _is_familiar(self, user: str, source: str, now: float) -> bool:
        seen = self._familiar.get((user, source))
        return seen is not None and now - seen < self.rules.familiar_days * DAY_S

    def _live(self, count: C | None, now: float) -> C | None:
        """A count decays to nothing once a whole window passed since its last failure."""
        return count if count is not None and now - count.last < self.rules.window_s else None

    def _bump(self, table: Lru, key: object, now: float) -> None:
        count = self._live(table.get(key), now) or _Count()
        table.put(key, _Count(count.failures + 1, now))

    def _hard_wait(self, count: _UserCount | None, familiar: bool, now: float) -> int:
        live = self._live(count, now)
        unfamiliar_budget, familiar_budget = self.rules.budgets()
        if live is None or (live.familiar < familiar_budget if familiar else live.unfamiliar < unfamiliar_budget):
            return 0
        return _seconds(live.last + self.rules.window_s - now)

    def _backoff(self, count: _Count | None, free: int, now: float) -> int:
        live = self._live(count, now)
        if live is None or live.failures < free:
            return 0
        wait = min(self.rules.max_backoff_s, 2.0 ** min(live.failures - free, 30))
        return _seconds(live.last + wait - now)


def _seconds(remaining: float) -> int:
    return max(0, math.ceil(remaining))


class AuditTally:
    """When a repeated refusal deserves an audit row: the 1st, 2nd, 4th, 8th... per key and window."""

    def __init__(self, window_s: float, cap: int) -> None:
        self.window_s = window_s
        self._counts: Lru[tuple[str, ...], tuple[float, int]] = Lru(cap)
        self._lock = threading.Lock()

    def count(self, key: tuple[str, ...], now: float) -> int | None:
        """The running count if a row should be written now, else None."""
        with self._lock:
            start, n = self._counts.get(key) or (now, 0)
            if now - start >= self.window_s:
                start, n = now, 0
            n += 1
            self._counts.put(key, (start, n))
            return n if n & (n - 1) == 0 else None
