"""`JobStore` on a Redis server (`redis://HOST:PORT/DB`): one queue for many machines.

Every state change that touches more than one key is one Lua script, so Redis runs it atomically
(a claim, a cancel and a completion never interleave, across any number of API replicas and
workers). Layout, all under a key prefix (`ovi:` by default, `?prefix=` in the URL):

    {p}job:{id}         hash   the job's fields (JSON for dicts; an absent field is None)
    {p}logs:{id}        list   JSON log lines
    {p}seq              int    insertion counter (claim order within a priority)
    {p}queue            zset   waiting jobs, score priority * 1e12 + seq: ZRANK is the position
    {p}jobs             zset   every job, score seq (listings: `recent`)
    {p}deadlines        zset   waiting jobs with a start deadline, score the deadline
    {p}running          hash   running job id -> worker id (fencing: only that worker completes)
    {p}done             zset   completed jobs by finish time (retention sweep)
    {p}hooks_due        zset   completed jobs whose webhook is not in the outbox yet
    {p}workers          set    worker ids; {p}worker:{id} hash: the heartbeat record
    {p}delivery:{id}    hash   one webhook delivery (url, user_id, body, attempts, ...)
    {p}outbox           zset   pending deliveries by next attempt time (a lease pushes it on)
    {p}outbox_failed    zset   deliveries given up, by creation time (swept)

Durability is the server's: run it with `appendonly yes` (and `appendfsync everysec` or
`always`); see docs/scale-out.md for what is lost without them. Time is the clients' clock
(as with SQLite), so the machines' clocks must agree (NTP) to well under the heartbeat timeout.

A lost connection is retried with bounded backoff for `retry_s` seconds (a restarting Redis),
then raised as `StoreUnavailableError`: the API answers it with 503 and `Retry-After`.
"""

from __future__ import annotations

import functools
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import fields as dataclass_fields
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from server.jobs.base import (
    CANCELLED,
    PRIORITIES,
    START_TIMEOUT,
    WORKER_LOST,
    Delivery,
    Job,
    JobError,
    JobStatus,
    LogEntry,
    NewJob,
    Outcome,
    WorkerInfo,
    iso_timestamp,
)
from server.jobs.errors import (
    JobAlreadyCompletedError,
    JobNotFoundError,
    QueueFullError,
    StoreUnavailableError,
)

DEFAULT_PREFIX = "ovi:"
_PRIORITY_STRIDE = 10**12  # queue score = priority * stride + seq: exact in a double
_JSON_FIELDS = ("input", "result", "metrics", "input_files", "error")
_FLOAT_FIELDS = ("created_at", "started_at", "finished_at", "start_deadline")
_FIELDS_NO_INPUT = [f.name for f in dataclass_fields(Job) if f.name != "input"]

T = TypeVar("T")


def _lua_str(text: str) -> str:
    return "[==[" + text + "]==]"


