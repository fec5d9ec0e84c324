# nbdsrv: the two commands a user needs are `make run` and `make check`.
# The build itself is Meson + Ninja in build/.
#
#   make check SANITIZE=1   the same tests on an ASan+UBSan build (build-san/)
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
	NBDSRV_BUILD=$(abspath $(BUILD)) $(PYTHON) -m pytest -q -ra tests $(PYTEST_ARGS)

fuzz: test-deps
	FUZZ_SECONDS=$(FUZZ_SECONDS) tests/fuzz/run.sh

bench: test-deps all
	$(PYTHON) bench/bench.py $(BENCH_ARGS)

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
