"""The Redis backend: state outside the scorer, surviving restarts, shareable.

Keys (``prefix`` first, ``aml:`` by default):

- ``o:<account>`` / ``i:<account>``: sorted sets of the rows the account sent / received,
  scored by event time in µs (exact in a double until the year 2255), each member a row
  as compact JSON;
- ``v:<account>``: how many times the account's sets changed (its *version*);
- ``s:<event id>``: the event id was appended (expires after ``dedup_ttl``);
- ``d:<event id>``: the decision taken for it, JSON (same expiry);
- ``g``: how many times any set changed (the store's *generation*);
- ``c``: the change feed, the latest appends oldest first (at most ``FEED``), each
  ``[generation, version of src, version of dst, src made, dst made, row, [accounts
  forgotten]]`` ("made": the account had no rows before, see the append script);
- ``epoch``: a random id made when the store is empty (a flushed store gets a new one);
- ``meta``: the store layout (window, row columns), checked when a scorer connects.
- with a retention (``deploy.store.retention``): ``n``, the newest event time appended;
  ``a``, a sorted set of accounts scored by their latest event time; ``e``, a sorted set
  of event ids scored by their event time. Every append then forgets up to 64 accounts
  idle, and 64 ids older, than ``n`` minus the retention (their sets, version, ``s:`` and
  ``d:`` keys), so the store plateaus; a version key made again starts from the
  generation ``g``, never from a number a cached copy may still hold.

Appending is one Lua script (atomic): it sets ``s:<id>`` only if absent, adds the row to
both sets, trims them by the rule of :mod:`aml_pipeline.store.base` and bumps both
versions, so two scorers racing on the same event id cannot append it twice.

Reading is one script call, and ships few rows: the scorer keeps a cache of accounts'
whole sets tagged with their versions. The call sends the versions it holds for the two
query accounts and gets their sets back only if they changed, plus the versions of the
accounts that paid them in the graph window (the 1-hop expansion); only stale ones are
fetched, with their version, in a second call. After its own append the scorer applies the
same insert-and-trim to its copies when the new versions are exactly one step on (no other
writer came in between), else drops them. A scorer alone on the store thus reads almost
no rows; with several, versions keep every copy exact. A new ``epoch`` (flushed store)
empties the cache. Single-instance Redis only: a script touches keys of several accounts.

A scorer need not even check versions. Every change bumps the generation ``g`` and every
append is written to the feed ``c`` under it. A scorer remembers a generation up to which
it has followed the feed: what any copy it holds lacks is in the feed after it. A read is
then one script call: the stored decision, else the feed entries since (none for a scorer
alone on the store), which the scorer applies to the copies it holds, with the same
insert-and-trim, in generation order, each only when it is exactly the next version of that
copy (its own appends are already there); an account the retention forgot is dropped.
However many accounts paid a merchant and however many workers share the store
(``deploy.workers``), no version is checked and no row is fetched twice. When the feed no
longer reaches back that far (a scorer idle for ``FEED`` appends, a warm-up or an
eviction, which change sets without feed entries, a flushed store), the scorer drops its
copies and reads with versions once, from which it follows the feed again.
"""

from __future__ import annotations

import json
import uuid
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import orjson

from aml_pipeline.errors import UserError
from aml_pipeline.optional import require
from aml_pipeline.secrets import redact_url
from aml_pipeline.store.base import DST, ID, SRC, T, OnlineStore, Reading, Row, StoreLayout, latest_of, payers, trim_start
from aml_pipeline.store.memory import MemoryStore

# Trim one set: keep rows within window of the newest, and all rows at the two latest instants.
# Scores are formatted with %.0f: Lua's default number format has 14 digits, µs need 16.
_TRIM = """
local function trim(key, window)
  local top = redis.call('ZREVRANGE', key, 0, 0, 'WITHSCORES')
  if #top == 0 then return end
  local newest = tonumber(top[2])
  local cutoff = newest - window
  local second = redis.call('ZREVRANGEBYSCORE', key, '(' .. top[2], '-inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if #second > 0 and tonumber(second[2]) < cutoff then cutoff = tonumber(second[2]) end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. string.format('%.0f', cutoff))
end
"""

# Forget what the retention no longer covers: accounts whose latest event, and event ids
# whose event, is older than the newest event time minus the retention (at most `limit`
# of each per call). Returns the accounts forgotten.
_EVICT_FN = """
local function evict(p, retention, limit)
  local newest = redis.call('GET', p .. 'n')
  if retention <= 0 or not newest then return {} end
  local stop = '(' .. string.format('%.0f', tonumber(newest) - retention)
  local gone = redis.call('ZRANGEBYSCORE', p .. 'a', '-inf', stop, 'LIMIT', 0, limit)
  for _, acc in ipairs(gone) do
    redis.call('DEL', p .. 'o:' .. acc, p .. 'i:' .. acc, p .. 'v:' .. acc)
    redis.call('ZREM', p .. 'a', acc)
  end
  local ids = redis.call('ZRANGEBYSCORE', p .. 'e', '-inf', stop, 'LIMIT', 0, limit)
  for _, id in ipairs(ids) do
    redis.call('DEL', p .. 's:' .. id, p .. 'd:' .. id)
    redis.call('ZREM', p .. 'e', id)
  end
  return gone, #ids
end
"""

