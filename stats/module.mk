# stats/module.mk — moetrace-stats and libmtrstats (correlations, middle bands, expert selection, steering
# files). Included by the top-level Makefile; see its "component fragments" comment.

COMP_INC_stats := -Istats -Itraces
COMP_PKGS_stats := gsl $(HDF5_PC) jansson
$(OBJ)/stats/%.o: COMP_INC = $(COMP_INC_stats)
$(OBJ)/stats/%.o: COMP_PKGS = $(COMP_PKGS_stats)
STATS_LIB_SRC := stats/error.c stats/corr.c stats/tsv.c stats/lang.c stats/accuracy.c stats/profile.c \
	stats/tables.c stats/band.c stats/select.c
STATS_CLI_SRC := stats/stats_main.c stats/cli_common.c stats/cmd_correlate.c stats/cmd_band.c stats/cmd_select.c \
	stats/cmd_effect.c
STATS_ARCHIVE := $(LIB)/libmtrstats.a

PROGRAMS += $(BIN)/moetrace-stats
MODULE_ARCHIVES += $(STATS_ARCHIVE)

# libmtrstats: the statistics library (static; linked into moetrace-stats and its unit test)
$(STATS_ARCHIVE): $(STATS_LIB_SRC:%.c=$(OBJ)/%.o)
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $^

# moetrace-stats: the command line over libmtrstats and libmoetrace's steering files
$(BIN)/moetrace-stats: $(STATS_CLI_SRC:%.c=$(OBJ)/%.o) $(STATS_ARCHIVE) $(CLI_LIB) $(LIB)/libmoetrace.a
	@mkdir -p $(@D)
	$(CC) -fopenmp $(LDFLAGS) -o $@ $^ $(call pc,--libs,$(COMP_PKGS_stats)) -lm -lpthread

TEST_ARCHIVES_test_stats := $(STATS_ARCHIVE)
TEST_INC_test_stats := -Istats
TEST_PKGS_test_stats := gsl
