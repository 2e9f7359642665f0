# moetrace — build, test, demo, benchmark and install.
#
#   make            build bin/ and lib/ (installs missing Debian packages first, as root)
#   make check      build and run every test; ends with "N passed, N failed"
#   make demo       run the longest end-to-end path on bundled/synthetic data
#   make bench      benchmarks (ratios against peers measured in the same run)
#   make install    PREFIX=/usr/local: binaries, library, headers, pkg-config file, HDF5 zstd plugin
#   make asan|ubsan the test suite under AddressSanitizer + UndefinedBehaviorSanitizer / UBSan alone (in build/asan,
#                   build/ubsan); `make asan check` is the same as `make asan`
#   make fuzz       every libFuzzer target for FUZZ_SECONDS (tests/fuzz/fuzz.mk)
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

# pkg-config is asked only once the packages are there (deps runs first in every build path), and once per set of
# names (memoised), not once per compile.
pc_key = PC_$(subst $(space),_,$(strip $(1) $(2)))
pc = $(or $($(call pc_key,$(1),$(2))),$(eval $(call pc_key,$(1),$(2)) := $(shell pkg-config $(1) $(2) 2>/dev/null) )$($(call pc_key,$(1),$(2))))
space := $(subst ,, )
CHECK_CFLAGS = $(call pc,--cflags,check)
CHECK_LIBS = $(call pc,--libs,check)

# Every component compiles with its own include path and its own packages' flags: a component sees its own
# headers, and of the others only the public headers of the components it builds on (layering is enforced by the
# build; tests/cli/test_layout.sh checks it). A fragment sets COMP_INC_<dir> and COMP_PKGS_<dir> for its dirs.
COMP_INC_traces := -Itraces
COMP_PKGS_traces := $(HDF5_PC) libzstd jansson
ALL_CFLAGS = -std=c11 -D_GNU_SOURCE -fPIC -fvisibility=hidden -fopenmp $(WARN) $(CFLAGS) $(KERNEL_FLAGS) \
	$(SAN_FLAGS) $(COMP_INC) $(call pc,--cflags,$(COMP_PKGS)) -MMD -MP
$(OBJ)/traces/%.o: COMP_INC = $(COMP_INC_traces)
$(OBJ)/traces/%.o: COMP_PKGS = $(COMP_PKGS_traces)

