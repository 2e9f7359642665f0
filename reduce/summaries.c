/* summaries.c — the per-sequence summaries file of phase 1 (reduce/SUMMARIES.md): writer, reader, concatenation.
 *
 * Rows are buffered and appended in blocks to extendible datasets, so memory does not grow with the trace set.
 * q and counts are chunked (64 sequences, 1 layer, n_experts) so phase 2 reads one layer at a time cheaply.
 */
#include <errno.h>
#include <hdf5.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mtr_h5.h"
#include "reduce_internal.h"


#define BLOCK SUMM_CHUNK_ROWS

#define D_SEQ_ID "seq/seq_id"
#define D_UNIT "seq/unit_id"
#define D_LANG "seq/lang"
#define D_DATASET "seq/dataset"
#define D_NTOK "seq/n_tokens"
#define D_NUSED "seq/n_used"
#define D_NBAD "seq/n_nonfinite"
#define D_JPAIRS "seq/jaccard_pairs"
#define D_Q "importance"
#define D_A "counts"
#define D_ENT "entropy"
#define D_TENT "token_entropy"
#define D_JAC "jaccard"
#define A_ROW_OFFSET "row_offset" /* a rank's part: rows start here (reduce/SUMMARIES.md) */

struct summ_writer {
    char path[4096], partial[4200];
    hid_t f;
    uint32_t L, E;
    size_t row0;          /* rows left empty before the first (a rank's part, aligned to the whole file's chunks) */
    size_t n_rows, n_buf; /* n_rows counts row0 */
    /* row buffers of BLOCK rows */
    uint64_t seq_id[BLOCK];
    char *unit[BLOCK], *lang[BLOCK], *dataset[BLOCK];
    uint32_t ntok[BLOCK], nused[BLOCK], nbad[BLOCK], jpairs[BLOCK];
    double *q, *ent, *tent, *jac; /* (BLOCK, L, E) / (BLOCK, L) */
    uint32_t *a;
};

static hid_t str_type(void)
{
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    return t;
}

static int create_ds(hid_t f, const char *name, hid_t type, int rank, const hsize_t *inner, const hsize_t *chunk_inner,
                     bool compress)
{
    hsize_t dims[3] = {0, 0, 0}, maxd[3] = {H5S_UNLIMITED, 0, 0}, chunk[3] = {BLOCK, 0, 0};
    for (int i = 1; i < rank; i++) {
        dims[i] = maxd[i] = inner[i - 1];
        chunk[i] = chunk_inner[i - 1];
    }
    hid_t sp = H5Screate_simple(rank, dims, maxd), dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(dcpl, rank, chunk);
    if (compress) {
        unsigned level = 1;
        H5Pset_shuffle(dcpl);
        H5Pset_filter(dcpl, MTR_ZSTD_FILTER_ID, H5Z_FLAG_MANDATORY, 1, &level);
    }
    hid_t d = H5Dcreate2(f, name, type, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    H5Pclose(dcpl);
    H5Sclose(sp);
    if (d < 0) return MTR_EHDF5;
    H5Dclose(d);
    return 0;
}

static int set_str_attr(hid_t obj, const char *name, const char *v)
{
    hid_t t = str_type(), s = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(obj, name, t, s, H5P_DEFAULT, H5P_DEFAULT);
    int rc = a < 0 || H5Awrite(a, t, &v) < 0 ? MTR_EHDF5 : 0;
    if (a >= 0) H5Aclose(a);
    H5Sclose(s);
    H5Tclose(t);
    return rc;
}

static int set_u32_attr(hid_t obj, const char *name, uint32_t v)
{
    hid_t s = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(obj, name, H5T_STD_U32LE, s, H5P_DEFAULT, H5P_DEFAULT);
    int rc = a < 0 || H5Awrite(a, H5T_NATIVE_UINT32, &v) < 0 ? MTR_EHDF5 : 0;
    if (a >= 0) H5Aclose(a);
    H5Sclose(s);
    return rc;
}

static int set_f64_attr(hid_t obj, const char *name, double v)
{
    hid_t s = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(obj, name, H5T_IEEE_F64LE, s, H5P_DEFAULT, H5P_DEFAULT);
    int rc = a < 0 || H5Awrite(a, H5T_NATIVE_DOUBLE, &v) < 0 ? MTR_EHDF5 : 0;
    if (a >= 0) H5Aclose(a);
    H5Sclose(s);
    return rc;
}

static int model_attrs(hid_t f, const mtr_model_info *m)
{
    hsize_t n = m->n_layers;
    int rc = set_str_attr(f, MTR_A_MODEL_ID, m->model_id) || set_str_attr(f, MTR_A_MODEL_TYPE, m->model_type) ||
             set_u32_attr(f, MTR_A_N_LAYERS, m->n_layers) || set_u32_attr(f, MTR_A_N_DECODER_LAYERS, m->n_decoder_layers) ||
             set_u32_attr(f, MTR_A_N_EXPERTS, m->n_experts) || set_u32_attr(f, MTR_A_TOP_K, m->top_k) ||
             set_str_attr(f, MTR_A_SCORE_FN, mtr_score_fn_name(m->score_fn)) ||
             set_u32_attr(f, MTR_A_RENORMALIZE, m->renormalize) || set_u32_attr(f, MTR_A_ROUTER_BIAS, m->router_bias) ||
             set_u32_attr(f, MTR_A_SELECTION_BIAS, m->selection_bias != NULL) ||
             (m->score_fn == MTR_SCORE_SPARSEMIXER && set_f64_attr(f, MTR_A_SPARSEMIXER_EPS, m->sparsemixer_eps));
    if (rc) return MTR_EHDF5;
    hid_t s = H5Screate_simple(1, &n, NULL);
    hid_t a = H5Acreate2(f, MTR_A_LAYER_INDEX, H5T_STD_I32LE, s, H5P_DEFAULT, H5P_DEFAULT);
    rc = a < 0 || H5Awrite(a, H5T_NATIVE_INT32, m->layer_index) < 0 ? MTR_EHDF5 : 0;
    if (a >= 0) H5Aclose(a);
    H5Sclose(s);
    if (!rc && m->selection_bias) {
        hsize_t d2[2] = {m->n_layers, m->n_experts};
        s = H5Screate_simple(2, d2, NULL);
        /* the dataset lives in the group "router", which a summaries file has no other use for */
        hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
        H5Pset_create_intermediate_group(lcpl, 1);
        hid_t d = H5Dcreate2(f, MTR_D_SELECTION_BIAS, H5T_IEEE_F32LE, s, lcpl, H5P_DEFAULT, H5P_DEFAULT);
        rc = d < 0 || H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, m->selection_bias) < 0 ? MTR_EHDF5 : 0;
        if (d >= 0) H5Dclose(d);
        H5Pclose(lcpl);
        H5Sclose(s);
    }
    return rc;
}

