"""The metric families /metrics must expose (README "Metrics"), with their
types: what tests/app/test_metrics.py and tests/e2e/test_metrics.py check."""

from __future__ import annotations

FAMILIES = {
    "quart_app_http_requests": "counter",
    "quart_app_http_request_duration_seconds": "histogram",
    "quart_app_http_received_bytes": "counter",
    "quart_app_http_sent_bytes": "counter",
    "quart_app_uploads_in_flight": "gauge",
    "quart_app_workers": "gauge",
    "quart_app_resumable_uploads_created": "counter",
    "quart_app_resumable_uploads_finished": "counter",
    "quart_app_resumable_uploads_expired": "counter",
    "quart_app_group_commit_batch_size": "histogram",
    "quart_app_database_errors": "counter",
    "quart_app_import_queue_depth": "gauge",
    "quart_app_import_queue_age_seconds": "gauge",
}
