"""The Lua scripts split mode runs in Redis, called by their SHA1."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from sluiceway.split.line import pack


@dataclass(frozen=True)
class Script:
    """A Lua script called by its SHA1, so Redis neither receives nor hashes the source per call.

    Redis forgets loaded scripts when it restarts (or on SCRIPT FLUSH); the broker connection
    (``connection.py``) loads them when it connects, and again when a call answers NOSCRIPT.
    """

    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())

    def call(self, keys: Sequence[str], args: Sequence[str | bytes | int | float]) -> bytes:
        """One packed ``EVALSHA`` of the script, for the broker's pipelined line."""
        return pack("EVALSHA", self.sha, len(keys), *keys, *args)

    async def load(self, redis: Redis) -> None:
        """Make sure Redis knows the script."""
        await redis.script_load(self.source)


def missing(reply: object) -> bool:
    """Whether a reply says Redis did not know the script (so it did not run)."""
    return isinstance(reply, ResponseError) and str(reply).startswith("NOSCRIPT")


# Admit a job only while fewer than ARGV[1] jobs of its model are queued or running, so a full
# queue answers 503 instead of stream trimming silently dropping accepted work.
# KEYS: partition stream, the model's queued counter. ARGV: bound, job bytes. Nil when full.
ADMIT = Script("""
local queued = redis.call('INCR', KEYS[2])
if queued > tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[2])
  return false
end
return redis.call('XADD', KEYS[1], '*', 'j', ARGV[2])
""")

# Finish jobs: acknowledge, delete and uncount them. Only entries still pending are uncounted,
# so a job answered twice (a claimed job whose first worker was only slow) is counted once.
# KEYS: partition stream, the model's queued counter. ARGV: group, entry ids...
FINISH = Script("""
local acked = redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
if acked > 0 and redis.call('DECRBY', KEYS[2], acked) < 0 then
  redis.call('SET', KEYS[2], 0)
end
return acked
""")

# Set a model's desired state (an operator's load or unload) with the deployment's next
# generation, and say so on the model channel, in one step: a worker that reads the hash after
# the message always finds the change. KEYS: desired hash, generation counter.
# ARGV: model, "loaded" or "unloaded", channel. Returns the generation.
DESIRE = Script("""
local generation = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. generation)
redis.call('PUBLISH', ARGV[3], 'd' .. generation)
return generation
""")
