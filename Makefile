# Makefile - the front door over CMake: `make demo` and `make test` do
# everything on a fresh Debian 12 machine, dependencies included.
SHELL := /bin/bash
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?= -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTQ_WERROR=ON
# where `make install` puts tq (configured into tq.pc too); DESTDIR stages
PREFIX ?= /usr/local
# `make install DESTDIR=/tmp/stage`: cmake --install reads it from the environment
export DESTDIR
ALL_CMAKE_FLAGS = $(CMAKE_FLAGS) -DCMAKE_INSTALL_PREFIX=$(PREFIX)

.PHONY: all deps configure build test demo demo-network install uninstall \
        bench sanitize memcheck format clean fuzz fuzz-build FORCE

all: build

# deps.sh and cmake run again only when something they depend on changed:
# the package list, or the flags (a stamp holds the last ones), so `make
# demo` then `make test` builds once.
$(BUILD)/.tq-deps: scripts/deps.sh
	@scripts/deps.sh
	@mkdir -p $(BUILD) && touch $@

$(BUILD)/.tq-flags: FORCE
	@mkdir -p $(BUILD)
	@echo '$(ALL_CMAKE_FLAGS)' | cmp -s - $@ || echo '$(ALL_CMAKE_FLAGS)' > $@

$(BUILD)/CMakeCache.txt: $(BUILD)/.tq-deps $(BUILD)/.tq-flags
	cmake -S . -B $(BUILD) $(ALL_CMAKE_FLAGS)
	@touch $@

deps: $(BUILD)/.tq-deps

configure: $(BUILD)/CMakeCache.txt

