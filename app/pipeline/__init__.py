"""The stream machinery, free of business: event codecs, the group-commit buffer, the spool, the
flusher engine, the Redis client and every Redis key name. It knows events, not conversions."""
