# capture/module.mk — moetrace-capture and the libraries it is built from, one room each:
#   capture/tokenizer/  libmtr_tokenizer.a  Hugging Face tokenizer.json in C, the Jinja chat-template engine
#   capture/corpus/     libmtr_corpus.a     capture corpora, multiple-choice and generation sets, prompts, answers
#   capture/engine/     libmtr_model.a      the native inference engine (safetensors, config, forward pass)
#   capture/eval/       libmtr_eval.a       scoring and generation over the engine (accuracy per language)
#   capture/ingest/     libmtr_ingest.a     framed router-logit streams from other engines
#   capture/synth/      libmtr_synth.a      synthetic traces with planted structure
#   capture/*.c         the program: capture_main.c dispatches to the thin cmd_*.c command files
# Each room compiles with its own include path plus the public headers (mtr_*.h) of the rooms it builds on.

CAPTURE_ROOMS := tokenizer corpus engine eval ingest synth
COMP_INC_capture/tokenizer := -Icapture/tokenizer -Itraces
COMP_PKGS_capture/tokenizer := jansson libpcre2-8 libutf8proc
COMP_INC_capture/corpus := -Icapture/corpus -Icapture/tokenizer -Itraces
COMP_PKGS_capture/corpus := jansson
COMP_INC_capture/engine := -Icapture/engine -Itraces
COMP_PKGS_capture/engine := jansson openblas
COMP_INC_capture/eval := -Icapture/eval -Icapture/engine -Icapture/corpus -Icapture/tokenizer -Itraces
COMP_PKGS_capture/eval := jansson openblas
COMP_INC_capture/ingest := -Icapture/ingest -Itraces
COMP_PKGS_capture/ingest := jansson
COMP_INC_capture/synth := -Icapture/synth -Itraces
COMP_PKGS_capture/synth := jansson $(HDF5_PC)
COMP_INC_capture := -Icapture $(CAPTURE_ROOMS:%=-Icapture/%) -Itraces
COMP_PKGS_capture := jansson $(HDF5_PC) libzstd openblas libpcre2-8 libutf8proc
$(OBJ)/capture/%.o: COMP_INC = $(COMP_INC_capture)
$(OBJ)/capture/%.o: COMP_PKGS = $(COMP_PKGS_capture)
$(foreach r,$(CAPTURE_ROOMS),$(eval $$(OBJ)/capture/$(r)/%.o: COMP_INC = $$(COMP_INC_capture/$(r))))
$(foreach r,$(CAPTURE_ROOMS),$(eval $$(OBJ)/capture/$(r)/%.o: COMP_PKGS = $$(COMP_PKGS_capture/$(r))))