# libmoetrace: every traces/*.c except the programs' mains and the shared command-line unit
LIB_SRC := $(filter-out traces/info_main.c traces/moetrace_main.c traces/cli.c,$(wildcard traces/*.c))
LIB_OBJ := $(LIB_SRC:%.c=$(OBJ)/%.o)
TRACE_LIBS = $(call pc,--libs,$(COMP_PKGS_traces)) -lm -lpthread
# the command-line helpers every program shares (one error printer, one option parser, one exit-code rule)
CLI_LIB := $(LIB)/libmtr_cli.a
INFO_SRC := traces/info_main.c
UMBRELLA_SRC := traces/moetrace_main.c
UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/build/tests/%)
TOOL_SRC := $(wildcard tests/tools/*.c)
TOOL_BIN := $(TOOL_SRC:tests/tools/%.c=$(BUILD)/build/tools/%)
BENCH_SRC := $(wildcard tests/bench/bench_*.c)
BENCH_BIN := $(BENCH_SRC:tests/bench/%.c=$(BUILD)/build/bench/%)

PROGRAMS := $(BIN)/moetrace $(BIN)/moetrace-info

# Components add themselves through a fragment `<dir>/module.mk` (see CONVENTIONS.md): they add their programs
# to PROGRAMS with their own link lines (each program links only the archives it uses), their archives to
# MODULE_ARCHIVES (installed), and for every test, tool and benchmark program the archives and packages it needs
# (TEST_ARCHIVES_<name>, TEST_PKGS_<name>, TEST_INC_<name>).
MODULE_ARCHIVES :=
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

# the shared library exports only what carries MTR_API (the public headers)
$(LIB)/libmoetrace.so: $(LIB_OBJ)
	@mkdir -p $(@D)
	$(CC) -shared -fopenmp $(LDFLAGS) -o $@ $^ $(TRACE_LIBS)

$(CLI_LIB): $(OBJ)/traces/cli.o
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $^

# the zstd filter as a dynamically loaded HDF5 plugin (same source, plugin entry points compiled in)
$(PLUGIN): traces/h5zstd.c | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) -std=c11 -fPIC -shared $(WARN) $(CFLAGS) -DMTR_H5ZSTD_PLUGIN $(call pc,--cflags,$(HDF5_PC) libzstd) -o $@ $< \
		$(call pc,--libs,$(HDF5_PC) libzstd)

$(BIN)/moetrace-info: $(INFO_SRC:%.c=$(OBJ)/%.o) $(CLI_LIB) $(LIB)/libmoetrace.a
	@mkdir -p $(@D)
	$(CC) -fopenmp $(LDFLAGS) -o $@ $^ $(TRACE_LIBS)

$(BIN)/moetrace: $(UMBRELLA_SRC:%.c=$(OBJ)/%.o)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $^

# Test, tool and benchmark programs: each links the archives its fragment lists for it (default: libmoetrace
# only), with the include paths of those components.
test_archives = $(or $(TEST_ARCHIVES_$(1)),) $(LIB)/libmoetrace.a
test_cflags = -std=c11 -D_GNU_SOURCE -fopenmp $(WARN) $(CFLAGS) $(SAN_FLAGS) -Itraces $(TEST_INC_$(1)) \
	$(call pc,--cflags,$(COMP_PKGS_traces) $(TEST_PKGS_$(1))) -MMD -MP
test_libs = $(call pc,--libs,$(COMP_PKGS_traces) $(TEST_PKGS_$(1))) $(TEST_LIBS_$(1)) -lm -lpthread

# unit tests (Check), one binary per tests/unit/test_*.c
.SECONDEXPANSION:
$(BUILD)/build/tests/%: tests/unit/%.c $$(call test_archives,%) | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(call test_cflags,$*) $(CHECK_CFLAGS) -Itests/unit -o $@ $< $(call test_archives,$*) $(LDFLAGS) \
		$(CHECK_LIBS) $(call test_libs,$*)

# test tools (independent-reader comparisons)
$(BUILD)/build/tools/%: tests/tools/%.c $$(call test_archives,%) | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(call test_cflags,$*) -o $@ $< $(call test_archives,$*) $(LDFLAGS) $(call test_libs,$*)

$(BUILD)/build/bench/%: tests/bench/%.c $$(call test_archives,%) | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(call test_cflags,$*) -o $@ $< $(call test_archives,$*) $(LDFLAGS) $(call test_libs,$*)

# build, then run unit, CLI, interop and crash tests; the last line is "N passed, N failed"
# (`make asan check`: check is the sanitizer goal's, run in its own tree; the plain tree is not built)
SAN_CHECK := $(if $(filter check,$(MAKECMDGOALS)),$(filter asan ubsan,$(MAKECMDGOALS)))
ifeq ($(SAN_CHECK),)
check: all $(UNIT_BIN) $(TOOL_BIN)
	@BIN=$(abspath $(BIN)) LIB=$(abspath $(LIB)) UNIT=$(abspath $(BUILD)/build/tests) \
		TOOLS=$(abspath $(BUILD)/build/tools) PY=$(PY) MTR_SANITIZE=$(SANITIZE) sh tests/run.sh
else
check: $(SAN_CHECK)
endif

# end-to-end on synthetic data: synth -> info; prints where the results are
demo: all
	@sh tests/demo.sh $(abspath $(BIN)) $(abspath $(BUILD)/demo)

# benchmarks: writer/reader throughput against the raw-chunk floor, thread scaling
bench: all $(BENCH_BIN) $(TOOL_BIN)
	@BIN=$(abspath $(BIN)) LIB=$(abspath $(LIB)) BENCH=$(abspath $(BUILD)/build/bench) \
		TOOLS=$(abspath $(BUILD)/build/tools) PY=$(PY) sh tests/bench/run.sh

PUBLIC_HEADERS := traces/moetrace.h traces/mtr_format.h traces/mtr_steer.h traces/mtr_util.h traces/mtr_h5.h $(wildcard reduce/mtr_reduce.h \
	stats/mtr_stats.h capture/*/mtr_*.h)

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
	$(MAKE) BUILD=build/asan SANITIZE=address,undefined check
ubsan:
	$(MAKE) BUILD=build/ubsan SANITIZE=undefined check

clean:
	rm -rf bin lib build/obj build/tests build/bench build/asan build/ubsan build/fuzz demo

-include $(shell find $(BUILD)/build/obj -name '*.d' 2>/dev/null)

include tests/fuzz/fuzz.mk
