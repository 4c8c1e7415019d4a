"""HTTP: health and readiness checks, Prometheus metrics, the admin dashboard."""