# KEYS: seen, sent set of src, received set of dst, decision, version of src, version of dst;
# ARGV: member, t, window, ttl, decision, retention (0 = none), prefix, src, dst, event id,
# feed length. Versions count the changes of an account's sets. Returns {appended, v_src,
# v_dst, g, src made, dst made, accounts forgotten...}: "made" when the account's version
# key was made anew (it had no rows: new, or forgotten by the retention), so its version
# jumped to the generation instead of rising by one.
_APPEND = _TRIM + _EVICT_FN + """
local window = tonumber(ARGV[3])
local retention = tonumber(ARGV[6])
local p = ARGV[7]
if ARGV[5] ~= '' then
  if redis.call('EXISTS', KEYS[4]) == 0 then redis.call('SET', KEYS[4], ARGV[5], 'EX', ARGV[4]) end
end
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[4]) then return {0, 0, 0, 0} end
for i = 2, 3 do
  redis.call('ZADD', KEYS[i], ARGV[2], ARGV[1])
  trim(KEYS[i], window)
end
local gone = {}
local made = {0, 0}
if retention > 0 then
  local newest = redis.call('GET', p .. 'n')
  if not newest or tonumber(ARGV[2]) > tonumber(newest) then redis.call('SET', p .. 'n', ARGV[2]) end
  redis.call('ZADD', p .. 'a', 'GT', ARGV[2], ARGV[8])
  redis.call('ZADD', p .. 'a', 'GT', ARGV[2], ARGV[9])
  redis.call('ZADD', p .. 'e', ARGV[2], ARGV[10])
  local g = redis.call('GET', KEYS[7]) or '0'
  for i = 5, 6 do
    if redis.call('EXISTS', KEYS[i]) == 0 then
      redis.call('SET', KEYS[i], g)
      made[i - 4] = 1
    end
  end
  gone = evict(p, retention, 64)
end
local vs = redis.call('INCR', KEYS[5])
local vd = redis.call('INCR', KEYS[6])
local g = redis.call('INCR', KEYS[7])
local forgot = {}
for i, acc in ipairs(gone) do forgot[i] = cjson.encode(acc) end
redis.call('RPUSH', p .. 'c', string.format('[%d,%d,%d,%d,%d,', g, vs, vd, made[1], made[2]) .. ARGV[1] ..
  ',[' .. table.concat(forgot, ',') .. ']]')
redis.call('LTRIM', p .. 'c', -tonumber(ARGV[11]), -1)
local out = {1, vs, vd, g, made[1], made[2]}
for _, acc in ipairs(gone) do out[#out + 1] = acc end
return out
"""

# ARGV: prefix, retention, limit. Returns {accounts forgotten, ids forgotten}.
_EVICT = _EVICT_FN + """
local gone, ids = evict(ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]))
if #gone > 0 or (ids or 0) > 0 then redis.call('INCR', ARGV[1] .. 'g') end
return {#gone, ids or 0}
"""

# The feed-following read: ARGV prefix, event id, the client's epoch, the generation it has
# followed the feed to. Returns the stored decision (a JSON object), '1' when nothing changed
# since, the feed's entries since (a JSON array) when the feed holds every one of them,
# else '0'.
_READ_FAST = """
local p = ARGV[1]
local d = redis.call('GET', p .. 'd:' .. ARGV[2])
if d then return d end
if (redis.call('GET', p .. 'epoch') or '') ~= ARGV[3] then return '0' end
local n = tonumber(redis.call('GET', p .. 'g') or '0') - tonumber(ARGV[4])
if n == 0 then return '1' end
if n < 0 then return '0' end
local entries = redis.call('LRANGE', p .. 'c', -n, -1)
if #entries ~= n or tonumber(string.match(entries[1], '^%[(%d+),')) ~= tonumber(ARGV[4]) + 1 then return '0' end
return '[' .. table.concat(entries, ',') .. ']'
"""

