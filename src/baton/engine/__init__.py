"""The engine: replaying workflows, executing steps, leases and workers."""