int summ_writer_create(summ_writer **out, const char *path, const mtr_model_info *m, bool topk_weights,
                       const char *settings_json)
{
    return summ_writer_create_at(out, path, m, topk_weights, settings_json, 0);
}

int summ_writer_create_at(summ_writer **out, const char *path, const mtr_model_info *m, bool topk_weights,
                          const char *settings_json, size_t row0)
{
    int rc = 0;
    *out = NULL;
    if ((rc = mtr_h5zstd_register())) return rc;
    summ_writer *w = calloc(1, sizeof *w);
    if (!w) return mtr_fail(MTR_ENOMEM, "out of memory");
    snprintf(w->path, sizeof w->path, "%s", path);
    snprintf(w->partial, sizeof w->partial, "%s.partial", path);
    w->L = m->n_layers;
    w->E = m->n_experts;
    w->row0 = w->n_rows = row0;
    size_t le = (size_t)w->L * w->E;
    w->q = malloc(BLOCK * le * sizeof(double));
    w->a = malloc(BLOCK * le * sizeof(uint32_t));
    w->ent = malloc(BLOCK * w->L * sizeof(double));
    w->tent = malloc(BLOCK * w->L * sizeof(double));
    w->jac = malloc(BLOCK * w->L * sizeof(double));
    if (!w->q || !w->a || !w->ent || !w->tent || !w->jac) {
        summ_writer_destroy(w);
        return mtr_fail(MTR_ENOMEM, "out of memory");
    }
    w->f = H5Fcreate(w->partial, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (w->f < 0) {
        free(w->q);
        w->q = NULL;
        summ_writer_destroy(w);
        return mtr_fail(MTR_EIO, "%s: cannot create", path);
    }
    hid_t g = H5Gcreate2(w->f, "seq", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Gclose(g);
    hid_t st = str_type();
    hsize_t le_in[2] = {w->L, w->E}, le_chunk[2] = {1, w->E}, l_in[1] = {w->L}, l_chunk[1] = {w->L};
    rc = set_str_attr(w->f, "format", MTR_SUMMARIES_FORMAT) || set_u32_attr(w->f, "format_version", MTR_SUMMARIES_VERSION) ||
         set_str_attr(w->f, "weights", topk_weights ? "topk" : "full") ||
         set_str_attr(w->f, "settings", settings_json ? settings_json : "{}") || model_attrs(w->f, m) ||
         create_ds(w->f, D_SEQ_ID, H5T_STD_U64LE, 1, NULL, NULL, true) || create_ds(w->f, D_UNIT, st, 1, NULL, NULL, false) ||
         create_ds(w->f, D_LANG, st, 1, NULL, NULL, false) || create_ds(w->f, D_DATASET, st, 1, NULL, NULL, false) ||
         create_ds(w->f, D_NTOK, H5T_STD_U32LE, 1, NULL, NULL, true) ||
         create_ds(w->f, D_NUSED, H5T_STD_U32LE, 1, NULL, NULL, true) ||
         create_ds(w->f, D_NBAD, H5T_STD_U32LE, 1, NULL, NULL, true) ||
         create_ds(w->f, D_JPAIRS, H5T_STD_U32LE, 1, NULL, NULL, true) ||
         create_ds(w->f, D_Q, H5T_IEEE_F64LE, 3, le_in, le_chunk, true) ||
         create_ds(w->f, D_A, H5T_STD_U32LE, 3, le_in, le_chunk, true) ||
         create_ds(w->f, D_ENT, H5T_IEEE_F64LE, 2, l_in, l_chunk, true) ||
         create_ds(w->f, D_TENT, H5T_IEEE_F64LE, 2, l_in, l_chunk, true) ||
         create_ds(w->f, D_JAC, H5T_IEEE_F64LE, 2, l_in, l_chunk, true) ||
         (row0 && set_u32_attr(w->f, A_ROW_OFFSET, (uint32_t)row0));
    H5Tclose(st);
    if (rc) {
        unlink(w->partial);
        summ_writer_destroy(w);
        return mtr_fail(MTR_EHDF5, "%s: cannot lay out the summaries file", path);
    }
    *out = w;
    return 0;
}

static int append_rows(hid_t f, const char *name, hid_t mtype, const void *data, size_t row0, size_t n)
{
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    if (d < 0) return MTR_EHDF5;
    hid_t fs = H5Dget_space(d);
    int rank = H5Sget_simple_extent_ndims(fs);
    hsize_t dims[3];
    H5Sget_simple_extent_dims(fs, dims, NULL);
    H5Sclose(fs);
    dims[0] = row0 + n;
    int rc = 0;
    if (H5Dset_extent(d, dims) < 0) rc = MTR_EHDF5;
    fs = H5Dget_space(d);
    hsize_t start[3] = {row0, 0, 0}, count[3] = {n, dims[1], dims[2]};
    hid_t ms = H5Screate_simple(rank, count, NULL);
    if (!rc && (H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL) < 0 ||
                H5Dwrite(d, mtype, ms, fs, H5P_DEFAULT, data) < 0))
        rc = MTR_EHDF5;
    H5Sclose(ms);
    H5Sclose(fs);
    H5Dclose(d);
    return rc;
}

static int flush_rows(summ_writer *w)
{
    if (!w->n_buf) return 0;
    size_t n = w->n_buf, r0 = w->n_rows;
    hid_t st = str_type();
    int rc = append_rows(w->f, D_SEQ_ID, H5T_NATIVE_UINT64, w->seq_id, r0, n) ||
             append_rows(w->f, D_UNIT, st, w->unit, r0, n) || append_rows(w->f, D_LANG, st, w->lang, r0, n) ||
             append_rows(w->f, D_DATASET, st, w->dataset, r0, n) ||
             append_rows(w->f, D_NTOK, H5T_NATIVE_UINT32, w->ntok, r0, n) ||
             append_rows(w->f, D_NUSED, H5T_NATIVE_UINT32, w->nused, r0, n) ||
             append_rows(w->f, D_NBAD, H5T_NATIVE_UINT32, w->nbad, r0, n) ||
             append_rows(w->f, D_JPAIRS, H5T_NATIVE_UINT32, w->jpairs, r0, n) ||
             append_rows(w->f, D_Q, H5T_NATIVE_DOUBLE, w->q, r0, n) ||
             append_rows(w->f, D_A, H5T_NATIVE_UINT32, w->a, r0, n) ||
             append_rows(w->f, D_ENT, H5T_NATIVE_DOUBLE, w->ent, r0, n) ||
             append_rows(w->f, D_TENT, H5T_NATIVE_DOUBLE, w->tent, r0, n) ||
             append_rows(w->f, D_JAC, H5T_NATIVE_DOUBLE, w->jac, r0, n);
    H5Tclose(st);
    for (size_t i = 0; i < n; i++) {
        free(w->unit[i]);
        free(w->lang[i]);
        free(w->dataset[i]);
        w->unit[i] = w->lang[i] = w->dataset[i] = NULL;
    }
    w->n_rows += n;
    w->n_buf = 0;
    return rc ? mtr_fail(MTR_EIO, "%s: cannot write summaries", w->path) : 0;
}

int summ_writer_append(summ_writer *w, const summ_row *row)
{
    size_t i = w->n_buf, le = (size_t)w->L * w->E;
    w->seq_id[i] = row->seq_id;
    w->unit[i] = strdup(row->unit_id);
    w->lang[i] = strdup(row->lang);
    w->dataset[i] = strdup(row->dataset);
    if (!w->unit[i] || !w->lang[i] || !w->dataset[i]) return mtr_fail(MTR_ENOMEM, "out of memory");
    w->ntok[i] = row->n_tokens;
    w->nused[i] = row->n_used;
    w->nbad[i] = row->n_nonfinite;
    w->jpairs[i] = row->jaccard_pairs;
    memcpy(w->q + i * le, row->q, le * sizeof(double));
    memcpy(w->a + i * le, row->a, le * sizeof(uint32_t));
    memcpy(w->ent + i * w->L, row->ent, w->L * sizeof(double));
    memcpy(w->tent + i * w->L, row->tent, w->L * sizeof(double));
    memcpy(w->jac + i * w->L, row->jac, w->L * sizeof(double));
    w->n_buf++;
    /* blocks end on the file's chunk boundaries (after row0, the first block is short) */
    return (w->n_rows + w->n_buf) % BLOCK == 0 ? flush_rows(w) : 0;
}

int summ_writer_close(summ_writer *w)
{
    int rc = flush_rows(w);
    if (!rc && set_u32_attr(w->f, "n_sequences", (uint32_t)(w->n_rows - w->row0))) rc = MTR_EHDF5;
    if (H5Fclose(w->f) < 0 && !rc) rc = mtr_fail(MTR_EIO, "%s: cannot close", w->path);
    w->f = H5I_INVALID_HID;
    if (!rc && rename(w->partial, w->path) < 0)
        rc = mtr_fail(MTR_EIO, "%s: rename: %s", w->path, strerror(errno));
    summ_writer_destroy(w);
    return rc;
}

void summ_writer_destroy(summ_writer *w)
{
    if (!w) return;
    if (w->f >= 0 && w->f != 0) H5Fclose(w->f);
    for (size_t i = 0; i < w->n_buf; i++) {
        free(w->unit[i]);
        free(w->lang[i]);
        free(w->dataset[i]);
    }
    free(w->q);
    free(w->a);
    free(w->ent);
    free(w->tent);
    free(w->jac);
    free(w);
}

/* ---- reading ---- */

/* rows [row0, row0 + n) of a dataset whose first dimension must be exactly row0 + n, and whose inner dimensions
 * are inner[0..rank-1) (rank 1 to 3) */
static int read_all(hid_t f, const char *name, hid_t mtype, void *out, size_t row0, size_t n, int want_rank,
                    const hsize_t *inner, const char *path)
{
    int rc = 0;
    hid_t d = mtr_h5_open_dataset(f, name, true, path, &rc);
    if (rc) return rc;
    hid_t sp = H5Dget_space(d);
    int rank = H5Sget_simple_extent_ndims(sp);
    hsize_t dims[3] = {0, 0, 0};
    bool shape_ok = rank == want_rank && H5Sget_simple_extent_dims(sp, dims, NULL) >= 0;
    for (int i = 1; shape_ok && i < rank; i++) shape_ok = dims[i] == inner[i - 1];
    /* a rank's part with no rows never grew to its row offset */
    const size_t want = n == 0 && dims[0] == 0 ? 0 : row0 + n;
    if (!shape_ok || dims[0] != want)
        rc = mtr_fail(MTR_EFORMAT, "%s: /%s is not %zu rows of rank %d%s", path, name, row0 + n, want_rank,
                      want_rank > 1 ? " with the model's layers (and experts)" : "");
    else if (n && H5Tis_variable_str(mtype) > 0 && (rc = mtr_h5_check_vlen_dset(d, row0 + n, name, path)))
        ; /* a damaged string heap: refused before HDF5 reads it */
    else if (n) {
        hsize_t start[3] = {row0, 0, 0}, count[3] = {n, dims[1], dims[2]};
        hid_t ms = H5Screate_simple(rank, count, NULL);
        if (H5Sselect_hyperslab(sp, H5S_SELECT_SET, start, NULL, count, NULL) < 0 ||
            mtr_h5_dread(d, mtype, ms, sp, out) < 0)
            rc = mtr_fail(MTR_ECORRUPT, "%s: cannot read /%s", path, name);
        H5Sclose(ms);
    }
    H5Sclose(sp);
    H5Dclose(d);
    return rc;
}

static int read_strs(hid_t f, const char *name, char **out, size_t row0, size_t n, const char *path)
{
    hid_t st = str_type();
    char **tmp = calloc(n ? n : 1, sizeof *tmp);
    int rc = tmp ? read_all(f, name, st, tmp, row0, n, 1, NULL, path) : mtr_fail(MTR_ENOMEM, "out of memory");
    for (size_t i = 0; !rc && i < n; i++)
        if (!(out[i] = strdup(tmp[i] ? tmp[i] : ""))) rc = mtr_fail(MTR_ENOMEM, "out of memory");
    if (tmp && n) {
        hsize_t dn = n;
        hid_t sp = H5Screate_simple(1, &dn, NULL);
        H5Dvlen_reclaim(st, sp, H5P_DEFAULT, tmp);
        H5Sclose(sp);
    }
    free(tmp);
    H5Tclose(st);
    return rc;
}

static int get_u32(hid_t f, const char *name, uint32_t *out, const char *path)
{
    uint64_t v = 0;
    int rc = mtr_h5_get_u64(f, name, &v, path);
    if (!rc && v > UINT32_MAX) rc = mtr_fail(MTR_EFORMAT, "%s: attribute '%s' is %llu, too large", path, name,
                                             (unsigned long long)v);
    if (!rc) *out = (uint32_t)v;
    return rc;
}

/* A (rows, L, E) table: its header sound and its shape the model's */
static int check_big(hid_t f, const char *name, size_t rows, uint32_t L, uint32_t E, const char *path)
{
    int rc = 0;
    hid_t d = mtr_h5_open_dataset(f, name, false, path, &rc);
    if (rc) return rc;
    hid_t sp = H5Dget_space(d);
    hsize_t dims[3] = {0, 0, 0};
    if (H5Sget_simple_extent_ndims(sp) != 3 || H5Sget_simple_extent_dims(sp, dims, NULL) < 0 ||
        (dims[0] != rows && !(rows > 0 && dims[0] == 0)) || dims[1] != L || dims[2] != E)
        rc = mtr_fail(MTR_EFORMAT, "%s: /%s is not (%zu, %u, %u) (rows, layers, experts)", path, name, rows, L, E);
    else
        rc = mtr_h5_check_storage(d, name, path);
    H5Sclose(sp);
    H5Dclose(d);
    return rc;
}

/* part: a rank's part of an MPI summarize (its rows may start at row_offset); otherwise such a file is refused */
static int summaries_open(mtr_summaries **out, const char *path, bool part)
{
    int rc = 0;
    *out = NULL;
    mtr_clear_error();
    if ((rc = mtr_h5zstd_register())) return rc;
    if (access(path, R_OK) != 0) return mtr_fail(MTR_ENOTFOUND, "%s: %s", path, strerror(errno));
    if ((rc = mtr_h5_check_file(path))) return rc;
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return mtr_fail(MTR_EFORMAT, "%s: not an HDF5 file (or damaged)", path);
    /* the root group's header, attributes and local heap, and the seq group's, before any name is looked up */
    if ((rc = mtr_h5_check_attrs(f, path)) ||
        (H5Lexists(f, "seq", H5P_DEFAULT) > 0 && (rc = mtr_h5_check_object(f, "seq", path)))) {
        H5Fclose(f);
        return rc;
    }
    mtr_summaries *s = calloc(1, sizeof *s);
    char *fmt = NULL, *weights = NULL, *sf = NULL, *mt = NULL, *mid = NULL;
    uint32_t ver = 0, n = 0, u = 0;
    if (!s) {
        rc = mtr_fail(MTR_ENOMEM, "out of memory");
        goto done;
    }
    snprintf(s->path, sizeof s->path, "%s", path);
    if ((rc = mtr_h5_get_str_alloc(f, "format", &fmt, path))) goto done;
    if (strcmp(fmt, MTR_SUMMARIES_FORMAT) != 0) {
        rc = mtr_fail(MTR_EFORMAT, "%s: not a moetrace summaries file (format '%s')", path, fmt);
        goto done;
    }
    if ((rc = get_u32(f, "format_version", &ver, path))) goto done;
    if (ver != MTR_SUMMARIES_VERSION) {
        rc = mtr_fail(MTR_EVERSION, "%s: summaries version %u, this reader supports %d", path, ver,
                             MTR_SUMMARIES_VERSION);
        goto done;
    }
    if ((rc = get_u32(f, "n_sequences", &n, path))) {
        rc = mtr_fail(MTR_EPARTIAL, "%s: summaries file was not finished", path);
        goto done;
    }
    if (H5Aexists(f, A_ROW_OFFSET) > 0) {
        uint32_t r0 = 0;
        if (!part) {
            rc = mtr_fail(MTR_EPARTIAL, "%s: one rank's part of an MPI summarize, not a summaries file", path);
            goto done;
        }
        if ((rc = get_u32(f, A_ROW_OFFSET, &r0, path))) goto done;
        s->row0 = r0;
    }
    mtr_model_info *m = &s->model;
    if ((rc = mtr_h5_get_str_alloc(f, MTR_A_MODEL_ID, &mid, path)) || (rc = mtr_h5_get_str_alloc(f, MTR_A_MODEL_TYPE, &mt, path)) ||
        (rc = mtr_h5_get_str_alloc(f, MTR_A_SCORE_FN, &sf, path)) || (rc = mtr_h5_get_str_alloc(f, "weights", &weights, path)) ||
        (rc = mtr_h5_get_str_alloc(f, "settings", &s->settings, path)))
        goto done;
    mtr_model_info_init(m, mid, mt, 1, 1, 1);
    if ((rc = get_u32(f, MTR_A_N_LAYERS, &m->n_layers, path)) || (rc = get_u32(f, MTR_A_N_EXPERTS, &m->n_experts, path)) ||
        (rc = get_u32(f, MTR_A_TOP_K, &m->top_k, path)) ||
        (rc = get_u32(f, MTR_A_N_DECODER_LAYERS, &m->n_decoder_layers, path)))
        goto done;
    if (m->n_layers < 1 || m->n_layers > MTR_MAX_LAYERS || m->n_experts < 1 || m->n_experts > MTR_MAX_EXPERTS ||
        m->top_k < 1 || m->top_k > m->n_experts || m->top_k > MTR_MAX_TOPK) {
        rc = mtr_fail(MTR_EFORMAT, "%s: implausible model dimensions", path);
        goto done;
    }
    if (mtr_score_fn_parse(&m->score_fn, sf)) {
        rc = mtr_fail(MTR_EFORMAT, "%s: unknown score_fn '%s'", path, sf);
        goto done;
    }
    if (m->score_fn == MTR_SCORE_SPARSEMIXER && (rc = mtr_h5_get_f64(f, MTR_A_SPARSEMIXER_EPS, &m->sparsemixer_eps, path)))
        goto done;
    if ((rc = get_u32(f, MTR_A_RENORMALIZE, &u, path))) goto done;
    m->renormalize = u;
    s->topk_weights = strcmp(weights, "topk") == 0;
    size_t L = m->n_layers;
    /* the sequence count sizes everything below: it must be the row count of a sound /seq/seq_id first */
    {
        hid_t d = mtr_h5_open_dataset(f, D_SEQ_ID, false, path, &rc); /* read_all checks its storage */
        if (rc) goto done;
        hid_t sp = H5Dget_space(d);
        hsize_t rows = 0;
        if (H5Sget_simple_extent_ndims(sp) != 1 || H5Sget_simple_extent_dims(sp, &rows, NULL) != 1 ||
            (rows != s->row0 + n && !(n == 0 && rows == 0)))
            rc = mtr_fail(MTR_EFORMAT, "%s: n_sequences is %u but /%s has %llu rows", path, n, D_SEQ_ID,
                          (unsigned long long)rows);
        H5Sclose(sp);
        H5Dclose(d);
        if (rc) goto done;
    }
    s->n_seqs = n;
    size_t nn = n ? n : 1;
    s->seq_id = malloc(nn * 8);
    s->unit_id = calloc(nn, sizeof(char *));
    s->lang = calloc(nn, sizeof(char *));
    s->dataset = calloc(nn, sizeof(char *));
    s->n_tokens = malloc(nn * 4);
    s->n_used = malloc(nn * 4);
    s->n_nonfinite = malloc(nn * 4);
    s->entropy = malloc(nn * L * 8);
    s->token_entropy = malloc(nn * L * 8);
    s->jaccard = malloc(nn * L * 8);
    if (!s->seq_id || !s->unit_id || !s->lang || !s->dataset || !s->n_tokens || !s->n_used || !s->n_nonfinite ||
        !s->entropy || !s->token_entropy || !s->jaccard) {
        rc = mtr_fail(MTR_ENOMEM, "%s: out of memory for %u sequences", path, n);
        goto done;
    }
    const size_t r0 = s->row0;
    const hsize_t inner_l[1] = {L};
    if ((rc = read_all(f, D_SEQ_ID, H5T_NATIVE_UINT64, s->seq_id, r0, n, 1, NULL, path)) ||
        (rc = read_strs(f, D_UNIT, s->unit_id, r0, n, path)) || (rc = read_strs(f, D_LANG, s->lang, r0, n, path)) ||
        (rc = read_strs(f, D_DATASET, s->dataset, r0, n, path)) ||
        (rc = read_all(f, D_NTOK, H5T_NATIVE_UINT32, s->n_tokens, r0, n, 1, NULL, path)) ||
        (rc = read_all(f, D_NUSED, H5T_NATIVE_UINT32, s->n_used, r0, n, 1, NULL, path)) ||
        (rc = read_all(f, D_NBAD, H5T_NATIVE_UINT32, s->n_nonfinite, r0, n, 1, NULL, path)) ||
        (rc = read_all(f, D_ENT, H5T_NATIVE_DOUBLE, s->entropy, r0, n, 2, inner_l, path)) ||
        (rc = read_all(f, D_TENT, H5T_NATIVE_DOUBLE, s->token_entropy, r0, n, 2, inner_l, path)) ||
        (rc = read_all(f, D_JAC, H5T_NATIVE_DOUBLE, s->jaccard, r0, n, 2, inner_l, path)))
        goto done;
    /* the (rows, L, E) tables are read a layer at a time later: their headers and shapes are checked now */
    if ((rc = check_big(f, D_Q, r0 + n, L, m->n_experts, path)) || (rc = check_big(f, D_A, r0 + n, L, m->n_experts, path)))
        goto done;
done:
    free(fmt);
    free(weights);
    free(sf);
    free(mt);
    free(mid);
    H5Fclose(f);
    if (rc) {
        mtr_summaries_close(s);
        return rc;
    }
    *out = s;
    return 0;
}

int mtr_summaries_open(mtr_summaries **out, const char *path) { return summaries_open(out, path, false); }

void mtr_summaries_close(mtr_summaries *s)
{
    if (!s) return;
    for (size_t i = 0; i < s->n_seqs; i++) {
        if (s->unit_id) free(s->unit_id[i]);
        if (s->lang) free(s->lang[i]);
        if (s->dataset) free(s->dataset[i]);
    }
    free(s->seq_id);
    free(s->unit_id);
    free(s->lang);
    free(s->dataset);
    free(s->n_tokens);
    free(s->n_used);
    free(s->n_nonfinite);
    free(s->entropy);
    free(s->token_entropy);
    free(s->jaccard);
    free(s->settings);
    free(s->selection_bias);
    free(s);
}

static int read_block(hid_t f, const char *name, hid_t mtype, size_t row0, size_t n, uint32_t layer, uint32_t E,
                      bool one_layer, void *out, const char *path)
{
    int rc = 0;
    hid_t d = mtr_h5_open_dataset(f, name, false, path, &rc);
    if (rc) return rc;
    hid_t fs = H5Dget_space(d);
    hsize_t dims[3] = {0, 0, 0};
    if (H5Sget_simple_extent_ndims(fs) != 3 || H5Sget_simple_extent_dims(fs, dims, NULL) < 0 || dims[0] < row0 + n ||
        dims[2] != E || (one_layer && layer >= dims[1])) {
        H5Sclose(fs);
        H5Dclose(d);
        return mtr_fail(MTR_EFORMAT, "%s: /%s is not (rows, layers, %u experts)", path, name, E);
    }
    hsize_t start[3] = {row0, one_layer ? layer : 0, 0}, count[3] = {n, one_layer ? 1 : dims[1], E};
    hid_t ms = H5Screate_simple(3, count, NULL);
    if (H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL) < 0 ||
        mtr_h5_dread(d, mtype, ms, fs, out) < 0)
        rc = mtr_fail(MTR_ECORRUPT, "%s: cannot read /%s", path, name);
    H5Sclose(ms);
    H5Sclose(fs);
    H5Dclose(d);
    return rc;
}