# One round trip for what a query needs. ARGV: prefix, event id, the client's epoch, the
# expansion start ('' = none), the event time, number of query accounts, then per query
# account its name and the version the client holds ('' = none), then the same for the
# accounts that paid them (the client's guess of the 1-hop expansion, from its copies).
# Returns one JSON text, {"decision": ...} or {"epoch": ..., "accounts": [[version, null |
# [sent, received]], ...], "stale": [[account, version], ...], "found": [[account, version],
# ...]}: a query account's whole sets only when the client's copy is not current (rows are
# the stored JSON members, not re-encoded); the guessed accounts whose copy is not
# current; and, for query accounts sent whole, the accounts that paid them in the
# expansion window which the client did not guess (it filters hubs itself).
_READ = """
local p = ARGV[1]
local d = redis.call('GET', p .. 'd:' .. ARGV[2])
if d then return '{"decision":' .. d .. '}' end
local epoch = redis.call('GET', p .. 'epoch') or ''
local trusted = epoch == ARGV[3]
local expand, stop = ARGV[4], '(' .. ARGV[5]
local n = tonumber(ARGV[6])
local skip = {}
for i = 1, n do skip[ARGV[5 + 2 * i]] = true end
for j = 7 + 2 * n, #ARGV, 2 do skip[ARGV[j]] = true end
local parts, found = {}, {}
for i = 1, n do
  local acc, known = ARGV[5 + 2 * i], ARGV[6 + 2 * i]
  local version = redis.call('GET', p .. 'v:' .. acc) or '0'
  if trusted and version == known then
    parts[i] = '[' .. version .. ',null]'
  else
    local sent = redis.call('ZRANGE', p .. 'o:' .. acc, 0, -1)
    local recv = redis.call('ZRANGE', p .. 'i:' .. acc, 0, -1)
    parts[i] = '[' .. version .. ',[[' .. table.concat(sent, ',') .. '],[' .. table.concat(recv, ',') .. ']]]'
    if expand ~= '' then
      for _, m in ipairs(redis.call('ZRANGEBYSCORE', p .. 'i:' .. acc, expand, stop)) do
        local x = cjson.decode(m)[3]
        if not skip[x] then
          skip[x] = true
          found[#found + 1] = '[' .. cjson.encode(x) .. ',' .. (redis.call('GET', p .. 'v:' .. x) or '0') .. ']'
        end
      end
    end
  end
end
local stale = {}
for j = 7 + 2 * n, #ARGV, 2 do
  local x = ARGV[j]
  local version = redis.call('GET', p .. 'v:' .. x) or '0'
  if not trusted or version ~= ARGV[j + 1] then
    stale[#stale + 1] = '[' .. cjson.encode(x) .. ',' .. version .. ']'
  end
end
return '{"epoch":' .. cjson.encode(epoch) .. ',"g":' .. (redis.call('GET', p .. 'g') or '0') ..
  ',"accounts":[' .. table.concat(parts, ',') .. '],"stale":[' ..
  table.concat(stale, ',') .. '],"found":[' .. table.concat(found, ',') .. ']}'
"""

# The whole received set and its version, atomically, for accounts whose cached copy is stale.
# ARGV: prefix, accounts. Returns [generation, [[account, version, [rows]], ...]].
_RECEIVED = """
local p = ARGV[1]
local out = {}
for i = 2, #ARGV do
  local x = ARGV[i]
  local rows = redis.call('ZRANGE', p .. 'i:' .. x, 0, -1)
  out[i - 1] = '[' .. cjson.encode(x) .. ',' .. (redis.call('GET', p .. 'v:' .. x) or '0') .. ',[' .. table.concat(rows, ',') .. ']]'
end
return '[' .. (redis.call('GET', p .. 'g') or '0') .. ',[' .. table.concat(out, ',') .. ']]'
"""

_TRIM_KEY = _TRIM + """
trim(KEYS[1], tonumber(ARGV[1]))
return 1
"""


def _dumps(obj: Any) -> bytes:
    """Compact JSON (orjson): a row as the sets' member, a decision as ``d:<id>``."""
    return orjson.dumps(obj)


