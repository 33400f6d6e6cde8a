# syntax=docker/dockerfile:1
# Multi-stage build of the webhook: a static binary on distroless, non-root.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags=-s -o bin/webhook ./cmd/webhook

# Static, non-root, no shell, pinned by digest: the tag says what it is, the
# digest decides which image it is. Refresh it with a reviewed commit, e.g.
#   crane digest gcr.io/distroless/static-debian12:nonroot
FROM gcr.io/distroless/static-debian12:nonroot@sha256:d093aa3e30dbadd3efe1310db061a14da60299baff8450a17fe0ccc514a16639
COPY --from=build /src/bin/webhook /webhook
USER 65532:65532
ENTRYPOINT ["/webhook"]
