"""Use cases that span several repositories; transactions are committed here, and Redis is told
about a change only after its commit."""
