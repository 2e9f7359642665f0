# moetrace — build, test, demo, benchmark and install.
#
#   make            build bin/ and lib/ (installs missing Debian packages first, as root)
#   make check      build and run every test; ends with "N passed, N failed"
#   make demo       run the longest end-to-end path on bundled/synthetic data
#   make bench      benchmarks (ratios against peers measured in the same run)
#   make install    PREFIX=/usr/local: binaries, library, headers, pkg-config file, HDF5 zstd plugin
#   make asan|ubsan the test suite under AddressSanitizer / UndefinedBehaviorSanitizer (in build/asan, build/ubsan)
#   WERROR=1        turn warnings into errors (CI does)

BUILD ?= .
PREFIX ?= /usr/local
CC ?= cc
ifeq ($(origin CC),default)
CC := cc
endif
PY := /usr/bin/python3

BIN := $(BUILD)/bin
LIB := $(BUILD)/lib
OBJ := $(BUILD)/build/obj

HDF5_PC := hdf5-serial
WARN := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wformat=2 -Wundef -Wvla -Wpointer-arith
CFLAGS ?= -O2 -g
ifeq ($(WERROR),1)
WARN += -Werror
endif
# sanitizers apply to our programs and tests, not to the HDF5 plugin (loaded by h5dump and h5py, which are not
# built with them)
ifneq ($(SANITIZE),)
SAN_FLAGS := -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=all
endif
LDFLAGS += $(SAN_FLAGS)

# pkg-config is asked only once the packages are there (deps runs first in every build path)
PKG_CFLAGS = $(shell pkg-config --cflags $(HDF5_PC) libzstd jansson $(MODULE_PKGS) 2>/dev/null)
PKG_LIBS = $(shell pkg-config --libs $(HDF5_PC) libzstd jansson $(MODULE_PKGS) 2>/dev/null)
CHECK_CFLAGS = $(shell pkg-config --cflags check 2>/dev/null)
CHECK_LIBS = $(shell pkg-config --libs check 2>/dev/null)

ALL_CFLAGS = -std=c11 -D_GNU_SOURCE -fPIC -fopenmp $(WARN) $(CFLAGS) $(KERNEL_FLAGS) $(SAN_FLAGS) -Itraces -Icapture -Ireduce -Istats $(PKG_CFLAGS) -MMD -MP
LIBS = $(PKG_LIBS) $(MODULE_LIBS) -lm -lpthread

# libmoetrace: every traces/*.c except the programs' mains
LIB_SRC := $(filter-out traces/info_main.c traces/moetrace_main.c,$(wildcard traces/*.c))
LIB_OBJ := $(LIB_SRC:%.c=$(OBJ)/%.o)
CAPTURE_SRC := capture/capture_main.c capture/cli.c capture/cmd_synth.c capture/synth.c
INFO_SRC := traces/info_main.c
UMBRELLA_SRC := traces/moetrace_main.c
UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/build/tests/%)
TOOL_SRC := $(wildcard tests/tools/*.c)
TOOL_BIN := $(TOOL_SRC:tests/tools/%.c=$(BUILD)/build/tools/%)
BENCH_SRC := $(wildcard tests/bench/bench_*.c)
BENCH_BIN := $(BENCH_SRC:tests/bench/%.c=$(BUILD)/build/bench/%)

PROGRAMS := $(BIN)/moetrace $(BIN)/moetrace-info $(BIN)/moetrace-capture

# Components add themselves through a fragment `<dir>/module.mk` (see CONVENTIONS.md): they append their programs
# to PROGRAMS, their static archives to MODULE_ARCHIVES (linked into programs and unit tests after their own
# objects), pkg-config names to MODULE_PKGS and other link flags to MODULE_LIBS.
MODULE_ARCHIVES :=
MODULE_PKGS :=
MODULE_LIBS :=
PLUGIN := $(LIB)/plugin/libh5zstd.so
DEPS_STAMP := build/.deps-ok

include $(sort $(wildcard */module.mk))

.PHONY: all deps check demo bench install asan ubsan clean
.DEFAULT_GOAL := all

# build everything users run: programs, static + shared library, HDF5 plugin
all: $(PROGRAMS) $(LIB)/libmoetrace.a $(LIB)/libmoetrace.so $(PLUGIN)

# install missing Debian packages (one list: config/debian-packages.txt); re-checked when the list changes
deps: $(DEPS_STAMP)
$(DEPS_STAMP): config/debian-packages.txt config/install-deps.sh
	@sh config/install-deps.sh config/debian-packages.txt
	@mkdir -p $(@D) && touch $@

# objects: every compile waits for the packages (order-only, so a re-check does not rebuild)
$(OBJ)/%.o: %.c | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

# element kernels: -O3 so GCC vectorises the conversion and shuffle loops (measured 2-4x over -O2)
$(OBJ)/traces/dtype.o: KERNEL_FLAGS := -O3

$(LIB)/libmoetrace.a: $(LIB_OBJ)
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $^

$(LIB)/libmoetrace.so: $(LIB_OBJ)
	@mkdir -p $(@D)
	$(CC) -shared -fopenmp $(LDFLAGS) -o $@ $^ $(LIBS)

# the zstd filter as a dynamically loaded HDF5 plugin (same source, plugin entry points compiled in)
$(PLUGIN): traces/h5zstd.c | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) -std=c11 -fPIC -shared $(WARN) $(CFLAGS) -DMTR_H5ZSTD_PLUGIN $(PKG_CFLAGS) -o $@ $< \
		$(shell pkg-config --libs $(HDF5_PC) libzstd 2>/dev/null)

