# Makefile - the front door over CMake: `make demo` and `make test` do
# everything on a fresh Debian 12 machine, dependencies included.
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?= -DCMAKE_BUILD_TYPE=RelWithDebInfo

.PHONY: all deps configure build test demo install bench sanitize memcheck \
        format clean

all: build

deps:
	@scripts/deps.sh

configure: deps
	cmake -S . -B $(BUILD) $(CMAKE_FLAGS)

build: configure
	cmake --build $(BUILD) -j$(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure --timeout 600

demo: build
	scripts/demo.sh $(BUILD)

install: build
	cmake --install $(BUILD)

bench: build
	$(BUILD)/bench/tq-bench

# ASan/UBSan build of everything, whole suite
sanitize:
	$(MAKE) test BUILD=build-asan \
	  CMAKE_FLAGS="-DCMAKE_BUILD_TYPE=Debug -DTQ_SANITIZE=address,undefined"

# valgrind over the suite
memcheck: build
	cd $(BUILD) && ctest -T memcheck --output-on-failure

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf $(BUILD) build-asan
