# syntax=docker/dockerfile:1
# Multi-stage build of the webhook: a static binary on distroless, non-root.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags=-s -o bin/webhook ./cmd/webhook

# gcr.io/distroless/static-debian12:nonroot; pin by digest when publishing.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/bin/webhook /webhook
USER 65532:65532
ENTRYPOINT ["/webhook"]
