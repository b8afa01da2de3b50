# syntax=docker/dockerfile:1
#
# One image per allot service, the service named by a build argument:
#
#   docker build --build-arg SERVICE=meter --build-arg VERSION=0.1.0 \
#     --build-arg REVISION=$(git rev-parse HEAD) -t ghcr.io/allot/meter:0.1.0 .
#
# (`make images` builds every service in services/, passing all three.)
# VERSION, REVISION and MODIFIED are linked into pkg/service: the binary's
# -version, allot_build_info and its micro version say them (the build
# context has no .git, so the Go toolchain cannot stamp a revision). The result is a static
# binary on distroless "static" as user nonroot (65532): no shell, no
# package manager, nothing else to patch.

ARG GO_VERSION=1.26.8

FROM golang:${GO_VERSION} AS build
ARG SERVICE
ARG VERSION
ARG REVISION
ARG MODIFIED
RUN test -n "${SERVICE}" || { echo "build with --build-arg SERVICE=<name>, a directory of services/" >&2; exit 1; }
WORKDIR /src
COPY . .
# Each module builds alone (GOWORK=off; siblings through its replace
# directives), so the workspace file and the other services play no part.
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    cd "services/${SERVICE}" && \
    pkg=github.com/allot/allot/pkg/service && \
    GOWORK=off CGO_ENABLED=0 go build -trimpath \
      -ldflags="-s -w -X ${pkg}.version=${VERSION} -X ${pkg}.revision=${REVISION} -X ${pkg}.modified=${MODIFIED}" \
      -o /out/service "./cmd/${SERVICE}"

FROM gcr.io/distroless/static-debian12:nonroot
ARG SERVICE
LABEL org.opencontainers.image.source="https://github.com/allot/allot" \
      org.opencontainers.image.title="allot-${SERVICE}"
COPY --from=build /out/service /usr/local/bin/allot-service
USER 65532:65532
# /metrics, /healthz, /readyz (ALLOT_HTTP_ADDR).
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/allot-service"]