# Shared Lua helpers, prepended to every script. KEYS are not declared (one Redis, not a
# cluster): ARGV[1] is always the key prefix.
_PRELUDE = f"""
local P = ARGV[1]
local STRIDE = {_PRIORITY_STRIDE}
local START_TIMEOUT = {_lua_str(json.dumps(START_TIMEOUT.to_dict()))}
local CANCELLED = {_lua_str(json.dumps(CANCELLED.to_dict()))}
local WORKER_LOST = {_lua_str(json.dumps(WORKER_LOST.to_dict()))}

local function log(id, now, level, source, message)
  redis.call('RPUSH', P..'logs:'..id, cjson.encode({{ts=now, level=level, source=source,
    message=message}}))
end

local function finish(id, now, result, err, metrics)
  local jk = P..'job:'..id
  redis.call('HSET', jk, 'status', 'COMPLETED', 'finished_at', now)
  if result then redis.call('HSET', jk, 'result', result) else redis.call('HDEL', jk, 'result') end
  if err then redis.call('HSET', jk, 'error', err) else redis.call('HDEL', jk, 'error') end
  if metrics then redis.call('HSET', jk, 'metrics', metrics) end
  redis.call('ZREM', P..'queue', id)
  redis.call('ZREM', P..'deadlines', id)
  redis.call('HDEL', P..'running', id)
  redis.call('ZADD', P..'done', now, id)
  if redis.call('HEXISTS', jk, 'webhook_url') == 1 then
    redis.call('HSET', jk, 'webhook_state', 'due')
    redis.call('ZADD', P..'hooks_due', now, id)
  end
end

local function fail(id, now, err, message)
  finish(id, now, false, err, false)
  local level = 'ERROR'
  if err == CANCELLED then level = 'INFO' end
  log(id, now, level, 'SYSTEM', message)
end

local function expire(now)
  local ids = redis.call('ZRANGEBYSCORE', P..'deadlines', '-inf', '('..now)
  for _, id in ipairs(ids) do
    fail(id, now, START_TIMEOUT, cjson.decode(START_TIMEOUT)['message'])
  end
  return #ids
end

local function requeue(id)
  local jk = P..'job:'..id
  local prio = tonumber(redis.call('HGET', jk, 'priority'))
  local seq = tonumber(redis.call('HGET', jk, 'seq'))
  redis.call('HSET', jk, 'status', 'IN_QUEUE')
  redis.call('HDEL', jk, 'started_at', 'worker_id', 'start_deadline')
  redis.call('HDEL', P..'running', id)
  redis.call('ZADD', P..'queue', prio * STRIDE + seq, id)
end

local function clear_worker_job(worker)
  local wk = P..'worker:'..worker
  if redis.call('EXISTS', wk) == 1 then redis.call('HDEL', wk, 'job_id') end
end

local function held(id, worker)
  local jk = P..'job:'..id
  return redis.call('HGET', jk, 'status') == 'IN_PROGRESS'
    and redis.call('HGET', jk, 'worker_id') == worker
end
"""

# ARGV: prefix, id, max_queue (-1: none), priority, deadline ('' none), field, value...
_SUBMIT = """
local id = ARGV[2]
local jk = P..'job:'..id
if redis.call('EXISTS', jk) == 1 then return redis.error_reply('duplicate request id') end
local maxq = tonumber(ARGV[3])
if maxq >= 0 and redis.call('ZCARD', P..'queue') >= maxq then return 0 end
local seq = redis.call('INCR', P..'seq')
redis.call('HSET', jk, 'seq', seq, unpack(ARGV, 6))
redis.call('ZADD', P..'queue', tonumber(ARGV[4]) * STRIDE + seq, id)
redis.call('ZADD', P..'jobs', seq, id)
if ARGV[5] ~= '' then redis.call('ZADD', P..'deadlines', ARGV[5], id) end
return redis.call('HGETALL', jk)
"""

# ARGV: prefix, now
_EXPIRE = "return expire(ARGV[2])"

# ARGV: prefix, worker, now
_CLAIM = """
local worker, now = ARGV[2], ARGV[3]
expire(now)
local popped = redis.call('ZPOPMIN', P..'queue')
if #popped == 0 then return false end
local id = popped[1]
local jk = P..'job:'..id
redis.call('ZREM', P..'deadlines', id)
redis.call('HSET', jk, 'status', 'IN_PROGRESS', 'started_at', now, 'worker_id', worker)
redis.call('HINCRBY', jk, 'attempts', 1)
redis.call('HSET', P..'running', id, worker)
local wk = P..'worker:'..worker
if redis.call('EXISTS', wk) == 1 then redis.call('HSET', wk, 'job_id', id) end
return redis.call('HGETALL', jk)
"""

