# reduce/module.mk — moetrace-reduce: libmtrreduce.a (phase 1 and 2 kernels, summaries, tables) and the program.
# Built with OpenMPI when its pkg-config file is present (mpirun -np N moetrace-reduce ...).

COMP_INC_reduce := -Ireduce -Itraces
COMP_PKGS_reduce := $(HDF5_PC) libzstd jansson
$(OBJ)/reduce/%.o: COMP_INC = $(COMP_INC_reduce)
$(OBJ)/reduce/%.o: COMP_PKGS = $(COMP_PKGS_reduce)
REDUCE_LIB_SRC := reduce/kernels.c reduce/kernels_avx2.c reduce/summaries.c reduce/summarize.c reduce/reference.c reduce/tables.c
REDUCE_LIB := $(LIB)/libmtrreduce.a
MODULE_ARCHIVES += $(REDUCE_LIB)
PROGRAMS += $(BIN)/moetrace-reduce
MPI_CFLAGS = $(call pc,--cflags,ompi-c)
MPI_LIBS = $(call pc,--libs,ompi-c)
MPI_DEFS = $(if $(MPI_LIBS),-DMTR_WITH_MPI)

# the per-token kernels: vector exp from glibc's libmvec needs -ffast-math; inputs are checked finite first
$(OBJ)/reduce/kernels.o: KERNEL_FLAGS := -O3 -ffast-math
# the AVX2 path has its own exp and exact threshold comparisons: no -ffast-math
$(OBJ)/reduce/kernels_avx2.o: KERNEL_FLAGS := -O3

$(REDUCE_LIB): $(REDUCE_LIB_SRC:%.c=$(OBJ)/%.o)
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $^

$(OBJ)/reduce/reduce_main.o: reduce/reduce_main.c | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(MPI_CFLAGS) $(MPI_DEFS) -c $< -o $@

$(BIN)/moetrace-reduce: $(OBJ)/reduce/reduce_main.o $(REDUCE_LIB) $(CLI_LIB) $(LIB)/libmoetrace.a
	@mkdir -p $(@D)
	$(CC) -fopenmp $(LDFLAGS) -o $@ $^ $(call pc,--libs,$(COMP_PKGS_reduce)) -lm -lpthread $(MPI_LIBS)

TEST_ARCHIVES_test_reduce := $(REDUCE_LIB)
TEST_INC_test_reduce := -Ireduce