int mtr_summaries_read_layer(const mtr_summaries *s, uint32_t layer, double *q, uint32_t *counts)
{
    if (layer >= s->model.n_layers) return mtr_fail(MTR_EINVAL, "layer %u out of range", layer);
    if (s->n_seqs == 0) return 0;
    hid_t f = H5Fopen(s->path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return mtr_fail(MTR_EIO, "%s: cannot reopen", s->path);
    int rc = 0;
    if (q) rc = read_block(f, D_Q, H5T_NATIVE_DOUBLE, s->row0, s->n_seqs, layer, s->model.n_experts, true, q, s->path);
    if (!rc && counts)
        rc = read_block(f, D_A, H5T_NATIVE_UINT32, s->row0, s->n_seqs, layer, s->model.n_experts, true, counts,
                        s->path);
    H5Fclose(f);
    return rc;
}

/* ---- concatenation of rank parts ---- */

/* rows [row0, row0 + n) of an output dataset already extended to its final size */
static int write_rows(hid_t f, const char *name, hid_t mtype, const void *data, size_t row0, size_t n)
{
    if (!n) return 0;
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    if (d < 0) return MTR_EHDF5;
    hid_t fs = H5Dget_space(d);
    int rank = H5Sget_simple_extent_ndims(fs);
    hsize_t dims[3] = {0, 0, 0};
    H5Sget_simple_extent_dims(fs, dims, NULL);
    hsize_t start[3] = {row0, 0, 0}, count[3] = {n, dims[1], dims[2]};
    hid_t ms = H5Screate_simple(rank, count, NULL);
    int rc = H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL) < 0 ||
                     H5Dwrite(d, mtype, ms, fs, H5P_DEFAULT, data) < 0
                 ? MTR_EHDF5
                 : 0;
    H5Sclose(ms);
    H5Sclose(fs);
    H5Dclose(d);
    return rc;
}

