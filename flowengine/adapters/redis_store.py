"""Redis store: flows shared by processes on several hosts through one server.

Every key starts with a prefix (`flowengine:` by default):

- `<prefix>flow:<id>`: a hash with the record's `version` and the whole
  `record` as JSON;
- `<prefix>events:<id>`: a list of the flow's audit events as JSON, oldest
  first;
- `<prefix>flows`: a sorted set of flow ids scored by `updated_at`.

`create`, `commit` and `delete` each run one Lua script. Redis runs a script without
interleaving other commands, so the version check, the record write, the
event append and the index update are one atomic step, and a failed check
writes nothing.

The server must keep what it is given: a `maxmemory-policy` that evicts keys
can silently drop a flow, and without AOF persistence a restart loses the
writes since the last snapshot.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from flowengine.errors import (
    ConfigError,
    ConflictError,
    FlowNotFoundError,
    StoreUnavailableError,
)
from flowengine.records import AuditEvent, FlowRecord
from flowengine.redaction import redact_url

logger = logging.getLogger(__name__)

DEFAULT_PREFIX = "flowengine:"

_MAYBE_APPLIED = ". The write may have been applied, so reload the flow first"

# Records loaded per round trip by `flows()`.
_BATCH = 500

# The scripts check every key's type before the first write, because Redis
# does not roll back the writes of a script that fails halfway.
_TYPE_CHECKS = """
local expected = {'hash', 'list', 'zset'}
for index = 1, 3 do
  local kind = redis.call('TYPE', KEYS[index])['ok']
  if kind ~= 'none' and kind ~= expected[index] then
    return redis.error_reply('key ' .. KEYS[index] .. ' has type ' .. kind ..
      ', not ' .. expected[index] .. '; use a prefix no other program uses')
  end
end
"""

# KEYS: flow hash, events list, index. ARGV: version, record JSON, event
# JSON, index score, flow id. Returns 1 when created, 0 when the id exists.
# An events list without its flow hash is left over from a flow that was
# deleted by hand or evicted. Its events cannot belong to the new flow, so
# the script deletes them.
_CREATE_SCRIPT = (
    _TYPE_CHECKS
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'record', ARGV[2])
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
return 1
"""
)

# KEYS: flow hash, events list, index. ARGV: expected stored version, new
# version, record JSON, event JSON, index score, flow id. Returns 1 when
# saved, 0 when the stored version differs, -1 when the flow does not exist.
_COMMIT_SCRIPT = (
    _TYPE_CHECKS
    + """
local current = redis.call('HGET', KEYS[1], 'version')
if not current then
  return -1
end
if current ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'record', ARGV[3])
redis.call('RPUSH', KEYS[2], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[6])
return 1
"""
)

# KEYS: flow hash, events list, index. ARGV: flow id, expected version or an
# empty string for any version. Returns 1 when deleted, 0 when the stored
# version differs, -1 when the flow does not exist.
_DELETE_SCRIPT = (
    _TYPE_CHECKS
    + """
local current = redis.call('HGET', KEYS[1], 'version')
if not current then
  return -1
end
if ARGV[2] ~= '' and current ~= ARGV[2] then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"""
)


