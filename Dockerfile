# fedns: federation-aware authoritative DNS for multi-cluster Kubernetes.
#
# One pinned base for both stages (tag and digest of the multi-arch index), so the wheels
# built in the first stage match the interpreter of the second.
FROM python:3.11.13-slim-bookworm@sha256:86adf8dbadc3d6e82ee5dd2c74bec2e1c2467cdad47886280501df722372d2e1 AS base
# No .pyc written at run time (the root filesystem is read-only; pip compiles them at
# install), logs unbuffered, pip quiet about itself.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# -- build: the fedns wheel and every dependency's, installed into a venv ------------------
FROM base AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY resolver ./resolver
COPY zones ./zones
# Binary wheels only: the final image gets no compiler, and neither does this stage.
RUN pip wheel --only-binary=:all: --wheel-dir /wheels . \
 && python -m venv /opt/fedns \
 && /opt/fedns/bin/pip install --no-index --find-links /wheels fedns \
 && /opt/fedns/bin/pip uninstall --yes pip

# -- final: the venv and an unprivileged user, nothing else -----------------------------------
FROM base
RUN groupadd --system --gid 10053 fedns \
 && useradd --system --uid 10053 --gid 10053 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin fedns
COPY --from=build /opt/fedns /opt/fedns
ENV PATH=/opt/fedns/bin:$PATH
USER 10053:10053
WORKDIR /tmp
# 5353 for DNS (no root and no NET_BIND_SERVICE needed; the Service maps 53 to it), 8053 admin.
EXPOSE 5353/udp 5353/tcp 8053/tcp
# slim has no curl: the interpreter asks the admin API itself.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8053/healthz', timeout=2)"]
ENTRYPOINT ["fedns"]
# The demo shipped in the package (zones/), on every address; the Helm chart passes --config.
CMD ["serve", "--dns", "0.0.0.0:5353", "--admin", "0.0.0.0:8053"]