# ARGV: prefix, id, now
_CANCEL = """
local id, now = ARGV[2], ARGV[3]
expire(now)
local jk = P..'job:'..id
local status = redis.call('HGET', jk, 'status')
if not status then return 'missing' end
if status == 'COMPLETED' then return 'done' end
if status == 'IN_QUEUE' then
  fail(id, now, CANCELLED, 'Cancelled while in the queue')
else
  redis.call('HSET', jk, 'cancel_requested', '1')
  log(id, now, 'INFO', 'SYSTEM', 'Cancellation requested')
end
return redis.call('HGETALL', jk)
"""

# ARGV: prefix, id, worker, now, result, error, metrics ('' each: none)
_COMPLETE = """
local id, worker, now = ARGV[2], ARGV[3], ARGV[4]
if not held(id, worker) then return 0 end
local function opt(v) if v == '' then return false end return v end
finish(id, now, opt(ARGV[5]), opt(ARGV[6]), opt(ARGV[7]))
clear_worker_job(worker)
return 1
"""

# ARGV: prefix, id, worker, now
_RELEASE = """
local id, worker, now = ARGV[2], ARGV[3], ARGV[4]
if not held(id, worker) then return 0 end
local jk = P..'job:'..id
if redis.call('HGET', jk, 'cancel_requested') == '1' then
  finish(id, now, false, CANCELLED, false)
else
  requeue(id)
  local attempts = tonumber(redis.call('HGET', jk, 'attempts') or '0')
  redis.call('HSET', jk, 'attempts', math.max(attempts - 1, 0))
  log(id, now, 'INFO', 'SYSTEM', 'Server stopping: back in the queue')
end
clear_worker_job(worker)
return 1
"""

# ARGV: prefix, worker id, fields (field, value, ...); job_id/started_at only on first beat
_HEARTBEAT = """
local wk = P..'worker:'..ARGV[2]
local fresh = redis.call('EXISTS', wk) == 0
for i = 3, #ARGV, 2 do
  local name = ARGV[i]
  if fresh or (name ~= 'job_id' and name ~= 'started_at') then
    if ARGV[i + 1] == '' and name == 'job_id' then redis.call('HDEL', wk, name)
    else redis.call('HSET', wk, name, ARGV[i + 1]) end
  end
end
redis.call('SADD', P..'workers', ARGV[2])
"""

# ARGV: prefix, max_attempts, now, worker ids...
_RECOVER = """
local max_attempts, now = tonumber(ARGV[2]), ARGV[3]
local dead = {}
for i = 4, #ARGV do dead[ARGV[i]] = true end
local running = redis.call('HGETALL', P..'running')
local recovered = {}
for i = 1, #running, 2 do
  local id, worker = running[i], running[i + 1]
  if dead[worker] then
    local jk = P..'job:'..id
    local attempts = tonumber(redis.call('HGET', jk, 'attempts') or '0')
    if redis.call('HGET', jk, 'cancel_requested') == '1' then
      finish(id, now, false, CANCELLED, false)
    elseif attempts < max_attempts then
      requeue(id)
      log(id, now, 'WARNING', 'SYSTEM', 'Worker lost; re-queued (attempt '..(attempts + 1)..
        ' of '..max_attempts..')')
    else
      fail(id, now, WORKER_LOST, cjson.decode(WORKER_LOST)['message'])
    end
    table.insert(recovered, id)
  end
end
for i = 4, #ARGV do
  redis.call('DEL', P..'worker:'..ARGV[i])
  redis.call('SREM', P..'workers', ARGV[i])
end
return recovered
"""

# ARGV: prefix, cutoff
_STALE = """
local cutoff = tonumber(ARGV[2])
local stale, known = {}, {}
for _, w in ipairs(redis.call('SMEMBERS', P..'workers')) do
  known[w] = true
  local beat = tonumber(redis.call('HGET', P..'worker:'..w, 'heartbeat_at') or '0')
  if beat < cutoff then table.insert(stale, w) end
end
local seen = {}
local running = redis.call('HGETALL', P..'running')
for i = 2, #running, 2 do
  local w = running[i]
  if not known[w] and not seen[w] then table.insert(stale, w); seen[w] = true end
end
return stale
"""