$(BIN)/moetrace-capture: $(CAPTURE_SRC:%.c=$(OBJ)/%.o) $(MODULE_ARCHIVES) $(LIB)/libmoetrace.a
	@mkdir -p $(@D)
	$(CC) -fopenmp $(LDFLAGS) -o $@ $^ $(LIBS)

$(BIN)/moetrace-info: $(INFO_SRC:%.c=$(OBJ)/%.o) $(LIB)/libmoetrace.a
	@mkdir -p $(@D)
	$(CC) -fopenmp $(LDFLAGS) -o $@ $^ $(LIBS)

$(BIN)/moetrace: $(UMBRELLA_SRC:%.c=$(OBJ)/%.o)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $^

# unit tests (Check), one binary per tests/unit/test_*.c, linked with every component archive
$(BUILD)/build/tests/%: tests/unit/%.c $(MODULE_ARCHIVES) $(LIB)/libmoetrace.a | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(CHECK_CFLAGS) -Itests/unit -o $@ $< $(MODULE_ARCHIVES) $(LIB)/libmoetrace.a $(LDFLAGS) \
		$(CHECK_LIBS) $(LIBS)

# test tools (independent-reader comparisons)
$(BUILD)/build/tools/%: tests/tools/%.c $(MODULE_ARCHIVES) $(LIB)/libmoetrace.a | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -o $@ $< $(MODULE_ARCHIVES) $(LIB)/libmoetrace.a $(LDFLAGS) $(LIBS)

$(BUILD)/build/bench/%: tests/bench/%.c $(MODULE_ARCHIVES) $(LIB)/libmoetrace.a | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -o $@ $< $(MODULE_ARCHIVES) $(LIB)/libmoetrace.a $(LDFLAGS) $(LIBS)

# build, then run unit, CLI, interop and crash tests; the last line is "N passed, N failed"
check: all $(UNIT_BIN) $(TOOL_BIN)
	@BIN=$(abspath $(BIN)) LIB=$(abspath $(LIB)) UNIT=$(abspath $(BUILD)/build/tests) \
		TOOLS=$(abspath $(BUILD)/build/tools) PY=$(PY) MTR_SANITIZE=$(SANITIZE) sh tests/run.sh

# end-to-end on synthetic data: synth -> info; prints where the results are
demo: all
	@sh tests/demo.sh $(abspath $(BIN)) $(abspath $(BUILD)/demo)

# benchmarks: writer/reader throughput against the raw-chunk floor, thread scaling
bench: all $(BENCH_BIN) $(TOOL_BIN)
	@BIN=$(abspath $(BIN)) LIB=$(abspath $(LIB)) BENCH=$(abspath $(BUILD)/build/bench) \
		TOOLS=$(abspath $(BUILD)/build/tools) PY=$(PY) sh tests/bench/run.sh

PUBLIC_HEADERS := traces/moetrace.h traces/mtr_format.h traces/mtr_steer.h $(wildcard reduce/mtr_reduce.h \
	stats/mtr_stats.h capture/mtr_tokenizer.h capture/mtr_ingest.h capture/mtr_model.h capture/mtr_corpus.h)

# install programs, libraries, public headers, pkg-config file, HDF5 plugin, config (languages, model profiles),
# the Python package and the format documents
install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/include/moetrace \
		$(DESTDIR)$(PREFIX)/lib/hdf5/plugin $(DESTDIR)$(PREFIX)/share/moetrace/models \
		$(DESTDIR)$(PREFIX)/share/moetrace/python/moetrace $(DESTDIR)$(PREFIX)/share/doc/moetrace
	install -m 755 $(PROGRAMS) $(DESTDIR)$(PREFIX)/bin/
	install -m 644 $(LIB)/libmoetrace.a $(MODULE_ARCHIVES) $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(LIB)/libmoetrace.so $(DESTDIR)$(PREFIX)/lib/
	install -m 644 $(PUBLIC_HEADERS) $(DESTDIR)$(PREFIX)/include/moetrace/
	install -m 644 config/languages.tsv config/prompts.json $(DESTDIR)$(PREFIX)/share/moetrace/
	install -m 644 config/models/*.json $(DESTDIR)$(PREFIX)/share/moetrace/models/
	install -m 644 capture/python/moetrace/*.py $(DESTDIR)$(PREFIX)/share/moetrace/python/moetrace/
	install -m 644 traces/FORMAT.md traces/STEERING.md traces/INGEST.md reduce/SUMMARIES.md \
		$(DESTDIR)$(PREFIX)/share/doc/moetrace/
	install -m 755 $(PLUGIN) $(DESTDIR)$(PREFIX)/lib/hdf5/plugin/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(shell sed -n 's/.*MTR_VERSION_STRING "\(.*\)"/\1/p' traces/moetrace.h)|' \
		traces/moetrace.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/moetrace.pc

# the test suite under sanitizers, in separate build trees
asan:
	$(MAKE) BUILD=build/asan SANITIZE=address check
ubsan:
	$(MAKE) BUILD=build/ubsan SANITIZE=undefined check

clean:
	rm -rf bin lib build/obj build/tests build/bench build/asan build/ubsan demo

-include $(shell find $(BUILD)/build/obj -name '*.d' 2>/dev/null)
include tests/fuzz/fuzz_trace.mk
