# capture/module.mk — the parts of moetrace-capture built as libraries of their own (see the top-level Makefile:
# a fragment appends to MODULE_ARCHIVES / MODULE_PKGS / CAPTURE_SRC and adds its own targets).

# ---- tokenizer: Hugging Face tokenizer.json in C (capture/mtr_tokenizer.h) ----
TOK_SRC := $(wildcard capture/tokenizer*.c)
TOK_LIB := $(LIB)/libmtr_tokenizer.a
MODULE_ARCHIVES += $(TOK_LIB)
MODULE_PKGS += libpcre2-8 libutf8proc
CAPTURE_SRC += capture/cmd_tokenize.c

# the tokenizer archive (linked into moetrace-capture, unit tests, tools and benchmarks)
$(TOK_LIB): $(TOK_SRC:%.c=$(OBJ)/%.o)
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $^

# the BPE merge loop and pre-tokenizer scans are the encode hot path
$(OBJ)/capture/tokenizer_bpe.o $(OBJ)/capture/tokenizer_text.o: KERNEL_FLAGS := -O3

# fuzz targets (libFuzzer, clang): the tokenizer.json loader and encode on arbitrary bytes, each for
# FUZZ_SECONDS (default 60) from the committed seed corpus; findings go to build/fuzz/
FUZZ_SECONDS ?= 60
FUZZ_CC ?= clang
FUZZ_TARGETS := fuzz_tokenizer_load fuzz_tokenizer_encode
FUZZ_FLAGS = -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -Icapture -Itraces \
	$(shell pkg-config --cflags jansson libpcre2-8 libutf8proc 2>/dev/null)
FUZZ_LIBS = $(shell pkg-config --libs jansson libpcre2-8 libutf8proc 2>/dev/null)

.PHONY: fuzz-tokenizer
# build the fuzz targets with clang and run each for a bounded time
fuzz-tokenizer: $(FUZZ_TARGETS:%=build/fuzz/%)
	@for f in $(FUZZ_TARGETS); do \
		mkdir -p build/fuzz/corpus-$$f && \
		echo "== $$f ($(FUZZ_SECONDS) s)" && \
		build/fuzz/$$f -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -malloc_limit_mb=1024 \
			-artifact_prefix=build/fuzz/$$f- build/fuzz/corpus-$$f tests/fuzz/corpus/$${f#fuzz_} || exit 1; \
	done

# one libFuzzer binary per tests/fuzz/fuzz_*.c, with the tokenizer sources compiled in (instrumented)
build/fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(TOK_SRC) capture/tokenizer_internal.h capture/mtr_tokenizer.h | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ $< $(TOK_SRC) $(FUZZ_LIBS)

# ---- ingest: framed router-logit streams from other engines (capture/mtr_ingest.h, traces/INGEST.md) ----
INGEST_LIB := $(LIB)/libmtr_ingest.a
MODULE_ARCHIVES += $(INGEST_LIB)
CAPTURE_SRC += capture/cmd_ingest.c

# the ingest archive: encoder, decoder and the reader/writer pipeline
$(INGEST_LIB): $(OBJ)/capture/ingest.o
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $^

.PHONY: fuzz-ingest
# the ingest decoder under libFuzzer for FUZZ_SECONDS from its seed corpus (replayed by tests/unit/test_ingest.c)
fuzz-ingest: build/fuzz/fuzz_ingest
	@mkdir -p build/fuzz/corpus-fuzz_ingest
	build/fuzz/fuzz_ingest -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -malloc_limit_mb=1024 \
		-artifact_prefix=build/fuzz/fuzz_ingest- build/fuzz/corpus-fuzz_ingest tests/fuzz/corpus/ingest

# the decoder instrumented, libmoetrace (model checks, dtype names) linked as built
build/fuzz/fuzz_ingest: tests/fuzz/fuzz_ingest.c capture/ingest.c capture/mtr_ingest.h $(LIB)/libmoetrace.a | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(FUZZ_CC) -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -Icapture -Itraces \
		$(shell pkg-config --cflags $(HDF5_PC) jansson libzstd 2>/dev/null) -o $@ tests/fuzz/fuzz_ingest.c \
		capture/ingest.c $(LIB)/libmoetrace.a $(shell pkg-config --libs $(HDF5_PC) jansson libzstd 2>/dev/null) \
		-fopenmp -lm -lpthread

# ---- inference engine: Hugging Face MoE checkpoints (capture/mtr_model.h) ----
MODEL_LIB := $(LIB)/libmtr_model.a
MODULE_ARCHIVES += $(MODEL_LIB)
MODULE_PKGS += openblas
CAPTURE_SRC += capture/cmd_run.c

$(MODEL_LIB): $(OBJ)/capture/safetensors.o $(OBJ)/capture/model.o $(OBJ)/capture/model_forward.o \
		$(OBJ)/capture/model_kernels.o
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $^

# architectures beyond the shared forward, one file each
$(MODEL_LIB): $(OBJ)/capture/model_phimoe.o $(OBJ)/capture/model_deepseek.o

# norms, rotary, softmax and the expert combine loops are the engine's element-wise hot path
$(OBJ)/capture/model_forward.o $(OBJ)/capture/model_phimoe.o $(OBJ)/capture/model_deepseek.o: KERNEL_FLAGS := -O3
# the f32 softmax / RMSNorm / SiLU loops: vectorised exp through libmvec (see the file's header)
$(OBJ)/capture/model_kernels.o: KERNEL_FLAGS := -O3 -ffast-math

# ---- corpus: capture corpora, scoring and generation sets, prompt templates (capture/mtr_corpus.h) ----
CORPUS_LIB := $(LIB)/libmtr_corpus.a
MODULE_ARCHIVES += $(CORPUS_LIB)

$(CORPUS_LIB): $(OBJ)/capture/corpus.o
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $^

.PHONY: fuzz-safetensors
# the safetensors header reader under libFuzzer for FUZZ_SECONDS from its seed corpus (replayed by test_model)
fuzz-safetensors: build/fuzz/fuzz_safetensors
	@mkdir -p build/fuzz/corpus-fuzz_safetensors
	build/fuzz/fuzz_safetensors -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -malloc_limit_mb=1024 \
		-artifact_prefix=build/fuzz/fuzz_safetensors- build/fuzz/corpus-fuzz_safetensors tests/fuzz/corpus/safetensors

build/fuzz/fuzz_safetensors: tests/fuzz/fuzz_safetensors.c capture/safetensors.c capture/mtr_model.h $(LIB)/libmoetrace.a | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(FUZZ_CC) -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -Icapture -Itraces \
		$(shell pkg-config --cflags $(HDF5_PC) jansson libzstd openblas 2>/dev/null) -o $@ tests/fuzz/fuzz_safetensors.c \
		capture/safetensors.c $(LIB)/libmoetrace.a $(shell pkg-config --libs $(HDF5_PC) jansson libzstd 2>/dev/null) \
		-fopenmp -lm -lpthread
