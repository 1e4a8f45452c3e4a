"""Long-running processes besides the API: the flusher."""
