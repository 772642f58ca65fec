"""HTTP routes, one module per resource: queue, sync, files, health, storage."""
