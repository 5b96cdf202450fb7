# One replicad replica per container (docs/deploy.md; a three-replica cluster:
# deploy/docker-compose.yml).
#
#   docker build -t replicad .
#   docker run -d --network host -e REPLICAD_ID=1 \
#       -v /etc/replicad/cluster.ini:/etc/replicad/cluster.ini:ro \
#       -v replicad-1:/var/lib/replicad replicad
#
# The replica listens where its [replica:N] section says (with --network host: the
# machine's addresses, as in deploy/cluster.example.ini).  The config must be readable
# by uid 10001.  Arguments after the image name reach twistd's replicad, e.g.
# `--log-format json`.

# Build stage: a wheel, so the final image holds no sources and no build tools.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml setup.cfg README.md LICENSE ./
COPY replicad ./replicad
COPY twisted ./twisted
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    REPLICAD_CONFIG=/etc/replicad/cluster.ini
# A fixed, numeric uid (10001): Kubernetes' runAsNonRoot can check it, and a bind-mounted
# data dir can be chowned to it on the host.  The data dir is the user's alone (0700),
# and the database files in it are created 0600.
RUN groupadd --system --gid 10001 replicad \
 && useradd --system --uid 10001 --gid replicad --no-create-home \
        --home-dir /var/lib/replicad --shell /usr/sbin/nologin replicad \
 && install -d -o replicad -g replicad -m 0700 /var/lib/replicad \
 && install -d -m 0755 /etc/replicad
COPY --from=build /wheels /wheels
# Installed as root; twistd's plugin cache is written now, because the replicad user
# cannot write into site-packages at run time.
RUN pip install --no-cache-dir /wheels/*.whl \
 && rm -rf /wheels \
 && python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))" \
 && twistd replicad --help > /dev/null
WORKDIR /var/lib/replicad
VOLUME ["/var/lib/replicad"]
# client, peer and admin ports as in deploy/cluster.example.ini (the config decides)
EXPOSE 7001 7101 7201
USER 10001:10001
# Alive = /healthz on this replica's admin port, found in the config (`admin = host:port`
# in its [replica:N] section; without one the check fails and says so).  Python's
# urllib: no curl in a slim image.  A failure prints one line, "unhealthy: <why>".
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.excepthook = lambda t, e, tb: print(f'unhealthy: {e}'); from replicad.config import load_config; m = load_config(os.environ['REPLICAD_CONFIG']).member(int(os.environ['REPLICAD_ID'])); assert m.admin, f'replica {m.id} has no admin address in {os.environ[\"REPLICAD_CONFIG\"]}'; urllib.request.urlopen(f'http://{m.admin}/healthz', timeout=4).close()"]
# exec: twistd is PID 1 and gets docker stop's SIGTERM (a clean shutdown).  --pidfile=
# writes none: a pidfile left by a killed container would name PID 1, alive, and stop
# the next start.  -n logs to stdout (docker logs).
ENTRYPOINT ["/bin/sh", "-c", "exec twistd -n --pidfile= replicad --id \"${REPLICAD_ID:?set REPLICAD_ID to this replica's id}\" --config \"${REPLICAD_CONFIG}\" --data-dir /var/lib/replicad \"$@\"", "replicad"]
CMD []