# ARGV: prefix, cutoff
_SWEEP = """
local cutoff = ARGV[2]
local n = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P..'done', '-inf', '('..cutoff)) do
  local state = redis.call('HGET', P..'job:'..id, 'webhook_state')
  if not state or state == 'sent' then
    redis.call('DEL', P..'job:'..id, P..'logs:'..id)
    redis.call('ZREM', P..'done', id)
    redis.call('ZREM', P..'jobs', id)
    n = n + 1
  end
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P..'outbox_failed', '-inf', '('..cutoff)) do
  redis.call('DEL', P..'delivery:'..id)
  redis.call('ZREM', P..'outbox_failed', id)
end
return n
"""

# ARGV: prefix, request id, JSON entry: a log line, for a job that (still) exists
_APPEND_LOG = """
if redis.call('EXISTS', P..'job:'..ARGV[2]) == 1 then
  redis.call('RPUSH', P..'logs:'..ARGV[2], ARGV[3])
end
"""

# ARGV: prefix, request id. Forget the job everywhere; its record as it was (false: unknown).
_DELETE = """
local id = ARGV[2]
local jk = P..'job:'..id
local record = redis.call('HGETALL', jk)
if #record == 0 then return false end
local worker = redis.call('HGET', P..'running', id)
if worker then
  local wk = P..'worker:'..worker
  if redis.call('HGET', wk, 'job_id') == id then redis.call('HDEL', wk, 'job_id') end
end
redis.call('DEL', jk, P..'logs:'..id, P..'delivery:'..id)
redis.call('HDEL', P..'running', id)
for _, z in ipairs({'queue', 'deadlines', 'done', 'hooks_due', 'jobs', 'outbox', 'outbox_failed'}) do
  redis.call('ZREM', P..z, id)
end
return record
"""

# ARGV: prefix, request id, url, user id, body, attempts, next_at, now
_ADD_DELIVERY = """
local id = ARGV[2]
local dk = P..'delivery:'..id
local added = 0
if redis.call('EXISTS', dk) == 0 then
  redis.call('HSET', dk, 'url', ARGV[3], 'user_id', ARGV[4], 'body', ARGV[5],
    'attempts', ARGV[6], 'state', 'pending', 'created_at', ARGV[8])
  redis.call('ZADD', P..'outbox', ARGV[7], id)
  added = 1
end
local jk = P..'job:'..id
if redis.call('HGET', jk, 'webhook_state') == 'due' then
  redis.call('HSET', jk, 'webhook_state', 'sent')
end
redis.call('ZREM', P..'hooks_due', id)
return added
"""

# ARGV: prefix, limit, now, lease end
_CLAIM_DELIVERIES = """
local ids = redis.call('ZRANGEBYSCORE', P..'outbox', '-inf', ARGV[3], 'LIMIT', 0, ARGV[2])
local out = {}
for _, id in ipairs(ids) do
  redis.call('ZADD', P..'outbox', ARGV[4], id)
  local d = redis.call('HMGET', P..'delivery:'..id, 'url', 'body', 'user_id', 'attempts')
  table.insert(out, {id, d[1], d[2], d[3], d[4]})
end
return out
"""

# ARGV: prefix, request id, error ('' delivered), retry_at ('' give up)
_FINISH_DELIVERY = """
local id = ARGV[2]
local dk = P..'delivery:'..id
if ARGV[3] == '' then
  redis.call('DEL', dk)
  redis.call('ZREM', P..'outbox', id)
  return 1
end
if redis.call('EXISTS', dk) == 0 then return 0 end
redis.call('HINCRBY', dk, 'attempts', 1)
redis.call('HSET', dk, 'last_error', ARGV[3])
if ARGV[4] ~= '' then
  redis.call('HSET', dk, 'state', 'pending')
  redis.call('ZADD', P..'outbox', ARGV[4], id)
else
  redis.call('HSET', dk, 'state', 'failed')
  redis.call('ZREM', P..'outbox', id)
  redis.call('ZADD', P..'outbox_failed', redis.call('HGET', dk, 'created_at'), id)
end
return 1
"""


