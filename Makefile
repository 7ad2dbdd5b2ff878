# Thin front door over Meson/Ninja. See README.md.
#   make run    install missing packages, build, run ternd on 127.0.0.1:2525
#   make test   install missing packages, build (normal + ASan/UBSan + fuzz),
#               run unit, fuzz and end-to-end tests
#   make fuzz-long  run each libFuzzer target for FUZZ_SECONDS (default an
#               hour), keeping the corpus in build-fuzz/fuzz-corpus
#   make package         the Debian packages, from a clean export, in build-deb/
#   make package-test    build, lint, install, run, relay and purge the package
#                        (root; leaves the machine as it was)
#   make install         meson install of build/ (see README, "Installing")
BUILD      ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
PYTHON     ?= /usr/bin/python3
DEB_BUILD  ?= build-deb
RUN_DIR    ?= $(CURDIR)/run
FUZZ_TEST_SECONDS ?= 30
FUZZ_SECONDS ?= 3600
MESON_COMMON = -Dwerror=true -Dc_std=c17

.PHONY: all deps test-deps build asan fuzz run test unit-test system-test fuzz-test fuzz-long \
	format clean package package-test install

all: build

deps:
	@./scripts/install-deps.sh

test-deps:
	@./scripts/install-deps.sh --test

$(BUILD)/build.ninja:
	meson setup $(BUILD) $(MESON_COMMON) --buildtype=debugoptimized >/dev/null

$(ASAN_BUILD)/build.ninja:
	meson setup $(ASAN_BUILD) $(MESON_COMMON) --buildtype=debug \
	    -Db_sanitize=address,undefined -Db_lundef=false >/dev/null

$(FUZZ_BUILD)/build.ninja:
	CC=clang meson setup $(FUZZ_BUILD) $(MESON_COMMON) --buildtype=debug -Dfuzz=true \
	    -Db_lundef=false >/dev/null

build: deps $(BUILD)/build.ninja
	ninja -C $(BUILD)

asan: test-deps $(ASAN_BUILD)/build.ninja
	ninja -C $(ASAN_BUILD)

fuzz: test-deps $(FUZZ_BUILD)/build.ninja
	ninja -C $(FUZZ_BUILD) fuzz-targets

# As root, also the `tern` account that ternd drops to (CONTRACT.md).
run: build
	mkdir -p $(RUN_DIR)
	@./dist/install-account.sh $(CURDIR)/dist/tern.sysusers
	exec $(BUILD)/ternd -o spool_dir=$(RUN_DIR)/spool -o smtp_listen=127.0.0.1:2525

unit-test: test-deps build asan
	meson test -C $(BUILD) --suite unit --print-errorlogs
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	    meson test -C $(ASAN_BUILD) --suite unit --print-errorlogs

fuzz-test: fuzz
	FUZZ_SECONDS=$(FUZZ_TEST_SECONDS) ./tests/fuzz/run.sh $(FUZZ_BUILD)

fuzz-long: fuzz
	FUZZ_SECONDS=$(FUZZ_SECONDS) ./tests/fuzz/run.sh --each $(FUZZ_BUILD)

# Normal and ASan builds side by side when root (tests/system/run-both.sh).
system-test: build asan
	./tests/system/run-both.sh $(PYTHON) $(CURDIR)/$(BUILD) $(CURDIR)/$(ASAN_BUILD)

test: unit-test fuzz-test system-test

package: test-deps
	./scripts/build-deb.sh $(DEB_BUILD)

package-test: test-deps
	$(PYTHON) -m pytest -q -p no:cacheprovider tests/package

install: build
	meson install -C $(BUILD)

format:
	clang-format -i $$(git ls-files 'src/*.[ch]' 'tests/*.[ch]')

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD) $(DEB_BUILD)
