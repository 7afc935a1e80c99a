"""Partition ownership when a worker starts serving a model at runtime."""

from __future__ import annotations

import time
from pathlib import Path

from redis.asyncio import Redis

from sluiceway.split.connection import Broker
from sluiceway.split.keys import Keys
from sluiceway.split.membership import Membership
from sluiceway.split.wire import WorkerRecord
from tests.conftest import fast_settings
from tests.redis_server import RedisServer


async def test_a_model_no_other_worker_serves_is_read_at_once_and_a_shared_one_after_handover(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    settings = fast_settings(broker_url=redis_server.url, broker_prefix=f"own-{tmp_path.name}")
    keys = Keys(settings.broker_prefix, settings.broker_partitions)
    redis = Redis.from_url(redis_server.url)
    broker = Broker(redis_server.url)
    try:
        # Another live worker serves knn: partitions this one wins of knn wait for the hand-over.
        await redis.hset(keys.workers, "other", WorkerRecord(("knn",), time.time()).encode())
        membership = Membership(settings, keys, broker, "this", ["knn"], dict)
        await membership.beat()
        assert membership.owned == []

        await membership.serve("loaded-now", True)  # a model loaded at runtime
        await membership.beat()

        assert sorted(membership.owned) == sorted(keys.all_jobs("loaded-now"))
        await membership.serve("loaded-now", False)  # its load failed: others may take it
        await membership.beat()
        assert membership.owned == []
        await membership.leave()
    finally:
        await broker.close()
        await redis.aclose()
