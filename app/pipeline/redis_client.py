"""The Redis client: one server, or a Redis Cluster when REDIS_CLUSTER is set.

Everything the service keeps in Redis works on a cluster: each key is used on its own (no
multi-key command spans two hash slots), and each click stream shard `clicks:{i}` carries its own
hash tag, so the shards spread over the cluster's primaries. With a cluster, REDIS_URL names any
one node; redis-py's `RedisCluster` learns the others and follows slot moves.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import Connection
from redis.exceptions import RedisClusterException, RedisError

from app.settings import Settings

RedisClient = Redis | RedisCluster

# What "Redis is unavailable" can look like. The cluster client's own errors (no node reachable,
# slot not covered) are not RedisErrors.
REDIS_UNAVAILABLE: tuple[type[Exception], ...] = (
    RedisError,
    RedisClusterException,
    OSError,
    TimeoutError,
)


def connect(settings: Settings, **options: Any) -> RedisClient:
    if settings.redis_cluster:
        return RedisCluster.from_url(settings.redis_url, **options)
    return Redis.from_url(settings.redis_url, **options)


async def new_connection_for(redis: RedisClient, key: str, **overrides: Any) -> Connection:
    """A connection of our own (outside the client's pool) to the server that holds `key`: on a
    cluster, the primary that owns the key's hash slot now. Not yet connected."""
    if isinstance(redis, RedisCluster):
        await redis.initialize()  # learns the slots on first use; a no-op afterwards
        node = redis.get_node_from_key(key)
        if node is None:
            raise RedisClusterException(f"no node owns the slot of {key!r}")
        connection_class: Any = node.connection_class
        kwargs = node.connection_kwargs
    else:
        pool = redis.connection_pool
        connection_class, kwargs = pool.connection_class, pool.connection_kwargs
    connection: Connection = connection_class(**{**kwargs, **overrides})
    return connection
