# The API image: `docker build -t parity-api .` (compose builds it for you).
#
# Two stages on the same base: `builder` installs the pinned requirements.txt into a
# virtualenv, `runtime` copies only that venv and the app. No compiler, package manager
# cache or test file reaches the runtime image; every dependency is installed from a
# wheel (--only-binary), so a build never needs one. docs/docker.md explains each
# choice and the expected size (~235 MB on disk, ~80 MB to pull, on python:3.12-slim).
#
# The base is a build argument so that CI can build this exact file offline against a
# local stand-in base (parity images, the compose e2e); any image with
# python3 and its venv module works.
ARG PYTHON_IMAGE=python:3.12.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
COPY requirements.txt /tmp/requirements.txt
# requirements.txt is a complete lock with hashes (`make lock` exports it from
# pyproject.toml): --require-hashes refuses any file whose sha256 differs from the one
# recorded, --no-deps lets nothing unpinned in, and `pip check` proves the lock is
# complete for this Python. pip itself is removed afterwards: the runtime installs
# nothing (15 MB less, one tool fewer to exploit).
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
        --require-hashes --only-binary=:all: --no-deps -r /tmp/requirements.txt \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/pip uninstall --yes --quiet pip setuptools


FROM ${PYTHON_IMAGE} AS runtime

ARG APP_UID=10001
# PROMETHEUS_MULTIPROC_DIR holds one metrics file per worker: it must stay writable
# when the root filesystem is read-only, and should be memory (compose mounts a tmpfs
# and k8s an emptyDir there). The API on 8000; /ready and /metrics only on 9000, the
# port load balancers, the kubelet and Prometheus use and clients are not given
# (app/listeners.py).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PROMETHEUS_MULTIPROC_DIR=/run/parity/metrics \
    GUNICORN_BIND=0.0.0.0:8000 \
    INTERNAL_BIND=0.0.0.0:9000

# A fixed, numeric, unprivileged uid: Kubernetes' runAsNonRoot can verify it, and volume
# permissions are the same everywhere. No home directory, no login shell.
RUN groupadd --system --gid "${APP_UID}" app \
    && useradd --system --uid "${APP_UID}" --gid app --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin app \
    && mkdir -p /run/parity/metrics \
    && chown app:app /run/parity/metrics

COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY alembic.ini gunicorn.conf.py ./
COPY app ./app
# Byte-compile now: at run time the root filesystem is read-only and
# PYTHONDONTWRITEBYTECODE is set, so this is the only chance to cache it.
RUN python3 -m compileall -q app gunicorn.conf.py

USER ${APP_UID}:${APP_UID}
EXPOSE 8000 9000

# Gunicorn's master handles TERM gracefully (stop accepting, drain, exit 0); see
# docs/shutdown.md. Exec-form CMD makes Gunicorn PID 1, so the signal reaches it.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "app.healthcheck"]
CMD ["gunicorn", "app.main:app", "-c", "gunicorn.conf.py"]
