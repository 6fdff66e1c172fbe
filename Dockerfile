# The service's image. The build stage compiles mysqlclient's C extension into
# a wheel; the runtime stage has only the client library, the wheels and the
# code, and runs as an unprivileged user. Both stages use one Python: the
# suite runs the compose command with it and the pinned requirements.
FROM python:3.12-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev pkg-config libmariadb-dev \
    && rm -rf /var/lib/apt/lists/*
COPY requirements.txt requirements-client.txt /build/
RUN pip wheel --no-cache-dir --wheel-dir /wheels -r /build/requirements.txt
# The image keeps config.env's defaults but not its password, in no layer:
# compose's env_file and Kubernetes' Secret set MYSQL_PASSWORD where it runs.
COPY config.env /build/
RUN sed -E -i '/^[[:space:]]*(export[[:space:]]+)?MYSQL_PASSWORD[[:space:]]*=/d' /build/config.env

FROM python:3.12-slim-bookworm
# libmariadb3 speaks MySQL 8.4's caching_sha2_password (its plugin ships in the package).
# tini runs as PID 1 (see ENTRYPOINT).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libmariadb3 tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid 10001 --no-create-home app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
WORKDIR /app
COPY *.py *.thrift ./
COPY --from=build /build/config.env ./
COPY servicekit ./servicekit
COPY migrations ./migrations
# Compiled here: a read-only root filesystem (as on Kubernetes) would have
# every probe and start compile them again (about 0.05 s of CPU each time).
RUN python -m compileall -q /app
USER 10001:10001
ENV PYTHONUNBUFFERED=1
EXPOSE 9090 9100
# Calls the health RPC: fails while draining or when the database does not
# answer. --timeout bounds the whole call inside the check's --timeout.
# servicekit.probe answers as client.py health would, at half to a third of its CPU.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "servicekit.probe", "health", "--timeout", "3"]
# PID 1 gets no default action for a signal it has no handler for: python as
# PID 1 would ignore SIGTERM until the server sets its handler, after
# migrating (a migration-lock wait held `docker stop` for its grace period).
# tini is PID 1 and passes signals on: SIGTERM ends a server still starting,
# and drains one that serves.
ENTRYPOINT ["tini", "--"]
CMD ["python", "server.py"]
