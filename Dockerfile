# One image per service, built from the repository root:
#   docker build --build-arg SERVICE=risk -t qmp-risk .
# An execution image that hosts the reference strategies adds the lab (without its plotting extra):
#   docker build --build-arg SERVICE=execution --build-arg WITH_PACKAGES="qmp-lab" -t qmp-execution .
FROM python:3.11-slim
ARG SERVICE
ARG WITH_PACKAGES=""
ENV UV_PYTHON_DOWNLOADS=never PYTHONUNBUFFERED=1 NUMBA_CACHE_DIR=/var/cache/numba
RUN test -n "$SERVICE" || (echo "build with --build-arg SERVICE=collector|risk|execution|deployer" >&2; exit 1)
RUN pip install --no-cache-dir uv==0.13.8
WORKDIR /app
# Dependency layer first: every member's pyproject, then the third-party packages only; cached while only
# source changes.
COPY pyproject.toml ./
COPY libs/qmp_core/pyproject.toml libs/qmp_core/pyproject.toml
COPY libs/qmp_kernels/pyproject.toml libs/qmp_kernels/pyproject.toml
COPY libs/qmp_lab/pyproject.toml libs/qmp_lab/pyproject.toml
COPY libs/qmp_ops/pyproject.toml libs/qmp_ops/pyproject.toml
COPY libs/qmp_venues/pyproject.toml libs/qmp_venues/pyproject.toml
COPY services/collector/pyproject.toml services/collector/pyproject.toml
COPY services/risk/pyproject.toml services/risk/pyproject.toml
COPY services/execution/pyproject.toml services/execution/pyproject.toml
COPY services/deployer/pyproject.toml services/deployer/pyproject.toml
RUN uv sync --no-dev --no-install-workspace --package "qmp-$SERVICE" \
    $(for p in $WITH_PACKAGES; do printf -- '--package %s ' "$p"; done)
COPY libs libs
COPY services services
RUN uv sync --no-dev --package "qmp-$SERVICE" $(for p in $WITH_PACKAGES; do printf -- '--package %s ' "$p"; done)
# The kernels compiled now, into the image's Numba cache (a build that cannot compile them fails): a service
# starts without compiling, and with a read-only root filesystem (docker-compose.yml) it could not cache.
RUN mkdir -p /var/cache/numba && case "$SERVICE" in \
        risk|execution) /app/.venv/bin/python -m "qmp_$SERVICE" --warm-kernels ;; \
    esac
RUN useradd --system --no-create-home qmp && chown -R qmp /var/cache/numba
USER qmp
ENV SERVICE=$SERVICE
CMD ["sh", "-c", "exec /app/.venv/bin/python -m qmp_$SERVICE"]