class RedisStore:
    """Keep flows and audit events in Redis, shared by every process using it.

    Args:
        url: a `redis://` or `rediss://` URL, as `redis.Redis.from_url`
            accepts it, such as redis://:password@host:6379/0.
        prefix: the start of every key the store uses; give each
            application its own.
        timeout: seconds to wait for a connection and for each reply.

    Raises:
        ConfigError: `prefix` is empty.
        StoreUnavailableError: the server cannot be reached or rejects the
            credentials.

    A failed connection or a timeout raises StoreUnavailableError, and the store
    never retries: a `commit` whose reply was lost may have been applied, so
    reload the flow before deciding again.
    """

    # NOTE: Redis Cluster is not supported: a script touches the flow's keys
    # and the shared index, which a cluster spreads over several slots.

    def __init__(
        self, url: str, *, prefix: str = DEFAULT_PREFIX, timeout: float = 5.0
    ) -> None:
        if not prefix:
            raise ConfigError(
                "the Redis key prefix is empty; set one such as 'flowengine:' so "
                "the store's keys cannot clash with other programs' keys"
            )
        self.prefix = prefix
        self.timeout = timeout
        self._location = redact_url(url)
        self._passwords = _passwords_in(url)
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=30,
            decode_responses=True,
        )
        self._create = self._client.register_script(_CREATE_SCRIPT)
        self._commit = self._client.register_script(_COMMIT_SCRIPT)
        self._delete = self._client.register_script(_DELETE_SCRIPT)
        self._index = f"{prefix}flows"
        with self._reachable():
            self._client.ping()
        logger.info("Redis store at %s with prefix %r", self._location, prefix)

    def __repr__(self) -> str:
        return f"RedisStore({self._location!r}, prefix={self.prefix!r})"

    def create(self, record: FlowRecord, event: AuditEvent) -> None:
        arguments = [
            str(record.version),
            json.dumps(record.to_dict()),
            json.dumps(event.to_dict()),
            repr(record.updated_at),
            record.id,
        ]
        with self._reachable(writing=True):
            created = self._create(keys=self._keys(record.id), args=arguments)
        if int(created) != 1:
            raise ConflictError(record.id, -1)

    def load(self, flow_id: str) -> FlowRecord:
        with self._reachable():
            raw = self._client.hget(self._flow_key(flow_id), "record")
        if raw is None:
            raise FlowNotFoundError(flow_id)
        return FlowRecord.from_dict(json.loads(cast(str, raw)))

    def commit(self, record: FlowRecord, event: AuditEvent) -> None:
        arguments = [
            str(record.version - 1),
            str(record.version),
            json.dumps(record.to_dict()),
            json.dumps(event.to_dict()),
            repr(record.updated_at),
            record.id,
        ]
        with self._reachable(writing=True):
            outcome = int(self._commit(keys=self._keys(record.id), args=arguments))
        if outcome == -1:
            raise FlowNotFoundError(record.id)
        if outcome != 1:
            raise ConflictError(record.id, record.version - 1)

    def events(self, flow_id: str) -> list[AuditEvent]:
        with self._reachable():
            rows = cast(
                list[str], self._client.lrange(self._events_key(flow_id), 0, -1)
            )
            if not rows and not self._client.exists(self._flow_key(flow_id)):
                raise FlowNotFoundError(flow_id)
        return [AuditEvent.from_dict(json.loads(row)) for row in rows]

    def flows(self) -> list[FlowRecord]:
        """Return every flow, the least recently updated first."""
        with self._reachable():
            flow_ids = cast(list[str], self._client.zrange(self._index, 0, -1))
            raw_records: list[str | None] = []
            for start in range(0, len(flow_ids), _BATCH):
                raw_records.extend(self._load_batch(flow_ids[start : start + _BATCH]))
        return [
            FlowRecord.from_dict(json.loads(raw))
            for raw in raw_records
            if raw is not None
        ]

    def delete(self, flow_id: str, *, expected_version: int | None = None) -> None:
        """Remove the flow's hash, its events list and its index entry at once.

        Raises:
            FlowNotFoundError: no such flow.
            ConflictError: `expected_version` is given and differs from the
                stored version; nothing is removed.
        """
        expected = "" if expected_version is None else str(expected_version)
        with self._reachable(writing=True):
            outcome = int(
                self._delete(keys=self._keys(flow_id), args=[flow_id, expected])
            )
        if outcome == -1:
            raise FlowNotFoundError(flow_id)
        if outcome != 1:
            assert expected_version is not None
            raise ConflictError(flow_id, expected_version)

    def close(self) -> None:
        """Close the store's connections to Redis."""
        self._client.close()

    def _load_batch(self, flow_ids: list[str]) -> list[str | None]:
        pipeline = self._client.pipeline(transaction=False)
        for flow_id in flow_ids:
            pipeline.hget(self._flow_key(flow_id), "record")
        return cast(list[str | None], pipeline.execute())

    def _flow_key(self, flow_id: str) -> str:
        return f"{self.prefix}flow:{flow_id}"

    def _events_key(self, flow_id: str) -> str:
        return f"{self.prefix}events:{flow_id}"

    def _keys(self, flow_id: str) -> list[str]:
        return [self._flow_key(flow_id), self._events_key(flow_id), self._index]

    @contextmanager
    def _reachable(self, *, writing: bool = False) -> Iterator[None]:
        """Turn the client's connection errors into StoreUnavailableError."""
        maybe_applied = _MAYBE_APPLIED if writing else ""
        try:
            yield
        except redis.exceptions.TimeoutError as exc:
            raise StoreUnavailableError(
                f"Redis at {self._location} timed out after {self.timeout} s; check "
                f"that the server is running and not overloaded{maybe_applied}"
            ) from exc
        except redis.exceptions.ConnectionError as exc:
            raise StoreUnavailableError(
                f"cannot use Redis at {self._location}: {self._reason(exc)}; check "
                "that the server is running and that the store URL names the "
                f"right host, port and credentials{maybe_applied}"
            ) from exc

    def _reason(self, error: Exception) -> str:
        reason = str(error).strip().rstrip(".") or type(error).__name__
        for password in self._passwords:
            reason = reason.replace(password, "[secure]")
        return reason


def _passwords_in(url: str) -> set[str]:
    """Return the URL's password as written and decoded, to mask in messages."""
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    found = {parts.password or "", query.get("password", "")}
    found |= {urllib.parse.unquote(password) for password in found}
    return {password for password in found if password}