static int set_rows(hid_t f, const char *name, size_t n)
{
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    if (d < 0) return MTR_EHDF5;
    hid_t fs = H5Dget_space(d);
    hsize_t dims[3] = {0, 0, 0};
    H5Sget_simple_extent_dims(fs, dims, NULL);
    H5Sclose(fs);
    dims[0] = n;
    int rc = H5Dset_extent(d, dims) < 0 ? MTR_EHDF5 : 0;
    H5Dclose(d);
    return rc;
}

/* importance or counts (rows, L, E), chunked (BLOCK, 1, E), of the whole file from the parts. A block of BLOCK rows
 * inside one part whose rows sit on the same chunk grid (a part written at its global row modulo BLOCK, as the
 * ranks write them) is copied as its stored, compressed chunks; a block that spans parts is decoded from them and
 * written anew. */
static int concat_big(hid_t out, const char *name, hid_t mtype, size_t esz, mtr_summaries **ps, const hid_t *pf,
                      const size_t *first, size_t n_parts, size_t total, uint32_t L, uint32_t E, void *buf,
                      unsigned char **raw, size_t *raw_cap, const char *out_path)
{
    int rc = 0;
    if ((rc = set_rows(out, name, total))) return mtr_fail(MTR_EIO, "%s: cannot extend /%s", out_path, name);
    hid_t dout = H5Dopen2(out, name, H5P_DEFAULT);
    hid_t *din = calloc(n_parts, sizeof *din);
    if (dout < 0 || !din) {
        rc = mtr_fail(din ? MTR_EHDF5 : MTR_ENOMEM, "%s: cannot open /%s", out_path, name);
        goto done;
    }
    for (size_t k = 0; k < n_parts; k++) din[k] = H5I_INVALID_HID;
    for (size_t k = 0; k < n_parts && !rc; k++)
        if ((din[k] = H5Dopen2(pf[k], name, H5P_DEFAULT)) < 0)
            rc = mtr_fail(MTR_EFORMAT, "%s: /%s missing", ps[k]->path, name);
    for (size_t b0 = 0, k = 0; b0 < total && !rc; b0 += BLOCK) {
        const size_t b1 = b0 + BLOCK < total ? b0 + BLOCK : total;
        while (first[k] + ps[k]->n_seqs <= b0) k++; /* the part holding row b0 */
        const mtr_summaries *p = ps[k];
        if (b1 <= first[k] + p->n_seqs && (first[k] - p->row0) % BLOCK == 0) {
            const hsize_t prow = b0 - first[k] + p->row0;
            for (uint32_t l = 0; l < L && !rc; l++) {
                hsize_t off_in[3] = {prow, l, 0}, off_out[3] = {b0, l, 0}, size = 0;
                uint32_t mask = 0;
                if (H5Dget_chunk_storage_size(din[k], off_in, &size) < 0 || size == 0) {
                    rc = mtr_fail(MTR_ECORRUPT, "%s: /%s: chunk at row %llu missing", p->path, name,
                                         (unsigned long long)prow);
                    break;
                }
                if (size > *raw_cap) {
                    unsigned char *nr = realloc(*raw, size);
                    if (!nr) {
                        rc = mtr_fail(MTR_ENOMEM, "out of memory");
                        break;
                    }
                    *raw = nr;
                    *raw_cap = size;
                }
                if (H5Dread_chunk(din[k], H5P_DEFAULT, off_in, &mask, *raw) < 0)
                    rc = mtr_fail(MTR_ECORRUPT, "%s: cannot read /%s", p->path, name);
                else if (H5Dwrite_chunk(dout, H5P_DEFAULT, mask, off_out, size, *raw) < 0)
                    rc = mtr_fail(MTR_EIO, "%s: cannot write /%s", out_path, name);
            }
            continue;
        }
        /* across parts (or off the grid): decode the block's rows from each part, write them as one block */
        for (size_t r = b0, kk = k; r < b1 && !rc; kk++) {
            const size_t end = first[kk] + ps[kk]->n_seqs < b1 ? first[kk] + ps[kk]->n_seqs : b1;
            if (end > r)
                rc = read_block(pf[kk], name, mtype, r - first[kk] + ps[kk]->row0, end - r, 0, E, false,
                                (unsigned char *)buf + (r - b0) * L * E * esz, ps[kk]->path);
            r = end > r ? end : r;
        }
        if (!rc && write_rows(out, name, mtype, buf, b0, b1 - b0))
            rc = mtr_fail(MTR_EIO, "%s: cannot write /%s", out_path, name);
    }
done:
    for (size_t k = 0; din && k < n_parts; k++)
        if (din[k] >= 0) H5Dclose(din[k]);
    free(din);
    if (dout >= 0) H5Dclose(dout);
    return rc;
}

