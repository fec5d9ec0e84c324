# nbdsrv: the two commands a user needs are `make run` and `make check`.
# The build itself is Meson + Ninja in build/.
#
#   make check SANITIZE=1   the same tests on an ASan+UBSan build (build-san/)
#   make check VALGRIND=1   the sh and eval tests with nbdsrv under valgrind
#   make fuzz               every libFuzzer target for FUZZ_SECONDS each
#   make bench              the benchmark against nbdkit, qemu-nbd, nbd-server
#   make install            into PREFIX (default /usr/local) and LIBDIR
#                           (default lib/x86_64-linux-gnu, relative to
#                           PREFIX), under DESTDIR when given; make
#                           uninstall takes the same three

BUILD ?= build
MESON_OPTS ?=
ifeq ($(SANITIZE),1)
BUILD := build-san
MESON_OPTS += -Db_sanitize=address,undefined -Db_lundef=false
endif
PYTHON := /usr/bin/python3
PYTEST_ARGS ?=
CHECK_TESTS := tests

# The normal `make check` runs the whole suite under glibc's malloc
# checking, as nbdkit's own test harness does: heap corruption aborts,
# and every allocation is filled with byte MALLOC_PERTURB (random per
# run; the command line shows it, MALLOC_PERTURB=N repeats it), so
# uninitialised heap memory read as a string or a size shows instead of
# happening to be zero.  Measured: no slower than without.  Not with
# SANITIZE=1 (ASan brings its own allocator) nor under valgrind.
ifeq ($(VALGRIND),1)
ifeq ($(SANITIZE),1)
$(error VALGRIND=1 and SANITIZE=1 do not mix: valgrind runs the normal build)
endif
CHECK_ENV := NBDSRV_VALGRIND=1
# The emulated-cache test moves 128 MiB through the script's pipe, which
# takes minutes under valgrind; it counts calls and runs in `make check`.
CHECK_TESTS := tests/integration/test_plugins_sh.py \
  -k "not emulated_cache_in_large_pieces"
else ifneq ($(SANITIZE),1)
MALLOC_PERTURB ?= $(shell shuf -i 1-255 -n 1)
CHECK_ENV := GLIBC_TUNABLES=glibc.malloc.check=1:glibc.malloc.perturb=$(MALLOC_PERTURB) \
  LD_PRELOAD=libc_malloc_debug.so.0
endif
FUZZ_SECONDS ?= 60
PREFIX ?= /usr/local
LIBDIR ?= lib/$(shell gcc -print-multiarch)
DESTDIR ?=

.PHONY: all deps test-deps run check fuzz bench clean install uninstall configure-prefix

all: deps $(BUILD)/build.ninja
	ninja -C $(BUILD)

$(BUILD)/build.ninja:
	meson setup $(MESON_OPTS) $(BUILD)

deps:
	@scripts/install-deps.sh build

test-deps:
	@scripts/install-deps.sh test

# Serve a 1 GiB memory disk in the foreground on 127.0.0.1:10809.
run: all
	@echo "Serving a 1 GiB memory disk.  Try:  qemu-img info nbd://127.0.0.1:10809"
	@echo "Press ^C to stop."
	$(BUILD)/nbdsrv -f --print-uri -i 127.0.0.1 -p 10809 memory size=1G

# Build, then run the C unit tests and the integration tests through
# pytest, whose summary line ends the output.
check: test-deps all
	$(CHECK_ENV) NBDSRV_BUILD=$(abspath $(BUILD)) $(PYTHON) -m pytest -q -ra $(CHECK_TESTS) $(PYTEST_ARGS)

fuzz: test-deps
	FUZZ_SECONDS=$(FUZZ_SECONDS) tests/fuzz/run.sh

bench: test-deps all
	$(PYTHON) bench/bench.py $(BENCH_ARGS)
	$(PYTHON) bench/holes.py
	$(PYTHON) bench/idle_clients.py

# Point the build at PREFIX/LIBDIR before building, so the directories
# compiled into nbdsrv are the ones it is installed to; `ninja
# build.ninja` refreshes what meson introspect reports without
# compiling.
configure-prefix: deps $(BUILD)/build.ninja
	meson configure $(BUILD) -Dprefix=$(PREFIX) -Dlibdir=$(LIBDIR)
	ninja -C $(BUILD) build.ninja

install: configure-prefix
	ninja -C $(BUILD)
	DESTDIR='$(DESTDIR)' meson install -C $(BUILD) --no-rebuild --quiet

uninstall: configure-prefix
	$(PYTHON) scripts/uninstall.py $(BUILD) '$(DESTDIR)'

clean:
	rm -rf build build-san build-fuzz
