# fedns: federation-aware authoritative DNS for multi-cluster Kubernetes.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY resolver ./resolver
COPY zones ./zones
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
# Runs as an unprivileged user; port 53 is reached through the Service (targetPort 5353)
# or with NET_BIND_SERVICE, so the process never needs root.
RUN useradd --system --uid 10053 --no-create-home fedns
COPY --from=build /install /usr/local
COPY zones /etc/fedns/zones
USER 10053
EXPOSE 5353/udp 5353/tcp 8053/tcp
ENTRYPOINT ["fedns"]
CMD ["serve", "-c", "/etc/fedns/zones/demo.yaml", "--dns", "0.0.0.0:5353", "--admin", "0.0.0.0:8053"]
