"""Prometheus metrics: every metric the service exports is declared here, once.

Names and labels follow the OpenTelemetry semantic conventions as exported to
Prometheus (dots become underscores, units become suffixes). Under Gunicorn,
prometheus_client runs in multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by
gunicorn.conf.py before anything imports prometheus_client), so each gauge declares how
the per-worker values are combined.
"""

from __future__ import annotations

from prometheus_client import Counter

# Cache-aside outcomes: result is "hit", "miss" or "bypass" (Redis unavailable).
CACHE_LOOKUPS = Counter(
    "cache_lookups_total",
    "Cache lookups by cache and result.",
    ["cache", "result"],
)

# Failed calls to a dependency that the service survived (fallback, fail-open, ...).
DEPENDENCY_ERRORS = Counter(
    "dependency_errors_total",
    "Errors talking to a dependency, by dependency and operation.",
    ["dependency", "operation"],
)

# Rate limiter decisions: outcome is "allowed", "limited", "fail_open" (Redis unavailable,
# request let through) or "fail_closed" (Redis unavailable, request refused with 503).
RATE_LIMIT_DECISIONS = Counter(
    "ratelimit_decisions_total",
    "Rate limiter decisions by policy and outcome.",
    ["policy", "outcome"],
)