build: configure
	cmake --build $(BUILD) -j$(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure --timeout 600

# the suite beside 4 CPU hogs: no test may depend on the machine's speed
.PHONY: test-loaded
test-loaded: build
	scripts/test-loaded.sh $(BUILD)

demo: build
	scripts/demo.sh $(BUILD)

# the networked demo: tq-broker, tq-worker, the CLI
demo-network: build
	scripts/demo-network.sh $(BUILD)

install: build
	cmake --install $(BUILD)

# removes what `make install` wrote (its install_manifest.txt)
uninstall:
	@test -f $(BUILD)/install_manifest.txt || \
	  { echo "uninstall: nothing installed from $(BUILD)" >&2; exit 1; }
	cmake -P cmake/uninstall.cmake $(BUILD)/install_manifest.txt

# tq against the bare ZeroMQ broker, Gearman and multiprocessing.Pool(2),
# interleaved over 7 rounds (issue 13, about 2 minutes on 2 vCPUs);
# `make bench-quick`: 1 small round
bench:
	@scripts/deps.sh --bench
	$(MAKE) build
	$(BUILD)/bench/tq-bench --runs 7

.PHONY: bench-quick
bench-quick:
	@scripts/deps.sh --bench
	$(MAKE) build
	$(BUILD)/bench/tq-bench --quick

# the embedded pool of 2 against Python's multiprocessing.Pool(2) (issue 5)
.PHONY: bench-pool
bench-pool: build
	$(BUILD)/bench/tq-bench-pool --runs 5

# tq map lines/s with tq.echo; tq exec gzip vs xargs -P 2 (issue 6)
.PHONY: bench-cli
bench-cli: build
	bench/tq_bench_cli.sh $(BUILD)

# the build in the other configurations a user may pick, warnings as
# errors: Release and Debug with gcc, and clang (CI runs it)
.PHONY: build-matrix
build-matrix: deps
	@scripts/deps.sh --fuzz
	set -e; for cfg in Release:gcc Debug:gcc RelWithDebInfo:clang; do \
	  dir=build-$${cfg%%:*}-$${cfg##*:}; \
	  CC=$${cfg##*:} cmake -S . -B $$dir -DCMAKE_BUILD_TYPE=$${cfg%%:*} \
	    -DTQ_WERROR=ON -DBUILD_TESTING=OFF >/dev/null; \
	  cmake --build $$dir -j$(JOBS) >/dev/null || \
	    { echo "build-matrix: $$cfg failed" >&2; exit 1; }; \
	  echo "build-matrix: $$cfg clean"; \
	done
# tasks/s on 1, 2, 3 worker hosts in network namespaces (issue 14; root)
.PHONY: bench-hosts
bench-hosts: build
	$(BUILD)/tests/test_hosts --bench

# ASan/UBSan build of everything, whole suite
sanitize:
	$(MAKE) test BUILD=build-asan \
	  CMAKE_FLAGS="-DCMAKE_BUILD_TYPE=Debug -DTQ_WERROR=ON -DTQ_SANITIZE=address,undefined"

# valgrind over the suite
memcheck: build
	cd $(BUILD) && ctest -T memcheck --output-on-failure

# libFuzzer targets under ASan/UBSan (clang), each run FUZZ_SECONDS on a
# working copy of its seed corpus (fuzz/corpus/NAME stays as committed).
# The CLI's sources are compiled with main renamed: libFuzzer has its own.
FUZZ_SECONDS ?= 60
FUZZ_BUILD ?= build-fuzz
FUZZ_CC ?= clang
FUZZ_FLAGS = -g -O1 -fsanitize=fuzzer,address,undefined \
  -fno-sanitize-recover=all -D_GNU_SOURCE -Iproto -Iinclude -Iinclude/tq \
  -Iclient -Iinternal
FUZZ_LIBS = $$(pkg-config --cflags --libs libczmq libzmq msgpack jansson) \
  -lm -lpthread
FUZZ_PROTO_SRC = proto/tq_proto.c proto/tq_batch.c proto/tq_wire.c \
  proto/tq_error.c proto/tq_log.c proto/tq_endpoint.c proto/tq_env.c \
  proto/tq_curve.c proto/tq_writer.c
FUZZ_CLI_SRC = client/tq_cli.c $$(ls client/tq_cli_*.c) client/tq_keygen.c \
  client/tq_client_unserved.c \
  client/tq_client.c client/tq_client_io.c client/tq_client_live.c \
  client/tq_request.c client/tq_result.c client/tq_queue.c \
  client/tq_pack.c client/tq_spare.c client/tq_inspect.c

fuzz-build:
	@scripts/deps.sh --fuzz
	mkdir -p $(FUZZ_BUILD)
	$(FUZZ_CC) $(FUZZ_FLAGS) fuzz/fuzz_proto.c $(FUZZ_PROTO_SRC) \
	  $(FUZZ_LIBS) -o $(FUZZ_BUILD)/fuzz_proto
	$(FUZZ_CC) $(FUZZ_FLAGS) -Dmain=tq_cli_main fuzz/fuzz_json.c \
	  $(FUZZ_CLI_SRC) $(FUZZ_PROTO_SRC) $(FUZZ_LIBS) \
	  -o $(FUZZ_BUILD)/fuzz_json

fuzz: fuzz-build
	set -e; for t in proto json; do \
	  mkdir -p $(FUZZ_BUILD)/corpus/$$t $(FUZZ_BUILD)/artifacts/$$t; \
	  echo "fuzz_$$t: $(FUZZ_SECONDS) s"; \
	  $(FUZZ_BUILD)/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -timeout=10 \
	    -rss_limit_mb=2048 -print_final_stats=1 \
	    -artifact_prefix=$(FUZZ_BUILD)/artifacts/$$t/ \
	    $(FUZZ_BUILD)/corpus/$$t fuzz/corpus/$$t \
	    2>&1 | tail -n 25; \
	  test $${PIPESTATUS[0]} -eq 0; \
	done

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf $(BUILD) build-asan build-Release-gcc build-Debug-gcc \
	  build-RelWithDebInfo-clang $(FUZZ_BUILD)
