"""Storage: PostgreSQL pool and repositories (plain SQL), the Redis click buffer, the flusher."""
