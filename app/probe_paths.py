"""The paths of the probes and the scrape, defined once.

A leaf (no imports): the container's health check (app/healthcheck.py, standard library
only), the listener guard, tracing's exclusions and the routes themselves all read
them here. The deploy files (Dockerfile, compose.yaml, k8s/, observability/) name the
same paths as text; tests/test_deploy_k8s.py checks the probes' and the tests call them
by their literal paths, the API's contract.
"""

HEALTH_PATH = "/health"  # liveness: the process and its event loop answer
READY_PATH = "/ready"  # readiness: Postgres answers
METRICS_PATH = "/metrics"  # Prometheus' scrape
PROBE_AND_SCRAPE_PATHS = frozenset({HEALTH_PATH, READY_PATH, METRICS_PATH})
