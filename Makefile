# forkwatch — `make help` lists the targets.

# Go as Debian 12 machines here have it, also when /usr/local/go/bin is not
# on the caller's PATH (the tests run go too).
export PATH := $(PATH):/usr/local/go/bin
GO        ?= go
# The BPF objects are generated with this exact compiler (Debian 12's
# clang-19) so that a regeneration reproduces the committed files.
CLANG     ?= clang-19
LLVMSTRIP ?= llvm-strip-19
BPF_CFLAGS := -O2 -g -Wall -Werror

# The image's link flags, as deploy/Dockerfile has them (deploy's tests check
# they match): the arm64 VM cells run the binary the image would ship.
VERSION       ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
IMAGE_LDFLAGS := -s -w -X main.version=$(VERSION)

export BPF2GO_CC     := $(CLANG)
export BPF2GO_STRIP  := $(LLVMSTRIP)
export BPF2GO_CFLAGS := $(BPF_CFLAGS)

GENERATED := tracer/forkwatch_x86_bpfel.go tracer/forkwatch_x86_bpfel.o \
             tracer/forkwatch_arm64_bpfel.go tracer/forkwatch_arm64_bpfel.o

.PHONY: help build run deps generate check-generate vet test test-unit test-e2e test-deploy test-vm test-vm-arm64 bench fuzz clean

help: ## show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## build bin/forkwatch (no clang needed: the BPF objects are committed)
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/forkwatch ./cmd/forkwatch

run: build ## build and run forkwatch on this node (needs root), e.g. make run ARGS="-o json"
	./bin/forkwatch $(ARGS)

deps: ## install what the test suite needs and a Debian 12 machine lacks (root; test/deps.sh)
	test/deps.sh

generate: ## regenerate the BPF objects and their Go bindings from bpf/ with $(CLANG)
	$(GO) generate ./tracer/

check-generate: generate ## fail if the committed BPF objects differ from a regeneration
	@git diff --exit-code --stat -- $(GENERATED) || { echo "committed BPF objects are stale: run make generate and commit"; exit 1; }

vet: ## go vet and gofmt
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }

test-unit: ## unit tests (no root needed)
	$(GO) test ./tracer/... ./output/... ./cmd/...

test-e2e: ## end-to-end tests on this machine's kernel (root; skipped without, failed under CI=true)
	$(GO) test -count=1 -v ./test/e2e/

fuzz: ## run each fuzz target briefly (seed corpora in testdata/fuzz)
	$(GO) test -run=NONE -fuzz=FuzzDecodeFailure -fuzztime=300000x ./tracer/
	$(GO) test -run=NONE -fuzz=FuzzAppendFailure -fuzztime=300000x ./output/
	$(GO) test -run=NONE -fuzz=FuzzParseCgroupPath -fuzztime=300000x ./output/node/kube/
	$(GO) test -run=NONE -fuzz=FuzzParsePodLogDirName -fuzztime=300000x ./output/node/kube/

test-deploy: ## manifests, alert rules (promtool) and dashboard queries, in deploy/'s own module
	cd deploy && $(GO) vet ./... && $(GO) test -count=1 ./...

test: deps check-generate vet ## the whole suite, as root: packages it needs, generation check, vet, unit, end-to-end here and under qemu, deploy, fuzz
	$(GO) test -count=1 ./...
	$(MAKE) test-deploy
	$(MAKE) test-vm
	$(MAKE) fuzz

# The end-to-end scenarios that need only the kernel (the guest has no tmux
# or Prometheus; the 30-second rate test is too slow under emulation), in
# every mode on every kernel and cgroup layout, then in kprobe mode with a
# perf event array (CentOS 7's output) on cgroup v2.
VM_TESTS := Modes|Pressure|TaskCounts|BTF|CloneInto|Ancestor|PodPids|PIDNamespace|Rlimit|Deleted|Victim|PodTail|Loss|Survives|BadInput|Duration|ThreadsMax|Glibc
VM_RUN = FORKWATCH_EXPECT_MODES="fentry tracepoint kprobe" FORKWATCH_BIN=/bin/forkwatch FORKWATCH_STORM=/bin/storm FORKWATCH_GLIBC_DIR=/glibc FORKWATCH_VM=1 test/vm/matrix.sh --timeout 900 \
	--file bin/forkwatch:/bin/forkwatch --file bin/storm:/bin/storm --file bin/e2e.test:/bin/e2e.test --file bin/glibc:/glibc \
	-- /bin/e2e.test -test.v -test.count=1 -test.timeout=10m -test.run '$(VM_TESTS)'