def _resp_command(*parts: Any) -> bytes:
    """One command in the Redis protocol (RESP): an array of bulk strings. Values are
    encoded as redis-py's encoder does (str as UTF-8, int in decimal, float by ``repr``;
    tests/test_store.py compares the bytes)."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        if isinstance(part, str):
            part = part.encode()
        elif isinstance(part, bool) or part is None:
            raise TypeError(f"cannot send {part!r} to Redis")
        elif isinstance(part, int):
            part = b"%d" % part
        elif isinstance(part, float):
            part = repr(part).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


class _ScriptCalls:
    """EVALSHA of the request path's scripts on a connection of the store's own.

    ``Script.__call__`` spends most of a call's CPU in redis-py's command machinery (the
    pool, the retry wrapper, argument packing), and a request makes two calls (the read,
    the append): ``python bench/profile_service.py --parts 1000`` gives 21 instead of 61 µs
    of the service's CPU per call. Here the command is packed and sent on
    one connection and the reply read back, with what that machinery would have done for
    these calls: a script Redis no longer holds (restart, ``SCRIPT FLUSH``) is loaded
    again, and a dropped connection is reconnected and the call sent again, twice at most,
    as redis-py's default retry does (both scripts can run twice safely: the read changes
    nothing, the append is refused for an event id already appended). The store is used
    by one request at a time (the scorer's lock), so one connection serves.
    """

    def __init__(self, client):
        self._client = client
        self._conn = None
        errors = require("redis", why="deploy.store.backend=redis").exceptions
        self._retry_on = (errors.ConnectionError, errors.TimeoutError)
        self._no_script = errors.NoScriptError

    def __call__(self, script, keys: list = (), args: list = ()) -> Any:
        conn = self._conn
        if conn is None:
            conn = self._conn = self._client.connection_pool.make_connection()
        command = _resp_command(b"EVALSHA", script.sha, len(keys), *keys, *args)
        error: Exception | None = None
        for _ in range(3):
            try:
                conn.send_packed_command((command,))
                return conn.read_response()
            except self._no_script as exc:
                error = exc
                self._client.script_load(script.script)
            except self._retry_on as exc:
                error = exc
                conn.disconnect()
        raise error

    def close(self) -> None:
        if self._conn is not None:
            self._conn.disconnect()
            self._conn = None


class _Entry:
    """A cached copy of an account's whole sets (``sent`` None: not held) at a version."""

    __slots__ = ("version", "sent", "sent_t", "received", "received_t")

    def __init__(self, version: int, sent: list | None, received: list):
        self.version = version
        self.sent, self.received = sent, received
        self.sent_t = [r[T] for r in sent] if sent is not None else None
        self.received_t = [r[T] for r in received]

    @staticmethod
    def _slice(rows: list, times: list[int], start_us: int, end_us: int) -> list:
        j = bisect_left(times, end_us)
        return rows[bisect_left(times, start_us, 0, j):j]

    def sent_between(self, start_us: int, end_us: int) -> list:
        return self._slice(self.sent, self.sent_t, start_us, end_us)

    def received_between(self, start_us: int, end_us: int) -> list:
        return self._slice(self.received, self.received_t, start_us, end_us)

    def latest_before(self, end_us: int) -> int | None:
        best = None
        for times in (self.sent_t, self.received_t):
            j = bisect_left(times, end_us)
            if j and (best is None or times[j - 1] > best):
                best = times[j - 1]
        return best

    def add(self, row: Row, window_us: int, sent: bool) -> None:
        """Insert and trim exactly as the append script does in Redis."""
        rows, times = (self.sent, self.sent_t) if sent else (self.received, self.received_t)
        i = bisect_right(times, row[T])
        times.insert(i, row[T])
        rows.insert(i, row)
        cut = trim_start(times, window_us)
        if cut:
            del times[:cut]
            del rows[:cut]


class RedisStore(OnlineStore):
    backend = "redis"
    #: Appends the feed ``c`` keeps (module doc): how far behind a scorer may fall and still
    #: catch up without reading its copies again (~150 bytes each).
    FEED = 10_000

    def __init__(self, layout: StoreLayout, url: str, prefix: str = "aml:", dedup_ttl_s: float = 30 * 86400.0,
                 cache_size: int = 20_000):
        super().__init__(layout)
        redis = require("redis", why="deploy.store.backend=redis")
        #: For messages, logs and /health: the URL with its password masked (the real one
        #: goes to the client only).
        self.url = redact_url(url)
        self.prefix = prefix
        self.ttl = max(1, int(dedup_ttl_s))
        self._redis_errors = (redis.RedisError, OSError)
        self._r = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=30)
        self._append = self._r.register_script(_APPEND)
        self._evict = self._r.register_script(_EVICT)
        self.retention_us = int(layout.retention_us or 0)
        self._trim = self._r.register_script(_TRIM_KEY)
        self._read = self._r.register_script(_READ)
        self._read_fast = self._r.register_script(_READ_FAST)
        self._received_script = self._r.register_script(_RECEIVED)
        self._call = _ScriptCalls(self._r)
        #: account -> its whole sets at a version (see the module doc): most reads ship no rows.
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self.cache_size = cache_size
        self._epoch = None
        #: The generation up to which this scorer has followed the feed: what any copy it
        #: holds lacks is in the feed after it (None: unknown, so reads check versions);
        #: see the module doc.
        self._generation: int | None = None
        self._p = prefix.encode()
        self.ping()
        self._check_meta()
        self._r.set(self._p + b"epoch", uuid.uuid4().hex, nx=True)  # new on an empty (or flushed) store

    # -- keys -----------------------------------------------------------------------------
    def _k(self, kind: str, name: str) -> bytes:
        return self._p + kind.encode() + b":" + name.encode()

    def _check_meta(self) -> None:
        key = self._p + b"meta"
        raw = self._r.get(key)
        mine = json.loads(self.layout.to_json())
        if raw is not None:
            theirs = json.loads(raw)
            if theirs.get("columns") != mine["columns"]:
                raise UserError(f"store {self.url} ({self.prefix}): rows have columns {theirs.get('columns')}, this plan "
                                f"needs {mine['columns']}; use another deploy.store.prefix or flush the store")
            if int(theirs.get("window_us", 0)) >= self.layout.window_us:
                return
        self._r.set(key, self.layout.to_json())

    def ping(self) -> None:
        try:
            self._r.ping()
        except self._redis_errors as exc:
            raise UserError(f"store: cannot reach Redis at {self.url}: {redact_url(str(exc))}") from None

    # -- reads ----------------------------------------------------------------------------
    @staticmethod
    def _decode(chunks: list[list[bytes]]) -> list[list[Row]]:
        """Decode many member lists with one orjson.loads call."""
        flat = [m for chunk in chunks for m in chunk]
        if not flat:
            return [[] for _ in chunks]
        rows = orjson.loads(b"[" + b",".join(flat) + b"]")
        out, i = [], 0
        for chunk in chunks:
            out.append(rows[i:i + len(chunk)])
            i += len(chunk)
        return out

    def read(self, event_id: str, accounts: Iterable[str], start_us: int, end_us: int) -> Reading:
        accounts = list(dict.fromkeys(accounts))
        hi = f"({end_us}"
        p = self._r.pipeline(transaction=False)
        p.get(self._k("d", event_id))
        for acc in accounts:
            p.zrangebyscore(self._k("o", acc), start_us, hi)
            p.zrangebyscore(self._k("i", acc), start_us, hi)
        res = p.execute()
        out = Reading()
        if res[0] is not None:
            out.decision = json.loads(res[0])
            return out
        decoded = self._decode(res[1:])
        empty = []
        for n, acc in enumerate(accounts):
            sent, received = decoded[2 * n], decoded[2 * n + 1]
            out.sent[acc], out.received[acc] = sent, received
            out.latest[acc] = latest_of(sent, received)
            if out.latest[acc] is None:
                empty.append(acc)
        if empty:  # nothing in the window: the previous event may be older
            p = self._r.pipeline(transaction=False)
            for acc in empty:
                for kind in ("o", "i"):
                    p.zrevrangebyscore(self._k(kind, acc), hi, "-inf", start=0, num=1, withscores=True)
            res = p.execute()
            for n, acc in enumerate(empty):
                times = [int(hit[0][1]) for hit in res[2 * n:2 * n + 2] if hit]
                out.latest[acc] = max(times) if times else None
        return out

    @staticmethod
    def _neighbours(entries, accounts, expand_start_us: int, end_us: int, hubs: frozenset[str],
                    expand_rows: int | None) -> set[str]:
        """Accounts that paid a query account in [expand_start, end) (of its latest
        ``expand_rows`` inflows there, when set), hubs and query accounts excepted."""
        found = payers([entry.received_between(expand_start_us, end_us) for entry in entries], expand_start_us, expand_rows)
        found.difference_update(accounts)
        found.difference_update(hubs)
        return found

    def _seen_generation(self, generation: int, cache_was_empty: bool) -> None:
        """A reply's rows are current at ``generation``. Copies fetched while following the
        feed keep it followed (the feed after our generation holds what they lack, and
        changes they already have are skipped); with nothing else held, the feed is followed
        from here."""
        if self._generation is None and cache_was_empty:
            self._generation = generation

    def _follow(self, entries: list) -> None:
        """Apply the feed's entries (oldest first) to the copies we hold."""
        cache = self._cache
        for generation, v_src, v_dst, made_src, made_dst, row, gone in entries:
            for acc in gone:
                cache.pop(acc, None)
            self._apply(row, v_src, v_dst, made_src, made_dst)
            self._generation = generation

    def _fetch_received(self, accounts: list[str]) -> None:
        """Cache the whole received sets of ``accounts`` (the 1-hop expansion's misses)."""
        cache_was_empty = not self._cache
        generation, sets = orjson.loads(self._call(self._received_script, args=[self.prefix, *accounts]))
        for acc, version, rows in sets:
            self._cache[acc] = _Entry(version, None, rows)
        self._seen_generation(generation, cache_was_empty)

    def _read_cached(self, event_id: str, held: list[_Entry], accounts: list[str], start_us: int, end_us: int,
                     expand_start_us: int | None, guess: set[str], hubs: frozenset[str],
                     expand_rows: int | None) -> Reading | None:
        """The fast path: one call (the stored decision, or the feed since our generation), the
        rows from our copies; None when the copies must be read with versions."""
        got = self._call(self._read_fast, args=[self.prefix, event_id, self._epoch or "", self._generation])
        if got == b"0":  # the feed does not reach back far enough: read the copies again
            self._cache.clear()
            self._generation = None
            return None
        if got[:1] == b"{":
            out = Reading()
            out.decision = orjson.loads(got)
            return out
        cache = self._cache
        if got != b"1":  # other writers' appends since: bring our copies up to them
            self._follow(orjson.loads(got))
            if any(cache.get(acc) is not entry for acc, entry in zip(accounts, held)):
                return None  # a query account was forgotten by the retention
            if expand_start_us is not None:
                guess = self._neighbours(held, accounts, expand_start_us, end_us, hubs, expand_rows)
        missing = [x for x in guess if x not in cache]
        if missing:
            self._fetch_received(sorted(missing))
        out = Reading()
        for acc, entry in zip(accounts, held):
            cache.move_to_end(acc)
            out.sent[acc] = entry.sent_between(start_us, end_us)
            out.received[acc] = entry.received_between(start_us, end_us)
            out.latest[acc] = entry.latest_before(end_us)
        if expand_start_us is not None:
            for x in guess:
                out.received[x] = cache[x].received_between(expand_start_us, end_us)
        return out

    def read_expanded(self, event_id: str, accounts, start_us: int, end_us: int,
                      expand_start_us: int | None, hubs: frozenset[str], expand_rows: int | None = None) -> Reading:
        accounts = list(dict.fromkeys(accounts))
        cache = self._cache
        held = [cache.get(acc) for acc in accounts]
        held = [e if e is not None and e.sent is not None else None for e in held]
        guess: set[str] = set()
        if expand_start_us is not None:  # from the copies we hold; the script finds the others' own
            guess = self._neighbours([e for e in held if e is not None], accounts, expand_start_us, end_us, hubs,
                                    expand_rows)
        if self._generation is not None and all(e is not None for e in held):
            reading = self._read_cached(event_id, held, accounts, start_us, end_us, expand_start_us, guess, hubs,
                                        expand_rows)
            if reading is not None:
                return reading
            held = [e if e is not None and e.sent is not None else None for e in map(cache.get, accounts)]
        if self._generation is None and cache:  # copies we cannot bring up to date: start over
            cache.clear()
            held = [None] * len(accounts)
            guess = set()
        cache_was_empty = not cache
        args = [self.prefix, event_id, self._epoch or "", "" if expand_start_us is None else expand_start_us, end_us,
                len(accounts)]
        for acc, entry in zip(accounts, held):
            args += [acc, entry.version if entry is not None else ""]
        for x in guess:
            entry = cache.get(x)
            args += [x, entry.version if entry is not None else ""]
        got = orjson.loads(self._call(self._read, args=args))
        out = Reading()
        if "decision" in got:
            out.decision = got["decision"]
            return out
        if got["epoch"] != self._epoch:  # a new (or flushed) store: versions mean nothing any more
            cache.clear()
            cache_was_empty = True
            self._epoch = got["epoch"]
        self._seen_generation(int(got["g"]), cache_was_empty)
        entries = []
        for acc, (version, sets) in zip(accounts, got["accounts"]):
            if sets is None:
                entry = cache[acc]
                cache.move_to_end(acc)
            else:
                entry = cache[acc] = _Entry(version, sets[0], sets[1])
            entries.append(entry)
            out.sent[acc] = entry.sent_between(start_us, end_us)
            out.received[acc] = entry.received_between(start_us, end_us)
            out.latest[acc] = entry.latest_before(end_us)
        if expand_start_us is not None:
            neighbours = self._neighbours(entries, accounts, expand_start_us, end_us, hubs, expand_rows)
            # current: guessed and not reported stale, or found at the version we hold
            current = guess.difference(acc for acc, _ in got["stale"])
            for acc, version in got["found"]:
                entry = cache.get(acc)
                if entry is not None and entry.version == version:
                    current.add(acc)
            stale = neighbours - current
            if stale:
                self._fetch_received(sorted(stale))
            for x in neighbours:
                out.received[x] = cache[x].received_between(expand_start_us, end_us)
        while len(cache) > self.cache_size:
            cache.popitem(last=False)
        return out

    def read_received(self, accounts: Iterable[str], start_us: int, end_us: int) -> dict[str, list[Row]]:
        accounts = list(accounts)
        if not accounts:
            return {}
        p = self._r.pipeline(transaction=False)
        hi = f"({end_us}"
        for acc in accounts:
            p.zrangebyscore(self._k("i", acc), start_us, hi)
        return dict(zip(accounts, self._decode(p.execute())))

    # -- writes ---------------------------------------------------------------------------
    def commit(self, row: Row, decision: dict | None) -> bool:
        keys = [self._k("s", row[ID]), self._k("o", row[SRC]), self._k("i", row[DST]), self._k("d", row[ID]),
                self._k("v", row[SRC]), self._k("v", row[DST]), self._p + b"g"]
        args = [_dumps(list(row)), row[T], self.layout.window_us, self.ttl, _dumps(decision) if decision is not None else "",
                self.retention_us, self.prefix, row[SRC], row[DST], row[ID], self.FEED]
        appended, v_src, v_dst, generation, *made_gone = self._call(self._append, keys=keys, args=args)
        made, gone = made_gone[:2], made_gone[2:]
        for acc in gone:  # forgotten by the retention: our copies of them are gone too
            self._cache.pop(acc.decode() if isinstance(acc, bytes) else acc, None)
        if appended:
            self._apply(row, int(v_src), int(v_dst), int(made[0]), int(made[1]))
            if self._generation is not None and int(generation) == self._generation + 1:
                self._generation = int(generation)  # our own change, and the only one since
        return bool(appended)

    def _apply(self, row: Row, v_src: int, v_dst: int, made_src: int = 0, made_dst: int = 0) -> None:
        """Apply one append (ours, or the feed's) to the copies of its two accounts that are
        exactly one version behind it; a copy that already has it is left alone, and so is
        one further behind (the feed brings it the changes in between first). An account
        whose version was made anew had no rows before this append, so its copy starts
        empty. A self-payment bumps one counter twice (``v_dst == v_src + 1``), so taking
        the sides in order works."""
        cache, w = self._cache, self.layout.window_us
        for acc, version, sent, made in ((row[SRC], v_src, True, made_src), (row[DST], v_dst, False, made_dst)):
            entry = cache.get(acc)
            if entry is not None and made and entry.version < version:  # (a copy read since is ahead)
                entry = cache[acc] = _Entry(version - 1, None if entry.sent is None else [], [])
            if entry is None or entry.version + 1 != version:
                continue
            if not (sent and entry.sent is None):  # a received-only copy: the sent side is not held
                entry.add(row, w, sent=sent)
            entry.version = version

    def warm(self, rows: Iterable[Row]) -> int:
        """Trim locally (same rule), then write each set with ZADD and trim it in Redis."""
        local = MemoryStore(self.layout)
        n = local.warm(rows)
        before = int(self._r.get(self._p + b"g") or 0)
        p = self._r.pipeline(transaction=False)
        pending = 0
        touched = set()
        for direction, acc, set_rows in local.sets():
            touched.add(acc)
            self._cache.pop(acc, None)  # its version moves on below
            key = self._k("o" if direction == "sent" else "i", acc)
            for i in range(0, len(set_rows), 1000):
                p.zadd(key, {_dumps(list(r)): r[T] for r in set_rows[i:i + 1000]})
            self._trim(keys=[key], args=[self.layout.window_us], client=p)
            pending += 1
            if pending >= 500:
                p.execute()
                pending = 0
        p.execute()
        for event_id in local.seen_ids():
            p.set(self._k("s", event_id), b"1", ex=self.ttl)
            pending += 1
            if pending >= 5000:
                p.execute()
                pending = 0
        p.execute()
        order = sorted(touched)
        made = [False] * len(order)
        if self.retention_us:  # a version key made again starts from the generation (as in the append script)
            for acc in order:
                p.set(self._k("v", acc), before, nx=True)
            made = p.execute()
        for acc in order:  # cached copies of these accounts' sets are now stale
            p.incr(self._k("v", acc))
        p.incr(self._p + b"g")
        *versions, after = p.execute()
        if self.retention_us:  # index what was written for the retention, then forget what it no longer covers
            self._index_warmed(local)
        # the other copies stay current only if no other writer came in during the warm-up
        alone = after == before + 1 and (self._generation == before or not self._cache)
        self._generation = after if alone else None
        fresh = {acc: int(version) for acc, version, m in zip(order, versions, made)
                 if m or (not self.retention_us and int(version) == 1)}
        self._cache_warmed(local, fresh)
        return n

    def _index_warmed(self, local: MemoryStore) -> None:
        """Record warmed rows in ``n``, ``a`` and ``e`` (the retention's indexes), then evict."""
        latest: dict[str, int] = {}
        for _, acc, rows in local.sets():
            if rows and rows[-1][T] > latest.get(acc, -1):
                latest[acc] = rows[-1][T]
        p = self._r.pipeline(transaction=False)
        items = list(latest.items())
        for i in range(0, len(items), 5000):
            p.zadd(self._p + b"a", dict(items[i:i + 5000]), gt=True)
        seen = [(e, v[2]) for e, v in local._seen.items()]
        for i in range(0, len(seen), 5000):
            p.zadd(self._p + b"e", dict(seen[i:i + 5000]))
        p.execute()
        if latest:
            newest = max(latest.values())
            old = self._r.get(self._p + b"n")
            if old is None or int(old) < newest:
                self._r.set(self._p + b"n", newest)
        self.expire()

    def expire(self) -> int:
        """Forget everything the retention no longer covers; returns how many accounts went."""
        if not self.retention_us:
            return 0
        total = 0
        while True:
            accounts, ids = self._evict(args=[self.prefix, self.retention_us, 1000])
            total += int(accounts)
            if int(accounts) < 1000 and int(ids) < 1000:
                break
        self._cache.clear()
        self._generation = None
        return total

    def _cache_warmed(self, local: MemoryStore, fresh: dict[str, int]) -> None:
        """Hold the sets just written as cached copies, so the first requests after a warm-up
        do not each fetch them again (a payment into a merchant would read thousands of rows).

        Only ``fresh`` accounts are held, at the version this warm-up's increment gave them
        (their version key was made by it): Redis had no rows of theirs before, so its sets
        are exactly the local ones. Rows go through JSON as a Redis read returns them.
        """
        versions = fresh
        sets: dict[str, list] = {}
        for direction, acc, rows in local.sets():
            if acc in versions:
                sets.setdefault(acc, [[], []])[direction == "received"] = rows
        if self._epoch is None:
            self._epoch = (self._r.get(self._p + b"epoch") or b"").decode()
        recent = sorted(sets, key=lambda a: max((s[-1][T] for s in sets[a] if s), default=0))[-self.cache_size:]
        for acc in recent:
            sent, received = orjson.loads(_dumps([[list(r) for r in s] for s in sets[acc]]))
            self._cache[acc] = _Entry(versions[acc], sent, received)
            self._cache.move_to_end(acc)

    def preload(self) -> int:
        """Hold copies of up to ``cache_size`` accounts before serving, so a new process (one of
        ``deploy.workers``, or a service restarted on a kept store) does not fetch a merchant's
        sets on the requests that first touch it. The generation is read first: the copies,
        read afterwards, lack only appends the feed after it holds. Accounts already held
        are kept. Returns how many accounts were read."""
        cache = self._cache
        if self._generation is None:
            cache.clear()  # copies of unknown currency (see read_expanded)
        p = self._r.pipeline(transaction=True)
        p.get(self._p + b"epoch")
        p.get(self._p + b"g")
        epoch, generation = p.execute()
        if self._epoch != (epoch or b"").decode():
            cache.clear()
            self._epoch = (epoch or b"").decode()
        if not cache:
            self._generation = int(generation or 0)
        accounts, pattern = [], self._p + b"v:*"
        for key in self._r.scan_iter(match=pattern, count=1000):
            acc = key[len(self._p) + 2:].decode()
            if acc not in cache:
                accounts.append(acc)
            if len(cache) + len(accounts) >= self.cache_size:
                break
        for i in range(0, len(accounts), 500):
            batch = accounts[i:i + 500]
            p = self._r.pipeline(transaction=True)  # each account's version and sets together
            for acc in batch:
                p.get(self._k("v", acc))
                p.zrange(self._k("o", acc), 0, -1)
                p.zrange(self._k("i", acc), 0, -1)
            got = p.execute()
            sets = self._decode([x for n, x in enumerate(got) if n % 3])
            for n, acc in enumerate(batch):
                cache[acc] = _Entry(int(got[3 * n] or 0), sets[2 * n], sets[2 * n + 1])
        return len(accounts)

    def busiest(self, n: int) -> list[tuple[str, int]]:
        """Of the copies this process holds (:meth:`preload`), the accounts with most rows."""
        held = [(acc, e) for acc, e in self._cache.items() if e.sent is not None and (e.sent_t or e.received_t)]
        held.sort(key=lambda item: -(len(item[1].sent_t) + len(item[1].received_t)))
        return [(acc, max(e.sent_t[-1:] + e.received_t[-1:])) for acc, e in held[:n]]

    # -- misc -----------------------------------------------------------------------------
    def epoch(self) -> str | None:
        """The store's epoch (module doc), or None once it is gone: a FLUSHALL, or a Redis
        restarted without persistence, took it with every row. The streaming scorer keeps
        the epoch it started with in its checkpoint and compares in every micro-batch."""
        raw = self._r.get(self._p + b"epoch")
        return None if raw is None else raw.decode()

    def stats(self) -> dict[str, Any]:
        out = {"backend": self.backend, "url": self.url, "prefix": self.prefix, "keys": int(self._r.dbsize())}
        if self.retention_us:
            out["retention_s"] = self.retention_us / 1e6
        return out

    def close(self) -> None:
        self._call.close()
        self._r.close()

    # -- bulk access for micro-batch scorers (the streaming scorer) -------------------------
    def history_rows(self, accounts: Iterable[str], end_us: int, expand_start_us: int | None,
                     hubs: frozenset[str]) -> list[Row]:
        """Two pipelined round trips: the query accounts' sets, then the 1-hop expansion."""
        query = list(dict.fromkeys(accounts))
        hi = f"({end_us}"
        p = self._r.pipeline(transaction=False)
        for acc in query:
            p.zrangebyscore(self._k("o", acc), "-inf", hi)
            p.zrangebyscore(self._k("i", acc), "-inf", hi)
        decoded = self._decode(p.execute()) if query else []
        out: dict[str, Row] = {}
        neighbours: set[str] = set()
        for n, rows in enumerate(decoded):
            for r in rows:
                out[r[ID]] = r
                if n % 2 == 1 and expand_start_us is not None and r[T] >= expand_start_us:
                    neighbours.add(r[SRC])
        neighbours.difference_update(query)
        neighbours.difference_update(hubs)
        if neighbours:
            for rows in self.read_received(sorted(neighbours), expand_start_us, end_us).values():
                for r in rows:
                    out[r[ID]] = r
        return list(out.values())

    def known_ids(self, event_ids: Iterable[str]) -> set[str]:
        ids = list(dict.fromkeys(event_ids))
        if not ids:
            return set()
        p = self._r.pipeline(transaction=False)
        for e in ids:
            p.exists(self._k("s", e))
        return {e for e, hit in zip(ids, p.execute()) if hit}

    def last_batch(self, stream: str) -> int | None:
        raw = self._r.get(self._k("batch", stream))
        return None if raw is None else int(raw)

    def set_last_batch(self, stream: str, batch_id: int) -> None:
        self._r.set(self._k("batch", stream), int(batch_id))
