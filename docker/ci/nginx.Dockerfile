# CI only: nginx from Debian's package, standing in for the official nginx image where no
# registry is reachable (docker/ci/compose.ci.yml). The config is the project's, mounted as in
# production: /etc/nginx/nginx.conf.
ARG BASE_IMAGE=debian:12.11-slim
# checkov:skip=CKV_DOCKER_7: the base is a build argument (CI's local Debian); its default is a pinned tag
# checkov:skip=CKV_DOCKER_2: the compose test waits on this service's own HTTP endpoint, as for the official image
# checkov:skip=CKV_DOCKER_3: stands in for the official nginx image: master as root, workers as nobody
# hadolint ignore=DL3006
FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx \
    && rm -rf /var/lib/apt/lists/* \
    && ln -sf /dev/stdout /var/log/nginx/access.log \
    && ln -sf /dev/stderr /var/log/nginx/error.log
EXPOSE 8000
# SIGQUIT: nginx finishes the requests in flight, as the official image does.
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
