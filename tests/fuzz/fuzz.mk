# tests/fuzz/fuzz.mk — every libFuzzer target (clang, ASan + UBSan) of the parsers of outside data, included by the
# top-level Makefile:
#   make fuzz            build all targets and run each for FUZZ_SECONDS (default 60) from its committed seed
#                        corpus tests/fuzz/corpus/<name without fuzz_>; new inputs go to build/fuzz/corpus-<target>,
#                        crashes to build/fuzz/<target>-crash-*; FUZZ_TARGETS="fuzz_x fuzz_y" runs a subset
#   make fuzz-build      build them only (make check does, and tests/cli/test_fuzz.sh replays every seed corpus
#                        and fuzzes each target for a few seconds)
# The tokenizer, ingest and safetensors targets are built by capture/module.mk; the targets here compile the code
# they reach with clang's fuzzer instrumentation (build/fuzz/obj), libmoetrace included. fuzz_trace and
# fuzz_summaries make their base files themselves (their seeds are bit-flip lists); tests/fuzz/make_seeds.sh
# makes the others' seeds. tests/lsan.supp names the leaks inside libhdf5 that run.sh suppresses.

FZ_CC ?= clang
FZ_DIR := build/fuzz
FZ_SAN := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
FZ_CFLAGS = -std=c11 -D_GNU_SOURCE -g -O1 -Wno-pass-failed -fopenmp $(FZ_SAN) -fsanitize=fuzzer-no-link -Itraces -Icapture/engine -Icapture/corpus \
	-Icapture/tokenizer -Istats -Ireduce -Itests/fuzz $(shell pkg-config --cflags $(HDF5_PC) libzstd jansson gsl openblas 2>/dev/null)
FZ_LIBS = $(shell pkg-config --libs $(HDF5_PC) libzstd jansson gsl openblas 2>/dev/null) -fopenmp -lm -lpthread

# every target, the ones of capture/module.mk and a trace-reader target when its source is there
FZ_ALL := fuzz_tokenizer_load fuzz_tokenizer_encode fuzz_ingest fuzz_safetensors fuzz_config fuzz_corpus \
	fuzz_stats fuzz_steer fuzz_trace fuzz_summaries
FUZZ_TARGETS ?= $(FZ_ALL)

# the code each target here reaches, besides libmoetrace
FZ_TRACE_SRC := $(filter-out traces/info_main.c traces/moetrace_main.c,$(wildcard traces/*.c))
FZ_SRC_fuzz_config := $(wildcard capture/engine/*.c)
FZ_SRC_fuzz_corpus := $(wildcard capture/corpus/*.c)
FZ_SRC_fuzz_stats := stats/error.c stats/corr.c stats/tsv.c stats/lang.c stats/accuracy.c stats/profile.c \
	stats/tables.c stats/band.c stats/select.c
FZ_SRC_fuzz_steer :=
FZ_SRC_fuzz_trace :=
FZ_SRC_fuzz_summaries := $(filter-out reduce/reduce_main.c,$(wildcard reduce/*.c)) $(FZ_SRC_fuzz_stats) \
	tests/fuzz/fuzz_tables_open.c

.PHONY: fuzz fuzz-build fuzz-list

# the target names, one line (tests/cli/test_fuzz.sh reads it)
fuzz-list:
	@echo $(FZ_ALL)

fuzz-build: $(FZ_ALL:%=$(FZ_DIR)/%)

# each target for FUZZ_SECONDS, one after the other; stops at the first finding
fuzz: fuzz-build
	@FUZZ=$(abspath $(FZ_DIR)) sh tests/fuzz/run.sh long $(FUZZ_SECONDS) $(FUZZ_TARGETS)

# clang 14 has no _Float16 on x86-64: the engine's f16 rounding goes through __fp16 and compiler-rt's conversions
$(FZ_DIR)/obj/capture/engine/model_forward.o $(FZ_DIR)/obj/capture/engine/model_gptoss.o \
	$(FZ_DIR)/obj/capture/engine/model_phimoe.o $(FZ_DIR)/obj/capture/engine/model_deepseek.o: FZ_EXTRA := -D_Float16=__fp16
FZ_LIBS_fuzz_config = $(shell $(FZ_CC) -print-libgcc-file-name -rtlib=compiler-rt 2>/dev/null)

$(FZ_DIR)/obj/%.o: %.c | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(FZ_CC) $(FZ_CFLAGS) $(FZ_EXTRA) -MMD -MP -c $< -o $@

# one rule per target: its own file, the sources it reaches and libmoetrace, all instrumented
define FZ_TARGET_RULE
$(FZ_DIR)/$(1): $(FZ_DIR)/obj/tests/fuzz/$(1).o $(FZ_SRC_$(1):%.c=$(FZ_DIR)/obj/%.o) $(FZ_TRACE_SRC:%.c=$(FZ_DIR)/obj/%.o)
	$(FZ_CC) $(FZ_SAN) -fsanitize=fuzzer -o $$@ $$^ $(FZ_LIBS) $(FZ_LIBS_$(1))
endef
$(foreach t,fuzz_config fuzz_corpus fuzz_stats fuzz_steer fuzz_trace fuzz_summaries,$(eval $(call FZ_TARGET_RULE,$(t))))

# make check builds the targets (not under SANITIZE or make asan check: they carry clang's sanitizers, which do
# not mix with GCC's)
ifeq ($(SANITIZE)$(SAN_CHECK),)
check: fuzz-build
endif

-include $(shell find $(FZ_DIR)/obj -name '*.d' 2>/dev/null)