TOK_SRC := $(wildcard capture/tokenizer/*.c)
TOK_LIB := $(LIB)/libmtr_tokenizer.a
CORPUS_SRC := $(wildcard capture/corpus/*.c)
CORPUS_LIB := $(LIB)/libmtr_corpus.a
MODEL_SRC := $(wildcard capture/engine/*.c)
MODEL_LIB := $(LIB)/libmtr_model.a
EVAL_SRC := $(wildcard capture/eval/*.c)
EVAL_LIB := $(LIB)/libmtr_eval.a
INGEST_SRC := $(wildcard capture/ingest/*.c)
INGEST_LIB := $(LIB)/libmtr_ingest.a
SYNTH_SRC := $(wildcard capture/synth/*.c)
SYNTH_LIB := $(LIB)/libmtr_synth.a
CAPTURE_SRC := $(wildcard capture/*.c)
# link order: a library before the ones it builds on
CAPTURE_ARCHIVES := $(if $(EVAL_SRC),$(EVAL_LIB)) $(MODEL_LIB) $(CORPUS_LIB) $(TOK_LIB) $(INGEST_LIB) $(SYNTH_LIB)
MODULE_ARCHIVES += $(CAPTURE_ARCHIVES)
PROGRAMS += $(BIN)/moetrace-capture

$(TOK_LIB): $(TOK_SRC:%.c=$(OBJ)/%.o)
$(CORPUS_LIB): $(CORPUS_SRC:%.c=$(OBJ)/%.o)
$(MODEL_LIB): $(MODEL_SRC:%.c=$(OBJ)/%.o)
$(EVAL_LIB): $(EVAL_SRC:%.c=$(OBJ)/%.o)
$(INGEST_LIB): $(INGEST_SRC:%.c=$(OBJ)/%.o)
$(SYNTH_LIB): $(SYNTH_SRC:%.c=$(OBJ)/%.o)
# one archive per room
$(CAPTURE_ARCHIVES):
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $^

# the BPE merge loop and pre-tokenizer scans are the encode hot path
$(OBJ)/capture/tokenizer/tokenizer_bpe.o $(OBJ)/capture/tokenizer/tokenizer_text.o: KERNEL_FLAGS := -O3
# norms, rotary, softmax and the expert combine loops are the engine's element-wise hot path
$(OBJ)/capture/engine/model_forward.o: KERNEL_FLAGS := -O3
# MXFP4 dequantisation runs inside every gpt_oss expert product
$(OBJ)/capture/engine/model_gptoss.o: KERNEL_FLAGS := -O3
# phimoe's LayerNorm and LongRoPE tables, deepseek_v2's latent attention
$(OBJ)/capture/engine/model_phimoe.o $(OBJ)/capture/engine/model_deepseek.o: KERNEL_FLAGS := -O3
# the f32 softmax / RMSNorm / SiLU loops: vectorised exp through libmvec (see the file's header)
$(OBJ)/capture/engine/model_kernels.o: KERNEL_FLAGS := -O3 -ffast-math

$(BIN)/moetrace-capture: $(CAPTURE_SRC:%.c=$(OBJ)/%.o) $(CAPTURE_ARCHIVES) $(CLI_LIB) $(LIB)/libmoetrace.a
	@mkdir -p $(@D)
	$(CC) -fopenmp $(LDFLAGS) -o $@ $^ $(call pc,--libs,$(COMP_PKGS_capture)) -lm -lpthread

# what the tests, tools and benchmarks of these rooms link (see the top-level Makefile)
TEST_ARCHIVES_test_tokenizer := $(TOK_LIB)
TEST_INC_test_tokenizer := -Icapture/tokenizer
TEST_PKGS_test_tokenizer := libpcre2-8 libutf8proc
TEST_ARCHIVES_bench_tokenizer := $(TOK_LIB)
TEST_INC_bench_tokenizer := -Icapture/tokenizer
TEST_PKGS_bench_tokenizer := libpcre2-8 libutf8proc
TEST_ARCHIVES_test_corpus := $(CORPUS_LIB)
TEST_INC_test_corpus := -Icapture/corpus -Icapture/tokenizer
TEST_PKGS_test_corpus := libpcre2-8 libutf8proc
TEST_ARCHIVES_test_model := $(MODEL_LIB)
TEST_INC_test_model := -Icapture/engine
TEST_PKGS_test_model := openblas
TEST_ARCHIVES_engine_prefill := $(MODEL_LIB)
TEST_INC_engine_prefill := -Icapture/engine
TEST_PKGS_engine_prefill := openblas
# test_eval also reads the accuracy files back through moetrace-stats' reader (STATS_ARCHIVE: stats/module.mk,
# read later, hence the deferred "=")
TEST_ARCHIVES_test_eval = $(EVAL_LIB) $(MODEL_LIB) $(CORPUS_LIB) $(TOK_LIB) $(STATS_ARCHIVE)
TEST_INC_test_eval := -Icapture/eval -Icapture/engine -Icapture/corpus -Icapture/tokenizer -Istats
TEST_PKGS_test_eval := openblas libpcre2-8 libutf8proc gsl
TEST_ARCHIVES_test_ingest := $(INGEST_LIB)
TEST_INC_test_ingest := -Icapture/ingest
TEST_ARCHIVES_bench_ingest := $(INGEST_LIB)
TEST_INC_bench_ingest := -Icapture/ingest

# ---- fuzz targets (libFuzzer, clang) for the parsers of this component: each runs for FUZZ_SECONDS (default 60)
# from its committed seed corpus; findings go to build/fuzz/
FUZZ_SECONDS ?= 60
FUZZ_CC ?= clang
FUZZ_SAN := -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined
FUZZ_TARGETS := fuzz_tokenizer_load fuzz_tokenizer_encode
TRACE_SRC_NOMAIN = $(LIB_SRC)

.PHONY: fuzz-tokenizer fuzz-ingest fuzz-safetensors
# run a built fuzz target for FUZZ_SECONDS from its seed corpus (tests/fuzz/corpus/<name without fuzz_>)
define run_fuzz
	@mkdir -p build/fuzz/corpus-$(1)
	@echo "== $(1) ($(FUZZ_SECONDS) s)"
	build/fuzz/$(1) -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -malloc_limit_mb=1024 \
		-artifact_prefix=build/fuzz/$(1)- build/fuzz/corpus-$(1) tests/fuzz/corpus/$(patsubst fuzz_%,%,$(1))
endef
fuzz-tokenizer: $(FUZZ_TARGETS:%=build/fuzz/%)
	$(call run_fuzz,fuzz_tokenizer_load)
	$(call run_fuzz,fuzz_tokenizer_encode)
fuzz-ingest: build/fuzz/fuzz_ingest
	$(call run_fuzz,fuzz_ingest)
fuzz-safetensors: build/fuzz/fuzz_safetensors
	$(call run_fuzz,fuzz_safetensors)

# each target with the sources it exercises compiled in (instrumented), libmoetrace's sources too
build/fuzz/fuzz_tokenizer_%: tests/fuzz/fuzz_tokenizer_%.c $(TOK_SRC) $(wildcard capture/tokenizer/*.h) | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_SAN) -Icapture/tokenizer -Itraces $(call pc,--cflags,$(HDF5_PC) jansson libpcre2-8 libutf8proc) -o $@ \
		$< $(TOK_SRC) traces/error.c traces/util.c $(call pc,--libs,jansson libpcre2-8 libutf8proc)
build/fuzz/fuzz_ingest: tests/fuzz/fuzz_ingest.c $(INGEST_SRC) capture/ingest/mtr_ingest.h $(LIB_SRC) | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_SAN) -fopenmp -Icapture/ingest -Itraces $(call pc,--cflags,$(COMP_PKGS_traces)) -o $@ $< \
		$(INGEST_SRC) $(LIB_SRC) $(call pc,--libs,$(COMP_PKGS_traces)) -lm -lpthread
build/fuzz/fuzz_safetensors: tests/fuzz/fuzz_safetensors.c capture/engine/safetensors.c $(wildcard capture/engine/*.h) $(LIB_SRC) | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_SAN) -fopenmp -Icapture/engine -Itraces $(call pc,--cflags,$(COMP_PKGS_traces) openblas) -o $@ \
		$< capture/engine/safetensors.c $(LIB_SRC) $(call pc,--libs,$(COMP_PKGS_traces)) -lm -lpthread
