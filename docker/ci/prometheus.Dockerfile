# CI only: Prometheus from Debian's package, standing in for prom/prometheus where no registry
# is reachable (docker/ci/compose.ci.yml). Same layout as the official image: config and rules
# mounted at /etc/prometheus, data under /prometheus, running as nobody (65534). Debian's build
# keeps its data in /var/lib/prometheus/metrics2 unless told otherwise: that path leads to
# /prometheus, where the official image keeps it (docker-compose.yml's command names neither).
ARG BASE_IMAGE=debian:12.11-slim
# checkov:skip=CKV_DOCKER_7: the base is a build argument (CI's local Debian); its default is a pinned tag
# checkov:skip=CKV_DOCKER_2: the compose test waits on this service's own HTTP endpoint, as for the official image
# hadolint ignore=DL3006
FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir /prometheus \
    && chown 65534:65534 /prometheus \
    && rm -rf /var/lib/prometheus/metrics2 \
    && ln -s /prometheus /var/lib/prometheus/metrics2
USER 65534:65534
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