def parse_redis_url(url: str) -> tuple[str, str]:
    """(connection URL, key prefix) of `redis://HOST:PORT/DB[?prefix=ovi:]`."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError(f"a Redis job store URL is redis://HOST:PORT/DB, not {url!r}")
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise ValueError(f"the Redis database in {url!r} must be a number (redis://HOST:PORT/0)")
    query = parse_qs(parts.query)
    prefix = query.pop("prefix", [DEFAULT_PREFIX])[0]
    if query:
        raise ValueError(f"unknown Redis job store option(s) {sorted(query)} in {url!r}")
    if parts.port is None:
        raise ValueError(f"a Redis job store URL names its port: redis://HOST:PORT/DB, not {url!r}")
    return parts._replace(query="", fragment="").geturl(), prefix


def _unavailable(method: Callable[..., T]) -> Callable[..., T]:
    """Redis connection failures (after the client's retries) become `StoreUnavailableError`."""

    @functools.wraps(method)
    def guarded(self: RedisJobStore, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise StoreUnavailableError(message=f"job store unavailable: {exc}") from exc

    return guarded


class RedisJobStore:
    """Redis implementation of `server.jobs.base.JobStore` (safe across processes and hosts)."""

    def __init__(self, url: str, *, retry_s: float = 2.0, socket_timeout_s: float = 5.0) -> None:
        self.url, self.prefix = parse_redis_url(url)
        # Bounded reconnects: waits of 0.05, 0.1, 0.2, 0.4, 0.8 s, then 1 s each: `retry_s` in all.
        retries, waited = 0, 0.0
        while waited < retry_s:
            waited += min(1.0, 0.05 * 2**retries)
            retries += 1
        self._client = redis.Redis.from_url(
            self.url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=min(socket_timeout_s, 2.0),
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), max(1, retries)),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
            health_check_interval=30,
        )
        scripts = {
            "submit": _SUBMIT,
            "expire": _EXPIRE,
            "claim": _CLAIM,
            "cancel": _CANCEL,
            "complete": _COMPLETE,
            "release": _RELEASE,
            "heartbeat": _HEARTBEAT,
            "recover": _RECOVER,
            "stale": _STALE,
            "sweep": _SWEEP,
            "delete": _DELETE,
            "append_log": _APPEND_LOG,
            "add_delivery": _ADD_DELIVERY,
            "claim_deliveries": _CLAIM_DELIVERIES,
            "finish_delivery": _FINISH_DELIVERY,
        }
        # register_script runs EVALSHA and reloads the script after a restart (NOSCRIPT).
        self._scripts = {
            name: self._client.register_script(_PRELUDE + body) for name, body in scripts.items()
        }

    def __repr__(self) -> str:
        return f"RedisJobStore({self.url!r}, prefix={self.prefix!r})"

    # --- plumbing ---

    def _run(self, name: str, *args: Any) -> Any:
        return self._scripts[name](args=[self.prefix, *args])

    def _k(self, *parts: str) -> str:
        return self.prefix + "".join(parts)

    @staticmethod
    def _job(raw: dict[bytes, bytes] | list[bytes]) -> Job:
        if isinstance(raw, list):  # HGETALL from a script: a flat list
            raw = dict(zip(raw[::2], raw[1::2], strict=True))
        data = {k.decode(): v.decode() for k, v in raw.items()}
        values: dict[str, Any] = {
            "id": data["id"],
            "app": data["app"],
            "status": JobStatus(data["status"]),
            "priority": PRIORITIES[int(data["priority"])],
            "base_url": data.get("base_url", ""),
            "cancel_requested": data.get("cancel_requested") == "1",
            "attempts": int(data.get("attempts", 0)),
            "worker_id": data.get("worker_id"),
            "webhook_url": data.get("webhook_url"),
            "gateway_request_id": data.get("gateway_request_id"),
            "user_id": data.get("user_id", "local"),
        }
        for name in _FLOAT_FIELDS:
            values[name] = float(data[name]) if name in data else None
        loaded = {name: json.loads(data[name]) for name in _JSON_FIELDS if name in data}
        values["input"] = loaded.get("input", {})
        values["result"] = loaded.get("result")
        values["metrics"] = loaded.get("metrics") or {}
        values["input_files"] = loaded.get("input_files") or {}
        values["error"] = JobError.from_dict(loaded["error"]) if "error" in loaded else None
        return Job(**values)

    # --- routes ---

    @_unavailable
    def submit(self, job: NewJob, *, max_queue_size: int | None = None) -> Job:
        now = time.time()
        request_id = job.request_id or str(uuid.uuid4())
        deadline = now + job.start_timeout_s if job.start_timeout_s else None
        fields: dict[str, str] = {
            "id": request_id,
            "app": job.app,
            "input": json.dumps(job.input),
            "status": JobStatus.IN_QUEUE.value,
            "priority": str(PRIORITIES.index(job.priority)),
            "created_at": repr(now),
            "base_url": job.base_url,
            "attempts": "0",
            "cancel_requested": "0",
            "metrics": "{}",
            "user_id": job.user_id,
            "input_files": json.dumps(job.input_files),
        }
        if deadline is not None:
            fields["start_deadline"] = repr(deadline)
        if job.webhook_url:
            fields["webhook_url"] = job.webhook_url
            fields["gateway_request_id"] = str(uuid.uuid4())
        pairs = [item for pair in fields.items() for item in pair]
        added = self._run(
            "submit",
            request_id,
            -1 if max_queue_size is None else max_queue_size,
            PRIORITIES.index(job.priority),
            "" if deadline is None else repr(deadline),
            *pairs,
        )
        if not added:
            raise QueueFullError(request_id)
        return self._job(added)  # as stored: no deadline applied yet, as with SQLite

    @_unavailable
    def get(self, request_id: str, *, with_input: bool = True) -> Job:
        key = self._k("job:", request_id)
        if with_input:
            raw = self._client.hgetall(key)
        else:  # every field but the input (a status poll must not read a 10 MB prompt)
            values = self._client.hmget(key, _FIELDS_NO_INPUT)
            raw = {
                n.encode(): v
                for n, v in zip(_FIELDS_NO_INPUT, values, strict=True)
                if v is not None
            }
        if not raw:
            raise JobNotFoundError(request_id)
        job = self._job(raw)
        if (
            job.status is JobStatus.IN_QUEUE
            and job.start_deadline is not None
            and job.start_deadline < time.time()
        ):
            self.expire_overdue()
            return self.get(request_id, with_input=with_input)
        return job

    @_unavailable
    def queue_position(self, request_id: str) -> int | None:
        rank = self._client.zrank(self._k("queue"), request_id)
        return None if rank is None else int(rank)

    @_unavailable
    def logs(self, request_id: str, *, since: int = 0) -> list[LogEntry]:
        rows = self._client.lrange(self._k("logs:", request_id), since, -1)
        entries = [json.loads(r) for r in rows]
        return [
            LogEntry(e["message"], e["level"], e["source"], iso_timestamp(float(e["ts"])))
            for e in entries
        ]

    @_unavailable
    def cancel(self, request_id: str) -> Job:
        answer = self._run("cancel", request_id, repr(time.time()))
        if answer == b"missing":
            raise JobNotFoundError(request_id)
        if answer == b"done":
            raise JobAlreadyCompletedError(request_id)
        return self._job(answer)

    @_unavailable
    def counts(self) -> dict[str, int]:
        pipe = self._client.pipeline(transaction=True)
        pipe.zcard(self._k("queue"))
        pipe.hlen(self._k("running"))
        waiting, running = pipe.execute()
        return {JobStatus.IN_QUEUE.value: int(waiting), JobStatus.IN_PROGRESS.value: int(running)}

    # --- workers ---

    @_unavailable
    def claim(self, worker_id: str) -> Job | None:
        raw = self._run("claim", worker_id, repr(time.time()))
        return self._job(raw) if raw else None

    @_unavailable
    def append_log(
        self, request_id: str, message: str, *, level: str = "INFO", source: str = "USER"
    ) -> None:
        entry = {"ts": time.time(), "level": level, "source": source, "message": message}
        self._run("append_log", request_id, json.dumps(entry))

    @_unavailable
    def is_cancel_requested(self, request_id: str) -> bool:
        flag = self._client.hget(self._k("job:", request_id), "cancel_requested")
        return flag is None or flag == b"1"  # a deleted job (no record) stops too

    @_unavailable
    def complete(self, request_id: str, worker_id: str, outcome: Outcome) -> bool:
        return bool(
            self._run(
                "complete",
                request_id,
                worker_id,
                repr(time.time()),
                "" if outcome.result is None else json.dumps(outcome.result),
                "" if outcome.error is None else json.dumps(outcome.error.to_dict()),
                "" if outcome.metrics is None else json.dumps(outcome.metrics),
            )
        )

    @_unavailable
    def release(self, request_id: str, worker_id: str) -> bool:
        return bool(self._run("release", request_id, worker_id, repr(time.time())))

    @_unavailable
    def heartbeat(self, info: WorkerInfo) -> None:
        fields = {
            "state": info.state,
            "heartbeat_at": repr(info.heartbeat_at),
            "host": info.host,
            "pid": str(info.pid),
            "detail": info.detail,
            "job_id": info.job_id or "",
            "started_at": repr(info.started_at or info.heartbeat_at),
            "metrics": json.dumps(info.metrics),
        }
        self._run("heartbeat", info.id, *[item for pair in fields.items() for item in pair])

    @_unavailable
    def workers(self) -> list[WorkerInfo]:
        ids = sorted(m.decode() for m in self._client.smembers(self._k("workers")))
        pipe = self._client.pipeline(transaction=False)
        for worker_id in ids:
            pipe.hgetall(self._k("worker:", worker_id))
        found: list[WorkerInfo] = []
        for worker_id, raw in zip(ids, pipe.execute(), strict=True):
            if not raw:
                continue  # removed between the two reads
            data = {k.decode(): v.decode() for k, v in raw.items()}
            found.append(
                WorkerInfo(
                    id=worker_id,
                    state=data["state"],  # type: ignore[arg-type]
                    heartbeat_at=float(data["heartbeat_at"]),
                    host=data.get("host", ""),
                    pid=int(data.get("pid", 0)),
                    job_id=data.get("job_id") or None,
                    detail=data.get("detail", ""),
                    started_at=float(data.get("started_at", 0)),
                    metrics=json.loads(data.get("metrics") or "[]"),
                )
            )
        return sorted(found, key=lambda w: (w.started_at, w.id))

    @_unavailable
    def remove_worker(self, worker_id: str) -> None:
        pipe = self._client.pipeline(transaction=True)
        pipe.delete(self._k("worker:", worker_id))
        pipe.srem(self._k("workers"), worker_id)
        pipe.execute()

    # --- maintenance ---

    @_unavailable
    def recover(self, worker_ids: list[str], *, max_attempts: int) -> list[str]:
        if not worker_ids:
            return []
        ids = self._run("recover", max_attempts, repr(time.time()), *worker_ids)
        return [i.decode() for i in ids]

    @_unavailable
    def stale_workers(self, older_than_s: float) -> list[str]:
        return [w.decode() for w in self._run("stale", repr(time.time() - older_than_s))]

    @_unavailable
    def expire_overdue(self) -> int:
        return int(self._run("expire", repr(time.time())))

    @_unavailable
    def queue_depths(self) -> dict[str, int]:
        pipe = self._client.pipeline(transaction=False)
        for rank in range(len(PRIORITIES)):
            pipe.zcount(
                self._k("queue"), rank * _PRIORITY_STRIDE, f"({(rank + 1) * _PRIORITY_STRIDE}"
            )
        return dict(zip(PRIORITIES, (int(n) for n in pipe.execute()), strict=True))

    @_unavailable
    def recent(
        self,
        *,
        limit: int = 20,
        after: str | None = None,
        newest_first: bool = True,
        user_id: str | None = None,
    ) -> list[Job]:
        index = self._k("jobs")
        if after is None:
            bound = "+inf" if newest_first else "-inf"
        else:
            seq = self._client.zscore(index, after)
            if seq is None:
                raise JobNotFoundError(after)
            bound = f"({int(seq)}"
        found: list[Job] = []
        page = max(limit, 1) if user_id is None else 200
        while len(found) < limit:
            if newest_first:  # (id, seq) pairs: the last seq bounds the next page
                page_ids = self._client.zrevrangebyscore(
                    index, bound, "-inf", start=0, num=page, withscores=True
                )
            else:
                page_ids = self._client.zrangebyscore(
                    index, bound, "+inf", start=0, num=page, withscores=True
                )
            if not page_ids:
                break
            pipe = self._client.pipeline(transaction=False)
            for request_id, _ in page_ids:
                pipe.hgetall(self._k("job:", request_id.decode()))
            for raw in pipe.execute():
                if raw:
                    job = self._job(raw)
                    if user_id is None or job.user_id == user_id:
                        found.append(job)
            bound = f"({int(page_ids[-1][1])}"
        return found[: max(0, limit)]

    @_unavailable
    def delete(self, request_id: str) -> Job:
        record = self._run("delete", request_id)
        if not record:
            raise JobNotFoundError(request_id)
        return self._job(record)

    @_unavailable
    def sweep(self, older_than_s: float) -> int:
        return int(self._run("sweep", repr(time.time() - older_than_s)))

    # --- webhook outbox ---

    @_unavailable
    def webhooks_due(self, limit: int = 100) -> list[Job]:
        ids = self._client.zrange(self._k("hooks_due"), 0, limit - 1)
        pipe = self._client.pipeline(transaction=False)
        for request_id in ids:
            pipe.hgetall(self._k("job:", request_id.decode()))
        return [self._job(raw) for raw in pipe.execute() if raw]

    @_unavailable
    def add_delivery(self, delivery: Delivery, *, not_before: float | None = None) -> bool:
        now = time.time()
        return bool(
            self._run(
                "add_delivery",
                delivery.request_id,
                delivery.url,
                delivery.user_id,
                delivery.body,
                delivery.attempts,
                repr(now if not_before is None else not_before),
                repr(now),
            )
        )

    @_unavailable
    def claim_deliveries(
        self, limit: int, *, lease_s: float, now: float | None = None
    ) -> list[Delivery]:
        now = time.time() if now is None else now
        rows = self._run("claim_deliveries", limit, repr(now), repr(now + lease_s))
        return [
            Delivery(
                request_id=r[0].decode(),
                url=r[1].decode(),
                body=bytes(r[2]),
                user_id=r[3].decode(),
                attempts=int(r[4]),
            )
            for r in rows
        ]

    @_unavailable
    def finish_delivery(
        self, request_id: str, *, error: str | None = None, retry_at: float | None = None
    ) -> None:
        self._run(
            "finish_delivery",
            request_id,
            "" if error is None else (error or "failed"),
            "" if retry_at is None else repr(retry_at),
        )

    @_unavailable
    def next_delivery_at(self) -> float | None:
        first = self._client.zrange(self._k("outbox"), 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    @_unavailable
    def delivery_counts(self) -> dict[str, int]:
        pipe = self._client.pipeline(transaction=True)
        pipe.zcard(self._k("outbox"))
        pipe.zcard(self._k("outbox_failed"))
        pending, failed = pipe.execute()
        return {k: int(n) for k, n in (("pending", pending), ("failed", failed)) if n}

    def close(self) -> None:
        self._client.close()
