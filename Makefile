SHELL := /bin/bash
# sops-webhook — see README.md. `make demo` and `make test` work on a fresh
# machine: they first build or install the test bed into .cache/testbed.

GO        ?= go
FUZZTIME  ?= 2m
FUZZCOUNT ?= 3000x
BIN       := bin/webhook
PLUGIN    := bin/kubectl-sops_webhook
# The build command the Dockerfile runs too (checked by `make check-dockerfile`).
BUILD_CMD := CGO_ENABLED=0 $(GO) build -trimpath -ldflags=-s -o $(BIN) ./cmd/webhook

.PHONY: all build test unit e2e e2e-node fuzz-short fuzz testbed demo image vet check-dockerfile clean bench soak

all: build

## build: the webhook binary and the kubectl plugin (kubectl sops-webhook), static, into bin/
build:
	$(BUILD_CMD)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags=-s -o $(PLUGIN) ./cmd/kubectl-sops_webhook

## testbed: build or install kube-apiserver, etcd, sops, helm, age-keygen, promtool, Flux, and the real node (cached)
testbed:
	test/testbed/install.sh all

## demo: run the webhook for real on an embedded local control plane
demo: testbed
	$(GO) run ./test/demo

## test: every test — vet, unit, golden, e2e through a real API server, short fuzz runs
test: testbed vet check-dockerfile unit e2e fuzz-short
	@echo "make test: all passed"

vet:
	$(GO) vet ./...

unit:
	$(GO) test -short ./...

# e2e builds the webhook binary from source at run time, which go test's
# cache cannot see: never cache it.
e2e:
	$(GO) test -count=1 -timeout 30m ./test/e2e/

## e2e-node: only the tests on the test bed's real node (TestNode, TestRealPods); make e2e runs them too
e2e-node: testbed
	$(GO) test -count=1 -timeout 30m -run 'TestNode|TestRealPods' -v ./test/e2e/

# fuzz-short runs each fuzz target for a fixed number of executions (no
# wall-clock budget to race: see test/fuzz.sh).
fuzz-short:
	FUZZTIME=$(FUZZCOUNT) test/fuzz.sh

## fuzz: every fuzz target for minutes, keeping the corpus in testdata/fuzz (FUZZTIME=10m make fuzz)
fuzz:
	FUZZTIME=$(FUZZTIME) KEEP_CORPUS=1 test/fuzz.sh

## bench: measure against baselines in the same run; writes docs/benchmarks.md and docs/benchmarks.svg
bench: testbed
	$(GO) run ./test/bench -out docs/benchmarks.md

## soak: a bounded stream of creates with faults injected (SOAK=3m make soak); writes docs/soak.md
SOAK ?= 3m
soak: testbed
	$(GO) run ./test/soak -duration $(SOAK) -out docs/soak.md

## check-dockerfile: the Dockerfile builds with the same command as `make build`, on a digest-pinned non-root base, and tools/image reproduces its last stage
check-dockerfile:
	@grep -qF -- '$(subst $(GO),go,$(BUILD_CMD))' Dockerfile || { echo "Dockerfile does not run: $(subst $(GO),go,$(BUILD_CMD))"; exit 1; }
	@grep -qE '^FROM gcr.io/distroless/static-debian12:nonroot@sha256:[0-9a-f]{64}$$' Dockerfile || { echo "Dockerfile: the runtime base must be distroless static nonroot, pinned by digest"; exit 1; }
	@grep -qx 'USER 65532:65532' Dockerfile || { echo "Dockerfile: must run as USER 65532:65532"; exit 1; }
	@$(GO) run ./tools/image -check || { echo "Dockerfile: tools/image cannot reproduce its last stage"; exit 1; }

## image: container image with docker or podman when one has an engine running, else the docker archive bin/sops-webhook-image.tar (tools/image)
IMAGE_TAR := bin/sops-webhook-image.tar
image:
	@engine=$$(command -v docker || command -v podman || true); \
	if [ -n "$$engine" ] && $$engine info >/dev/null 2>&1; then \
		echo "==> $$engine build -t sops-webhook:dev ."; $$engine build -t sops-webhook:dev .; \
	else \
		echo "==> no container engine answers: building $(IMAGE_TAR) with go-containerregistry"; \
		$(BUILD_CMD) && $(GO) run ./tools/image -binary $(BIN) -out $(IMAGE_TAR) -tag sops-webhook:dev; \
	fi

clean:
	rm -rf bin
