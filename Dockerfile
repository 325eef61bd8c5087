# syntax=docker/dockerfile:1
# Myelin: one image, one binary; -target picks the services a container runs.
#   docker build -t myelin .
#   docker run -e MYELIN_DATABASE_URL=postgres://... -p 8008:8008 myelin
#   docker run ... myelin -config /etc/myelin/myelin.yaml -target room-server
# See deploy/README.md for the split shape (docker-compose.yml, Helm chart).

ARG GO_IMAGE=golang:1.26
ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot

FROM ${GO_IMAGE} AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-buildvcs=false
# The go.work workspace (root module, pkg, proto, services/*) is
# bind-mounted (writes discarded) and module downloads are cached across
# builds, so a new workspace module needs no change here.
RUN --mount=type=bind,target=/src,rw \
    --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    go mod download && \
    go build -trimpath -ldflags="-s -w" -o /out/myelin ./cmd/myelin && \
    mkdir -p /out/data/media

FROM ${RUNTIME_IMAGE}
COPY --from=build /out/myelin /usr/local/bin/myelin
COPY deploy/docker/myelin.yaml /etc/myelin/myelin.yaml
# data_dir (embedded NATS store in the all-in-one shape, media/ for the
# media service's file backend), owned by nonroot, so that volumes mounted
# there start out writable.
COPY --from=build --chown=65532:65532 /out/data /var/lib/myelin
WORKDIR /var/lib/myelin
USER 65532:65532
# 8008: HTTP (Matrix client/key APIs, edge); 9000: internal gRPC.
EXPOSE 8008 9000
ENTRYPOINT ["/usr/local/bin/myelin"]
CMD ["-config", "/etc/myelin/myelin.yaml"]
