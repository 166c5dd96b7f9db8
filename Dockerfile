# pyturn in a container.
#
#   docker build -t pyturn .
#   docker run -d --name pyturn --network host -v /etc/reTurn:/etc/reTurn:ro pyturn
#
# /etc/reTurn (a volume) holds reTurnServer.config and the user file it names (plus TLS files when TlsTurnPort is
# set); they must be readable by uid/gid 10001. Ports: 3478/udp+tcp (TurnPort), 5349/tcp (TlsTurnPort) and the
# relay range AllocationPortRangeMin..Max (49152-65535/udp by default). Publishing sixteen thousand UDP ports
# through Docker's proxy is slow, so either use --network host, or set a small range in the config, e.g.
#   AllocationPortRangeMin = 49152 / AllocationPortRangeMax = 49251
# and add  -p 3478:3478/udp -p 3478:3478/tcp -p 5349:5349/tcp -p 49152-49251:49152-49251/udp .
# Behind Docker's NAT set TurnAddress to the container's address and ExternalAddress to the public one.
# The health check asks 127.0.0.1:3478 for a STUN Binding: keep TurnAddress = 0.0.0.0 (or 127.0.0.1) and
# TurnPort = 3478, or override HEALTHCHECK. It tests the STUN service itself, so it stays the container's check.
# Metrics and health over HTTP: set MetricsPort (e.g. 9641; MetricsAddress = 0.0.0.0 to reach it from outside the
# container, on a network only the monitoring can reach: it has no authentication) and publish it with
# -p 9641:9641/tcp. /metrics is for Prometheus, /healthz answers 200 while the process serves and /readyz 200 when
# it is ready for traffic (503 while draining or before users are loaded): use them as liveness and readiness
# probes of an orchestrator, e.g. Kubernetes httpGet probes on those paths. A check on the HTTP endpoint instead:
#   HEALTHCHECK CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:9641/readyz', timeout=3)"]
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /build
COPY pyproject.toml README.md ./
COPY pyturn ./pyturn
RUN pip install . \
    && rm -rf /build \
    && groupadd --system --gid 10001 pyturn \
    && useradd --system --uid 10001 --gid pyturn --no-create-home --home-dir /nonexistent \
               --shell /usr/sbin/nologin pyturn \
    && mkdir -p /etc/reTurn

WORKDIR /
VOLUME ["/etc/reTurn"]
USER pyturn:pyturn

EXPOSE 3478/udp 3478/tcp 5349/tcp

HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-m", "pyturn.probe", "-t", "3", "127.0.0.1", "3478"]

# The container is the supervisor: stay in the foreground, log to stderr, no PID file, no user switch
# (the process already runs as the unprivileged pyturn user). Any of these can be overridden with --Key=Value.
ENTRYPOINT ["pyturn"]
CMD ["/etc/reTurn/reTurnServer.config", "--Daemonize=false", "--PidFile=", "--RunAsUser=", "--RunAsGroup=", \
     "--LoggingType=cerr"]
