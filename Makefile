# Myelin — see README.md. Every target runs from a clean checkout.
GO        ?= go
BIN       := bin
PROTO_DIR := proto
PROTOS    := $(shell find $(PROTO_DIR) -name '*.proto' | sort)
# Modules of the workspace (go.work); tests run in each.
MODULES   := . ./pkg ./proto ./services/appservice ./services/roomserver ./services/clientapi ./services/keyserver ./services/presence ./services/media ./services/fedreceiver ./services/fedsender

.PHONY: all build run test test-unit test-e2e jsclient-deps s3-server interop dendrite proto proto-check vet lint bench bench-quick bench-compare bench-compare-quick bench-go bench-tools clean fuzz

all: build

# `myelin version` prints VERSION (git describe of the checkout).
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)

build:
	$(GO) build -ldflags "-X github.com/myelin-chat/myelin/pkg/myelin.version=$(VERSION)" -o $(BIN)/myelin ./cmd/myelin

# All-in-one: every service in one process, embedded NATS JetStream, and a
# local PostgreSQL cluster in ./data when no database URL is configured.
run: build
	@test -f myelin.yaml || ./$(BIN)/myelin generate-config > myelin.yaml
	./$(BIN)/myelin -config myelin.yaml

# Unit tests in every module, then the end-to-end suite (both shapes, and
# the matrix-js-sdk conversation, whose packages npm ci installs first).
# Every step runs even when an earlier one fails; the failed steps are listed
# at the end and make test fails. The media service's S3 backend is tested
# against a real S3 server (versitygw, built by s3-server).
test: build jsclient-deps s3-server
	@failed=""; \
	for m in $(MODULES); do \
		echo "== go test $$m"; \
		(cd $$m && MYELIN_BIN=$(CURDIR)/$(BIN)/myelin MYELIN_S3_SERVER=$(CURDIR)/$(VERSITYGW) $(GO) test -count=1 -timeout 12m ./...) || failed="$$failed\n  go test $$m"; \
	done; \
	echo "== go test ./tests/crosscheck (GOEXPERIMENT=jsonv2: mautrix's PDU code needs encoding/json/v2)"; \
	GOEXPERIMENT=jsonv2 $(GO) test -count=1 -timeout 5m ./tests/crosscheck || failed="$$failed\n  go test ./tests/crosscheck"; \
	echo "== go test ./tests/e2ee (-tags goolm: mautrix's crypto on its pure Go Olm)"; \
	$(GO) test -count=1 -timeout 5m -tags goolm ./tests/e2ee || failed="$$failed\n  go test ./tests/e2ee"; \
	if [ -n "$$failed" ]; then printf "== FAILED:%b\n" "$$failed"; exit 1; fi; \
	echo "== all tests passed"

# The S3-compatible server the media service's S3 backend is tested
# against: versitygw (Apache-2.0) with its posix backend, built from the Go
# module proxy at a pinned version into bin/ (nothing of it is committed).
# services/media's tests start it on a free port with a temporary directory
# and fail without it.
VERSITYGW_VERSION := v1.8.0
VERSITYGW         := $(BIN)/versitygw-$(VERSITYGW_VERSION)

s3-server: $(VERSITYGW)

$(VERSITYGW):
	@mkdir -p $(BIN)/.versitygw-build
	GOBIN=$(CURDIR)/$(BIN)/.versitygw-build GOWORK=off $(GO) install github.com/versity/versitygw/cmd/versitygw@$(VERSITYGW_VERSION)
	mv $(BIN)/.versitygw-build/versitygw $@
	@rmdir $(BIN)/.versitygw-build

# Federation interop with Dendrite (issue #16): builds Dendrite and its
# generate-keys / generate-config tools from the Go module proxy at a pinned
# version into bin/ (nothing of it is committed), then runs
# tests/e2e/interop_dendrite_test.go (build tag interop, so make test does not
# need Dendrite): Dendrite and Myelin (all-in-one, then split) federating
# over HTTPS on loopback, driven by mautrix-go. The pass/fail line per flow
# is printed at the end and kept in bin/interop-report.txt; any failed flow
# fails the target.
DENDRITE_VERSION := v0.13.8
DENDRITE         := $(BIN)/dendrite-$(DENDRITE_VERSION)/dendrite