int mtr_summaries_concat(const char *out_path, const char *const *parts, size_t n_parts)
{
    int rc = 0;
    summ_writer *w = NULL;
    if (n_parts == 0) return mtr_fail(MTR_EINVAL, "no parts to concatenate");
    mtr_summaries **ps = calloc(n_parts, sizeof *ps);
    hid_t *pf = calloc(n_parts, sizeof *pf);
    size_t *first = calloc(n_parts + 1, sizeof *first);
    void *buf = NULL;
    unsigned char *raw = NULL;
    size_t raw_cap = 0;
    uint32_t *jp = NULL;
    if (!ps || !pf || !first) {
        rc = mtr_fail(MTR_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t k = 0; k < n_parts; k++) pf[k] = H5I_INVALID_HID;
    for (size_t k = 0; k < n_parts && !rc; k++) {
        if ((rc = summaries_open(&ps[k], parts[k], true))) break;
        if (ps[k]->model.n_layers != ps[0]->model.n_layers || ps[k]->model.n_experts != ps[0]->model.n_experts ||
            ps[k]->topk_weights != ps[0]->topk_weights) {
            rc = mtr_fail(MTR_EMISMATCH, "%s: differs from %s", parts[k], parts[0]);
            break;
        }
        if ((pf[k] = H5Fopen(parts[k], H5F_ACC_RDONLY, H5P_DEFAULT)) < 0) {
            rc = mtr_fail(MTR_EFORMAT, "%s: cannot reopen", parts[k]);
            break;
        }
        first[k + 1] = first[k] + ps[k]->n_seqs;
    }
    if (rc) goto done;
    const uint32_t L = ps[0]->model.n_layers, E = ps[0]->model.n_experts;
    const size_t total = first[n_parts], le = (size_t)L * E;
    if (!(buf = malloc(BLOCK * le * 8)) || !(jp = malloc((total ? total : 1) * sizeof *jp))) {
        rc = mtr_fail(MTR_ENOMEM, "out of memory");
        goto done;
    }
    if ((rc = summ_writer_create(&w, out_path, &ps[0]->model, ps[0]->topk_weights, ps[0]->settings))) goto done;
    /* the sequence table and per-layer scalars (small: they are in memory) part by part */
    hid_t st = str_type();
    static const char *const small[] = {D_SEQ_ID, D_UNIT, D_LANG, D_DATASET, D_NTOK, D_NUSED, D_NBAD, D_JPAIRS,
                                        D_ENT, D_TENT, D_JAC};
    for (size_t i = 0; i < sizeof small / sizeof *small && !rc; i++)
        if (set_rows(w->f, small[i], total)) rc = mtr_fail(MTR_EIO, "%s: cannot extend /%s", out_path, small[i]);
    for (size_t k = 0; k < n_parts && !rc; k++) {
        const mtr_summaries *p = ps[k];
        const size_t r0 = first[k], n = p->n_seqs;
        if ((rc = read_all(pf[k], D_JPAIRS, H5T_NATIVE_UINT32, jp + r0, p->row0, n, 1, NULL, p->path))) break;
        if (write_rows(w->f, D_SEQ_ID, H5T_NATIVE_UINT64, p->seq_id, r0, n) ||
            write_rows(w->f, D_UNIT, st, p->unit_id, r0, n) || write_rows(w->f, D_LANG, st, p->lang, r0, n) ||
            write_rows(w->f, D_DATASET, st, p->dataset, r0, n) ||
            write_rows(w->f, D_NTOK, H5T_NATIVE_UINT32, p->n_tokens, r0, n) ||
            write_rows(w->f, D_NUSED, H5T_NATIVE_UINT32, p->n_used, r0, n) ||
            write_rows(w->f, D_NBAD, H5T_NATIVE_UINT32, p->n_nonfinite, r0, n) ||
            write_rows(w->f, D_JPAIRS, H5T_NATIVE_UINT32, jp + r0, r0, n) ||
            write_rows(w->f, D_ENT, H5T_NATIVE_DOUBLE, p->entropy, r0, n) ||
            write_rows(w->f, D_TENT, H5T_NATIVE_DOUBLE, p->token_entropy, r0, n) ||
            write_rows(w->f, D_JAC, H5T_NATIVE_DOUBLE, p->jaccard, r0, n))
            rc = mtr_fail(MTR_EIO, "%s: cannot write summaries", out_path);
    }
    H5Tclose(st);
    if (!rc)
        rc = concat_big(w->f, D_Q, H5T_NATIVE_DOUBLE, 8, ps, pf, first, n_parts, total, L, E, buf, &raw, &raw_cap,
                        out_path);
    if (!rc)
        rc = concat_big(w->f, D_A, H5T_NATIVE_UINT32, 4, ps, pf, first, n_parts, total, L, E, buf, &raw, &raw_cap,
                        out_path);
    if (!rc) {
        w->n_rows = total;
        rc = summ_writer_close(w);
        w = NULL;
    }
done:
    summ_writer_destroy(w);
    for (size_t k = 0; ps && k < n_parts; k++) {
        if (pf[k] >= 0) H5Fclose(pf[k]);
        mtr_summaries_close(ps[k]);
    }
    free(ps);
    free(pf);
    free(first);
    free(buf);
    free(raw);
    free(jp);
    return rc;
}