# arm64: Debian's arm64 cloud kernels under qemu-system-aarch64 (emulated,
# several times slower than the x86-64 guests), cgroup v2, every mode each
# kernel runs: 6.1 has no BPF trampolines on arm64 (fentry came to arm64 in
# 6.0 but needs ftrace direct calls, 6.4+), so tracepoint and kprobe there.
# The binaries are cross-compiled; forkwatch is linked as the image's
# (IMAGE_LDFLAGS) and must say the version it was stamped with. The same
# tests as x86-64's fit: the five cells take ~10 minutes, two at a time
# (140-260 s each, against 50-100 s for an x86-64 cell).
VM_TESTS_ARM64 := $(VM_TESTS)
VM_RUN_ARM64 = FORKWATCH_BIN=/bin/forkwatch FORKWATCH_STORM=/bin/storm FORKWATCH_GLIBC_DIR=/glibc FORKWATCH_VM=1 FORKWATCH_VM_CGROUPS=v2 test/vm/matrix.sh --timeout 1200 \
	--file bin/arm64/forkwatch:/bin/forkwatch --file bin/arm64/storm:/bin/storm --file bin/arm64/e2e.test:/bin/e2e.test --file bin/arm64/glibc:/glibc \
	-- sh -c '[ "$$(/bin/forkwatch --version)" = "forkwatch $(VERSION)" ] || { echo "/bin/forkwatch --version: $$(/bin/forkwatch --version 2>&1), want forkwatch $(VERSION)"; exit 1; }; exec /bin/e2e.test "$$@"' e2e \
	-test.v -test.count=1 -test.timeout=18m -test.run '$(VM_TESTS_ARM64)'

test-vm: ## end-to-end tests in qemu on Debian's 5.10, 6.1, 6.12 and newest kernels (cgroup v2 and hybrid, fentry, tracepoint and kprobe modes), and on arm64's 6.1 and newest
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/forkwatch ./cmd/forkwatch
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/storm ./test/storm
	CGO_ENABLED=0 $(GO) test -c -o bin/e2e.test ./test/e2e
	mkdir -p bin/glibc  # static glibc programs: the guest has no libc
	gcc -static -O2 -pthread -o bin/glibc/threads test/glibc/threads.c
	gcc -static -O2 -pthread -o bin/glibc/forker test/glibc/forker.c
	FORKWATCH_VM_MODES="fentry tracepoint kprobe" $(VM_RUN)
	FORKWATCH_VM_MODES="kprobe+perf" FORKWATCH_VM_CGROUPS=v2 $(VM_RUN)
	$(MAKE) test-vm-arm64

test-vm-arm64: ## the end-to-end tests in qemu-system-aarch64 on Debian's arm64 6.1 and newest kernels (part of test-vm)
	CGO_ENABLED=0 GOARCH=arm64 $(GO) build -trimpath -ldflags "$(IMAGE_LDFLAGS)" -o bin/arm64/forkwatch ./cmd/forkwatch
	CGO_ENABLED=0 GOARCH=arm64 $(GO) build -trimpath -o bin/arm64/storm ./test/storm
	CGO_ENABLED=0 GOARCH=arm64 $(GO) test -c -o bin/arm64/e2e.test ./test/e2e
	mkdir -p bin/arm64/glibc
	aarch64-linux-gnu-gcc -static -O2 -pthread -o bin/arm64/glibc/threads test/glibc/threads.c
	aarch64-linux-gnu-gcc -static -O2 -pthread -o bin/arm64/glibc/forker test/glibc/forker.c
	FORKWATCH_VM_KERNELS=arm64:6.1 FORKWATCH_VM_MODES="tracepoint kprobe" FORKWATCH_EXPECT_MODES="tracepoint kprobe" $(VM_RUN_ARM64)
	FORKWATCH_VM_KERNELS=arm64:newest FORKWATCH_VM_MODES="fentry tracepoint kprobe" FORKWATCH_EXPECT_MODES="fentry tracepoint kprobe" $(VM_RUN_ARM64)

bench: ## measure overhead, failure throughput, CPU, RSS, start time and the arming of the failure hooks here (root; by hand, ~40 min; BENCH_ARGS=-rss-minutes=1 to shorten)
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/forkwatch ./cmd/forkwatch
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/storm ./test/storm
	$(GO) run ./test/bench $(BENCH_ARGS)

clean: ## remove build outputs
	rm -rf bin