dendrite: $(DENDRITE)

$(DENDRITE):
	@mkdir -p $(dir $@)
	GOBIN=$(CURDIR)/$(dir $@) GOWORK=off $(GO) install \
		github.com/matrix-org/dendrite/cmd/dendrite@$(DENDRITE_VERSION) \
		github.com/matrix-org/dendrite/cmd/generate-keys@$(DENDRITE_VERSION) \
		github.com/matrix-org/dendrite/cmd/generate-config@$(DENDRITE_VERSION)

interop: build dendrite
	@rm -f $(BIN)/interop-report.txt
	@cd tests/e2e && MYELIN_BIN=$(CURDIR)/$(BIN)/myelin DENDRITE_BIN=$(CURDIR)/$(DENDRITE) \
		INTEROP_REPORT=$(CURDIR)/$(BIN)/interop-report.txt \
		$(GO) test -tags interop -count=1 -timeout 15m -run 'TestDendriteInterop' . ; rc=$$?; \
	cat $(CURDIR)/$(BIN)/interop-report.txt 2>/dev/null; exit $$rc

# tests/jsclient's node_modules, exactly as package-lock.json pins them (from
# npm's cache when it has them). tests/e2e TestJSClient fails without them.
jsclient-deps:
	@command -v npm >/dev/null || { echo "make test needs Node.js 20+ and npm (tests/jsclient drives the server with matrix-js-sdk)" >&2; exit 1; }
	npm ci --prefix tests/jsclient --no-audit --no-fund --prefer-offline

# Go fuzz targets, each run for FUZZTIME (not part of make test, which runs
# only their seed corpora). Each line: module directory, package, target
# [, extra go test flags]. Inputs that fail are written under the
# package's testdata/fuzz/ and then run as seeds by make test; commit them
# with the fix. The route fuzzer needs the test PostgreSQL
# (MYELIN_TEST_DATABASE_URL or pkg/testkit's own cluster); it first replays
# its ~900 seeds (each a request to the real stack), which takes about two
# minutes on a busy 2-core machine, so give it FUZZTIME of several minutes
# to get past them (make fuzz FUZZTIME=5m).
FUZZTIME ?= 30s
FUZZ_TARGETS := \
	./pkg:./matrixhttp:FuzzCheckJSONText \
	./services/clientapi:./internal/push:FuzzPushRules \
	./services/clientapi:./internal/push:FuzzValidActions \
	./services/clientapi:./internal/clientevent:FuzzParseFilter \
	./services/clientapi:./internal/httpapi:FuzzReadObject \
	./services/clientapi:.:FuzzRoutes \
	./services/roomserver:.:FuzzEventTemplate \
	.:./tests/crosscheck:FuzzCanonicalJSON:jsonv2

fuzz:
	@failed=""; \
	for t in $(FUZZ_TARGETS); do \
		mod=$${t%%:*}; rest=$${t#*:}; pkg=$${rest%%:*}; rest=$${rest#*:}; target=$${rest%%:*}; exp=""; \
		case "$$rest" in *:jsonv2) exp=jsonv2; target=$${rest%%:*};; esac; \
		echo "== fuzz $$target in $$mod/$$pkg for $(FUZZTIME)"; \
		(cd $$mod && GOEXPERIMENT=$$exp $(GO) test -run '^$$' -fuzz "^$$target\$$" -fuzztime $(FUZZTIME) -parallel 1 $$pkg) || failed="$$failed $$target"; \
	done; \
	if [ -n "$$failed" ]; then echo "== fuzz FAILED:$$failed"; exit 1; fi; \
	echo "== fuzz: no failures"

vet:
	@unformatted="$$(git ls-files '*.go' | xargs "$$($(GO) env GOROOT)/bin/gofmt" -l)"; \
	if [ -n "$$unformatted" ]; then echo "not gofmt-formatted:"; echo "$$unformatted"; exit 1; fi
	@failed=""; for m in $(MODULES); do (cd $$m && $(GO) vet ./...) || failed="$$failed $$m"; done; \
	$(GO) vet -tags interop ./tests/e2e || failed="$$failed tests/e2e(-tags interop)"; \
	if [ -n "$$failed" ]; then echo "go vet failed in:$$failed"; exit 1; fi

