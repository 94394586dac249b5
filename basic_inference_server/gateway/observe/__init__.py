"""What the gateway shows of itself: Prometheus metrics, the dashboard's activity, system
status, and the OpenAPI document."""
