"""admin: the status page, the admin JSON-RPC API and Prometheus metrics."""
