# tests/fuzz/fuzz_trace.mk — the trace reader under libFuzzer (tests/fuzz/fuzz_trace.c: bit flips in a small
# shard, ASan + UBSan), `make fuzz-trace` for FUZZ_SECONDS from the seed corpus; findings go to build/fuzz/.
# Included at the end of the top-level Makefile.

.PHONY: fuzz-trace
fuzz-trace: build/fuzz/fuzz_trace
	@mkdir -p build/fuzz/corpus-fuzz_trace
	build/fuzz/fuzz_trace -max_total_time=$(FUZZ_SECONDS) -timeout=20 -rss_limit_mb=2048 -malloc_limit_mb=1024 \
		-artifact_prefix=build/fuzz/fuzz_trace- build/fuzz/corpus-fuzz_trace tests/fuzz/corpus/trace

# libmoetrace compiled in, instrumented (HDF5 itself is not: its crashes still show as signals)
build/fuzz/fuzz_trace: tests/fuzz/fuzz_trace.c $(LIB_SRC) traces/internal.h traces/moetrace.h traces/mtr_format.h \
		| $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(FUZZ_CC) -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -Itraces \
		$(shell pkg-config --cflags $(HDF5_PC) jansson libzstd 2>/dev/null) -o $@ tests/fuzz/fuzz_trace.c $(LIB_SRC) \
		$(shell pkg-config --libs $(HDF5_PC) jansson libzstd 2>/dev/null) -fopenmp -lm -lpthread
