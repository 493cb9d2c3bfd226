# Entry points for people and CI; the real work is in scripts/ so it can also be run
# (and read) without make.
#   make build       install dependencies, configure and build ./build (RelWithDebInfo)
#   make run         build, start the local stack and run the apps in the foreground
#   make test        sanitizer build in ./build-test, private stack, every ctest suite
#                    (filter with ARGS, e.g. make test ARGS='-R smoke')
#   make bench       load test (bench/run)
#   make stack-up / stack-down   the local Redis, MariaDB and Kafka on default ports
#   make clean       remove build trees (stack data in .stack/ is kept)

BUILD_TYPE ?= RelWithDebInfo
ARGS ?=

.PHONY: all deps build run test bench stack-up stack-down clean

all: build

deps:
	scripts/deps

build: deps
	cmake -S . -B build -DCMAKE_BUILD_TYPE=$(BUILD_TYPE)
	cmake --build build -j $$(nproc)

run:
	scripts/run

test:
	scripts/test $(ARGS)

bench:
	@if [ -x bench/run ]; then bench/run; else echo "bench/run does not exist yet" >&2; exit 1; fi

stack-up:
	scripts/stack up

stack-down:
	scripts/stack down

clean:
	rm -rf build build-test
