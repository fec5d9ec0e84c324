# nbdsrv: the two commands a user needs are `make run` and `make check`.
# The build itself is Meson + Ninja in build/.

BUILD ?= build
PYTHON := /usr/bin/python3
PYTEST_ARGS ?=

.PHONY: all deps test-deps run check unit clean

all: deps $(BUILD)/build.ninja
	ninja -C $(BUILD)

$(BUILD)/build.ninja:
	meson setup $(BUILD)

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
	$(PYTHON) -m pytest -q -ra tests $(PYTEST_ARGS)

clean:
	rm -rf $(BUILD)