# Regenerates the committed protobuf code with protoc + protoc-gen-go +
# protoc-gen-go-grpc (installed by `make proto-tools`).
proto:
	protoc -I $(PROTO_DIR) \
		--go_out=$(PROTO_DIR) --go_opt=paths=source_relative \
		--go-grpc_out=$(PROTO_DIR) --go-grpc_opt=paths=source_relative \
		$(PROTOS)

proto-tools:
	$(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
	$(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2

# Fails when the committed generated code differs from what `make proto` makes.
proto-check: proto
	@git diff --exit-code -- $(PROTO_DIR) || (echo "generated protobuf code is stale: run make proto" && exit 1)

clean:
	rm -rf $(BIN)

# ---------------------------------------------------------------------------
# Benchmarks (issue #5): bin/myelin in make run's shape on a fresh data dir,
# driven by the load generator (pkg/loadgen). `make bench` writes
# bench/results/<date>-<commit>.json (+ small pprof profiles) and regenerates
# docs/benchmarks.md with its plots; `make bench-quick` (< 2 min) checks the
# bench itself and keeps everything under bench/tmp/quick. BENCH_FLAGS passes
# load generator flags, e.g. BENCH_FLAGS="-big-rooms 100 -big-members 100"
# for a shorter run. The defaults are the issue's full sizes; a run takes
# about 15 minutes on 2 cores, 9 of them the big account's 89,700 joins.
BENCH_DEFAULTS ?= -serial-messages 3000 -senders 32 -rooms 32 -sweep 1,2,4,8,16,32,64 \
	-step 15s -big-rooms 300 -big-members 300 -big-repeats 3 -big-incremental 20
BENCH_FLAGS ?=

bench-tools:
	$(GO) build -o $(BIN)/myelin-load ./cmd/myelin-load
	$(GO) build -o $(BIN)/myelin-bench ./cmd/myelin-bench

bench: build bench-tools
	./$(BIN)/myelin-bench run -bin $(BIN)/myelin $(BENCH_DEFAULTS) $(BENCH_FLAGS)

# Go microbenchmarks of hot paths (not part of make test): the room-server's
# SendEvent through the real stack, reporting CPU µs per event of the Go
# process and of its PostgreSQL backends (compare those on a shared machine).
bench-go:
	cd services/roomserver && $(GO) test -run '^$$' -bench . -benchmem -benchtime 2000x -count 3 .

bench-quick: build bench-tools
	./$(BIN)/myelin-bench run -bin $(BIN)/myelin -quick -results bench/tmp/quick \
		-tmp bench/tmp/quick -docs bench/tmp/quick/benchmarks.md $(BENCH_FLAGS)

# Myelin and Dendrite (built by `make dendrite`, the version pinned above)
# side by side (issue #20): one PostgreSQL cluster with PostgreSQL's durable
# defaults, Myelin then Dendrite each on a fresh database of it, driven by
# the load generator's portable scenarios (serial send, the closed-loop
# sweep with send-to-sync delivery) at make bench's sizes. Dendrite's
# configuration is cmd/myelin-bench/dendrite.yaml.tmpl (pool that keeps its
# connections, rate limits and federation off). Writes
# bench/results/compare/<date>-<time>-<commit>.json and the ratio table and
# plots of docs/benchmarks.md. bench-compare-quick (a few minutes) checks it
# at small sizes and keeps everything under bench/tmp/compare-quick.
COMPARE_DEFAULTS ?= -serial-messages 3000 -senders 32 -rooms 32 -sweep 1,2,4,8,16,32,64 -step 15s

bench-compare: build bench-tools dendrite
	./$(BIN)/myelin-bench compare -bin $(BIN)/myelin -dendrite $(DENDRITE) -dendrite-version $(DENDRITE_VERSION) \
		$(COMPARE_DEFAULTS) $(BENCH_FLAGS)

bench-compare-quick: build bench-tools dendrite
	./$(BIN)/myelin-bench compare -bin $(BIN)/myelin -dendrite $(DENDRITE) -dendrite-version $(DENDRITE_VERSION) \
		-quick -results bench/tmp/compare-quick -tmp bench/tmp/compare-quick \
		-docs bench/tmp/compare-quick/benchmarks.md $(BENCH_FLAGS)

# ---------------------------------------------------------------------------
# Deployment artifacts (Dockerfile, docker-compose.yml, deploy/helm/myelin),
# checked statically: no Docker engine, no network but the Go module proxy.
# The first run builds helm, kubeconform and the checkers in tools/ (a module
# of its own, outside go.work) into ./bin; later runs take seconds.
.PHONY: deploy-check

KUBECONFORM_VERSION := v0.8.0
HELM_VERSION        := v3.22.0
# Kubernetes release of the schemas; must match k8s.io/api (v0.36.3) in tools/go.mod.
K8S_VERSION         := 1.36.3
CHART               := deploy/helm/myelin
CHART_CI_VALUES     := $(wildcard $(CHART)/ci/*-values.yaml)
DEPLOY_OUT          := $(BIN)/deploy-check
K8S_SCHEMAS         := $(BIN)/kubernetes-schemas/v$(K8S_VERSION)-standalone-strict
DEPLOY_TOOL_SRC     := $(shell find tools -name '*.go' 2>/dev/null) tools/go.mod tools/go.sum

$(BIN)/.kubeconform-$(KUBECONFORM_VERSION):
	GOBIN=$(CURDIR)/$(BIN) GOWORK=off $(GO) install github.com/yannh/kubeconform/cmd/kubeconform@$(KUBECONFORM_VERSION)
	@touch $@

$(BIN)/.helm-$(HELM_VERSION):
	GOBIN=$(CURDIR)/$(BIN) GOWORK=off $(GO) install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
	@touch $@

$(BIN)/.deploy-tools: $(DEPLOY_TOOL_SRC)
	cd tools && GOWORK=off $(GO) build -o ../$(BIN)/ ./cmd/...
	@touch $@

# kubeconform's schemas, generated offline from the Kubernetes OpenAPI
# definitions compiled into tools/cmd/k8s-schemas.
$(K8S_SCHEMAS)/.complete: $(BIN)/.deploy-tools
	rm -rf $(K8S_SCHEMAS)
	$(BIN)/k8s-schemas -out $(BIN)/kubernetes-schemas -kubernetes-version $(K8S_VERSION)

deploy-check: $(BIN)/.kubeconform-$(KUBECONFORM_VERSION) $(BIN)/.helm-$(HELM_VERSION) $(BIN)/.deploy-tools $(K8S_SCHEMAS)/.complete
	cd tools && GOWORK=off $(GO) test -count=1 ./...
	$(BIN)/dockerfile-check Dockerfile
	$(BIN)/compose-check docker-compose.yml
	@rm -rf $(DEPLOY_OUT) && mkdir -p $(DEPLOY_OUT)
	$(BIN)/helm lint --strict --kube-version $(K8S_VERSION) $(CHART)
	$(BIN)/helm template myelin $(CHART) --kube-version $(K8S_VERSION) > $(DEPLOY_OUT)/default.yaml
	@for v in $(CHART_CI_VALUES); do \
		echo "$(BIN)/helm lint --strict --kube-version $(K8S_VERSION) $(CHART) -f $$v"; \
		$(BIN)/helm lint --strict --kube-version $(K8S_VERSION) $(CHART) -f $$v || exit 1; \
		$(BIN)/helm template myelin $(CHART) --kube-version $(K8S_VERSION) -f $$v > $(DEPLOY_OUT)/$$(basename $$v .yaml).yaml || exit 1; \
	done
	$(BIN)/kubeconform -strict -summary -kubernetes-version $(K8S_VERSION) \
		-schema-location '$(K8S_SCHEMAS)/{{ .ResourceKind }}{{ .KindSuffix }}.json' $(DEPLOY_OUT)/*.yaml
	$(BIN)/k8s-check -external-secret myelin-database -external-secret myelin-media-s3 -external-secret myelin-federation-tls -external-secret myelin-appservices \
		$(foreach c,key-server room-server presence client-api media federation-receiver federation-sender appservice,-external-secret myelin-grpc-tls-$(c)) \
		$(DEPLOY_OUT)/*.yaml
