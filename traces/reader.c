/* reader.c — opening runs and shards, validation, raw chunk access and the block iterator (FORMAT.md "Readers").
 *
 * HDF5 is used for metadata only. The logits chunk table (file address, size, filter mask of every chunk) is read
 * once per shard; chunk bytes are then fetched with pread and decoded (zstd, unshuffle, dtype) by the caller's
 * threads, because the serial HDF5 library serialises every H5Dread behind one global lock.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include "internal.h"

#define MAX_SEQS_PER_SHARD (1u << 30)
#define MAX_TOKENS_PER_SHARD ((uint64_t)1 << 40)

typedef struct {
    mtr_shard_info info;
    char *path;
    int fd;
    hid_t h5;                /* opened lazily for token / top-k reads */
    mtr_chunk_ref *chunks;   /* (n_chunks) */
    mtr_dtype dtype;
    int shuffle_bit, zstd_bit; /* position of each filter in the pipeline (-1 = absent) */
    size_t chunk_elems;
    uint32_t run;
    char run_id[MTR_MAX_NAME]; /* root attributes, checked against the run's */
    mtr_dtype root_dtype;
} shard_rt;

struct mtr_run {
    mtr_model_info model;
    float *selection_bias;
    mtr_run_meta *metas; /* (n_runs) */
    char **meta_strings; /* owned steering / settings strings, 2 per run */
    size_t n_runs;
    shard_rt *shards;
    size_t n_shards;
    mtr_seq_info *seqs;
    size_t n_seqs, seq_cap;
    char **strings; /* every string the seqs point to */
    size_t n_strings, str_cap;
    size_t max_chunk_bytes; /* largest decoded chunk of any shard, in stored bytes */
    size_t max_raw_bytes;   /* largest stored chunk */
    mtr_decoder *serial;    /* decoder for the single-threaded convenience readers */
    const json_t *man_model; /* while a run directory opens: its manifest's "model", which every shard must match */
    const char *man_dir;     /* and that directory */
};

struct mtr_decoder {
    const mtr_run *r;
    ZSTD_DCtx *dctx;
    uint8_t *raw, *tmp, *stored; /* raw: max_raw_bytes; tmp and stored: max_chunk_bytes */
};

static void tune_malloc(void)
{
    /* chunk buffers of several MiB: keep them on the heap and do not hand them back after every chunk, which made
     * reads 2-3x slower (measured) */
    static int done;
    if (done) return;
    done = 1;
    mallopt(M_MMAP_THRESHOLD, 256 << 20);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

/* ---- sequence table ---- */

static char *keep_string(mtr_run *r, char *s)
{
    if (r->n_strings == r->str_cap) {
        size_t ncap = r->str_cap ? 2 * r->str_cap : 1024;
        char **np = realloc(r->strings, ncap * sizeof *np);
        if (!np) {
            free(s);
            return NULL;
        }
        r->strings = np;
        r->str_cap = ncap;
    }
    return r->strings[r->n_strings++] = s;
}

/* H5Dopen2 once the dataset's header has been checked (mtr_h5_check_object); H5I_INVALID_HID with *rc set when
 * it is damaged, or with *rc 0 when it is missing (the caller names what is missing). */
static hid_t open_dataset(hid_t f, const char *name, const char *path, int *rc)
{
    *rc = 0;
    if (H5Lexists(f, name, H5P_DEFAULT) <= 0 || (*rc = mtr_h5_check_object(f, name, path))) return H5I_INVALID_HID;
    return H5Dopen2(f, name, H5P_DEFAULT);
}

/* The dataset's shape is exactly (d0, d1, d2) of the given rank (checked before anything sized by it is used) */
static int check_shape(hid_t f, const char *name, int rank, uint64_t d0, uint64_t d1, uint64_t d2, const char *path)
{
    int rc = 0;
    hid_t d = open_dataset(f, name, path, &rc);
    if (rc) return rc;
    if (d >= 0 && (rc = mtr_h5_check_storage(d, name, path))) {
        H5Dclose(d);
        return rc;
    }
    hid_t sp = d >= 0 ? H5Dget_space(d) : H5I_INVALID_HID;
    hsize_t dims[3] = {0, 0, 0};
    if (sp < 0 || H5Sget_simple_extent_ndims(sp) != rank || H5Sget_simple_extent_dims(sp, dims, NULL) < 0 ||
        dims[0] != d0 || (rank > 1 && dims[1] != d1) || (rank > 2 && dims[2] != d2))
        rc = rank == 1 ? mtr_fail(MTR_EFORMAT, "%s: /%s missing or not of %llu rows", path, name, (unsigned long long)d0)
                       : mtr_fail(MTR_EFORMAT, "%s: /%s missing or not (%llu, %llu, %llu)", path, name,
                                  (unsigned long long)d0, (unsigned long long)d1, (unsigned long long)d2);
    if (sp >= 0) H5Sclose(sp);
    if (d >= 0) H5Dclose(d);
    return rc;
}

static int read_column(hid_t f, const char *name, hid_t mtype, void *out, uint64_t n, const char *path)
{
    int rc = 0;
    hid_t d = open_dataset(f, name, path, &rc);
    if (rc) return rc;
    if (d < 0) return mtr_fail(MTR_EFORMAT, "%s: dataset /%s missing", path, name);
    hid_t sp = H5Dget_space(d);
    hssize_t np = sp >= 0 ? H5Sget_simple_extent_npoints(sp) : -1;
    if ((rc = mtr_h5_check_storage(d, name, path)))
        ; /* data the read would copy past a buffer: refused */
    else if (np < 0 || (uint64_t)np != n)
        rc = mtr_fail(MTR_EFORMAT, "%s: /%s has %lld rows, expected %llu", path, name, (long long)np,
                      (unsigned long long)n);
    else if (n > 0 && H5Tis_variable_str(mtype) > 0 && (rc = mtr_h5_check_vlen_dset(d, n, name, path)))
        ; /* a damaged string heap: refused before HDF5 reads it */
    else if (n > 0 && mtr_h5_dread(d, mtype, H5S_ALL, H5S_ALL, out) < 0)
        rc = mtr_fail(MTR_ECORRUPT, "%s: cannot read /%s", path, name);
    if (sp >= 0) H5Sclose(sp);
    H5Dclose(d);
    return rc;
}

static int read_str_column(mtr_run *r, hid_t f, const char *name, char **out, uint64_t n, const char *path)
{
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    char **tmp = calloc(n ? n : 1, sizeof *tmp);
    int rc = tmp ? read_column(f, name, t, tmp, n, path) : mtr_fail(MTR_ENOMEM, "%s: out of memory", path);
    for (uint64_t i = 0; !rc && i < n; i++)
        if (!(out[i] = keep_string(r, strdup(tmp[i] ? tmp[i] : "")))) rc = mtr_fail(MTR_ENOMEM, "out of memory");
    if (tmp && n > 0) {
        hid_t sp = H5Screate_simple(1, (hsize_t[]){n}, NULL);
        H5Dvlen_reclaim(t, sp, H5P_DEFAULT, tmp);
        H5Sclose(sp);
    }
    free(tmp);
    H5Tclose(t);
    return rc;
}

/* ---- shard validation ---- */

static bool has_hdf5_signature(const char *path)
{
    static const unsigned char sig[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
    unsigned char buf[8];
    int fd = open(path, O_RDONLY);
    if (fd < 0) return false;
    bool ok = pread(fd, buf, 8, 0) == 8 && memcmp(buf, sig, 8) == 0;
    close(fd);
    return ok;
}

/* Which filters the logits pipeline holds, and where; anything but shuffle and zstd is refused. */
static int read_pipeline(shard_rt *s, hid_t dcpl)
{
    int n = H5Pget_nfilters(dcpl);
    s->shuffle_bit = s->zstd_bit = -1;
    for (int i = 0; i < n; i++) {
        unsigned flags = 0, cd[8];
        size_t ncd = 8;
        char name[64];
        H5Z_filter_t id = H5Pget_filter2(dcpl, (unsigned)i, &flags, &ncd, cd, sizeof name, name, NULL);
        if (id == H5Z_FILTER_SHUFFLE && s->zstd_bit < 0)
            s->shuffle_bit = i;
        else if (id == MTR_ZSTD_FILTER_ID)
            s->zstd_bit = i;
        else
            return mtr_fail(MTR_EFORMAT, "%s: /%s uses filter %d at step %d; only shuffle then zstd (%d) are read",
                            s->path, MTR_D_LOGITS, (int)id, i, MTR_ZSTD_FILTER_ID);
    }
    return 0;
}

static int load_chunk_table(mtr_run *r, shard_rt *s, hid_t f, uint64_t n_tokens)
{
    int rc = 0;
    hid_t d = H5I_INVALID_HID, sp = H5I_INVALID_HID, dcpl = H5I_INVALID_HID, ft = H5I_INVALID_HID;
    const mtr_model_info *m = &r->model;
    char dt[16];
    if (H5Lexists(f, MTR_D_LOGITS, H5P_DEFAULT) <= 0) return 0; /* top-k only */
    d = open_dataset(f, MTR_D_LOGITS, s->path, &rc);
    if (rc) return rc;
    if (d < 0) return mtr_fail(MTR_EFORMAT, "%s: cannot open /%s", s->path, MTR_D_LOGITS);
    if ((rc = mtr_h5_get_str(d, MTR_A_DTYPE, dt, sizeof dt, s->path))) goto close_d;
    if (mtr_dtype_parse(&s->dtype, dt)) {
        rc = mtr_fail(MTR_EFORMAT, "%s: /%s has unknown dtype '%s'", s->path, MTR_D_LOGITS, dt);
        goto close_d;
    }
    if (s->dtype != s->root_dtype) { /* which one to believe is unknowable: the numbers would be a guess */
        rc = mtr_fail(MTR_EFORMAT, "%s: /%s has dtype '%s' but the root stored_dtype '%s'", s->path, MTR_D_LOGITS, dt,
                      mtr_dtype_name(s->root_dtype));
        goto close_d;
    }
    ft = H5Dget_type(d);
    if (H5Tget_size(ft) != mtr_dtype_size(s->dtype) || H5Tget_order(ft) != H5T_ORDER_LE) {
        rc = mtr_fail(MTR_EFORMAT, "%s: /%s element type does not match dtype '%s' (little-endian)", s->path,
                      MTR_D_LOGITS, dt);
        goto close_d;
    }
    sp = H5Dget_space(d);
    hsize_t dims[3] = {0, 0, 0}, cdims[3] = {0, 0, 0};
    if (H5Sget_simple_extent_ndims(sp) != 3 || H5Sget_simple_extent_dims(sp, dims, NULL) < 0 ||
        dims[0] != n_tokens || dims[1] != m->n_layers || dims[2] != m->n_experts) {
        rc = mtr_fail(MTR_EFORMAT, "%s: /%s has shape (%llu, %llu, %llu), the attributes say (n_tokens %llu, "
                      "n_layers %u, n_experts %u)", s->path, MTR_D_LOGITS, (unsigned long long)dims[0],
                      (unsigned long long)dims[1], (unsigned long long)dims[2], (unsigned long long)n_tokens,
                      m->n_layers, m->n_experts);
        goto close_d;
    }
    dcpl = H5Dget_create_plist(d);
    if (H5Pget_layout(dcpl) != H5D_CHUNKED || H5Pget_chunk(dcpl, 3, cdims) != 3 || cdims[0] < 1 ||
        cdims[0] > 65536 || cdims[1] != m->n_layers || cdims[2] != m->n_experts) {
        rc = mtr_fail(MTR_EFORMAT, "%s: /%s must be chunked (tokens, n_layers, n_experts)", s->path, MTR_D_LOGITS);
        goto close_d;
    }
    if ((rc = read_pipeline(s, dcpl))) goto close_d;
    s->info.has_logits = true;
    s->info.chunk_tokens = (uint32_t)cdims[0];
    s->chunk_elems = (size_t)cdims[0] * m->n_layers * m->n_experts;
    size_t chunk_bytes = s->chunk_elems * mtr_dtype_size(s->dtype);
    size_t raw_max = ZSTD_compressBound(chunk_bytes) + 64;
    uint64_t nc = (n_tokens + cdims[0] - 1) / cdims[0];
    s->info.n_chunks = (uint32_t)nc;
    if (nc && !(s->chunks = calloc(nc, sizeof *s->chunks))) {
        rc = mtr_fail(MTR_ENOMEM, "%s: out of memory for %llu chunks", s->path, (unsigned long long)nc);
        goto close_d;
    }
    for (uint64_t c = 0; c < nc; c++) {
        hsize_t off[3] = {c * cdims[0], 0, 0};
        haddr_t addr = HADDR_UNDEF;
        hsize_t size = 0;
        unsigned mask = 0;
        if (H5Dget_chunk_info_by_coord(d, off, &mask, &addr, &size) < 0 || addr == HADDR_UNDEF) {
            rc = mtr_fail(MTR_EFORMAT, "%s: logits chunk %llu (token %llu) is missing", s->path,
                          (unsigned long long)c, (unsigned long long)off[0]);
            goto close_d;
        }
        if (addr + size > s->info.file_bytes) {
            rc = mtr_fail(MTR_ETRUNCATED, "%s: logits chunk %llu lies past the end of the file (truncated?)",
                          s->path, (unsigned long long)c);
            goto close_d;
        }
        if (size == 0 || size > raw_max) {
            rc = mtr_fail(MTR_EFORMAT, "%s: logits chunk %llu has impossible size %llu", s->path,
                          (unsigned long long)c, (unsigned long long)size);
            goto close_d;
        }
        mtr_chunk_ref *ref = &s->chunks[c];
        ref->addr = addr;
        ref->size = size;
        ref->filter_mask = mask;
        ref->tok0 = (uint32_t)off[0];
        ref->n_tok = (uint32_t)(n_tokens - off[0] < cdims[0] ? n_tokens - off[0] : cdims[0]);
        s->info.stored_bytes += size;
        if (size > r->max_raw_bytes) r->max_raw_bytes = size;
    }
    if (chunk_bytes > r->max_chunk_bytes) r->max_chunk_bytes = chunk_bytes;
close_d:
    if (dcpl >= 0) H5Pclose(dcpl);
    if (ft >= 0) H5Tclose(ft);
    if (sp >= 0) H5Sclose(sp);
    H5Dclose(d);
    return rc;
}

/* A shard of a run directory must describe the model its manifest records; one that does not is blamed (compared
 * only with the run's first shard, a bad first shard would have the good second one blamed). */
static int check_manifest_model(const mtr_run *r, const mtr_model_info *m, const char *path)
{
    const json_t *j = r->man_model;
    if (!json_is_object(j)) return 0;
    const char *id = json_string_value(json_object_get(j, "model_id"));
    const json_t *nl = json_object_get(j, "n_layers"), *ne = json_object_get(j, "n_experts"),
                 *k = json_object_get(j, "top_k");
    if (id && strcmp(id, m->model_id) != 0)
        return mtr_fail(MTR_EMISMATCH, "%s: model '%s' is not the run's '%s' (%s/%s)", path, m->model_id, id,
                        r->man_dir, MTR_MANIFEST_NAME);
    if ((json_is_integer(nl) && json_integer_value(nl) != m->n_layers) ||
        (json_is_integer(ne) && json_integer_value(ne) != m->n_experts) ||
        (json_is_integer(k) && json_integer_value(k) != m->top_k))
        return mtr_fail(MTR_EMISMATCH,
                        "%s: model dimensions (%u layers, %u experts, top-%u) are not the run's (%lld, %lld, %lld) "
                        "(%s/%s)", path, m->n_layers, m->n_experts, m->top_k, (long long)json_integer_value(nl),
                        (long long)json_integer_value(ne), (long long)json_integer_value(k), r->man_dir,
                        MTR_MANIFEST_NAME);
    return 0;
}

static int open_shard(mtr_run *r, const char *path, uint32_t run_index, unsigned flags, bool first)
{
    int rc = 0;
    hid_t f = H5I_INVALID_HID;
    size_t plen = strlen(path), slen = strlen(MTR_PARTIAL_SUFFIX);
    if (plen > slen && strcmp(path + plen - slen, MTR_PARTIAL_SUFFIX) == 0 && !(flags & MTR_OPEN_ALLOW_PARTIAL))
        return mtr_fail(MTR_EPARTIAL, "%s: partial shard (its writer did not finish it)", path);
    struct stat st;
    if (stat(path, &st) != 0) return mtr_fail(MTR_ENOTFOUND, "%s: %s", path, strerror(errno));

    shard_rt *np = realloc(r->shards, (r->n_shards + 1) * sizeof *np);
    if (!np) return mtr_fail(MTR_ENOMEM, "out of memory");
    r->shards = np;
    shard_rt *s = &r->shards[r->n_shards++];
    memset(s, 0, sizeof *s);
    s->fd = -1;
    s->h5 = H5I_INVALID_HID;
    s->run = run_index;
    s->path = strdup(path);
    s->info.path = s->path;
    s->info.file_bytes = (uint64_t)st.st_size;
    if (!s->path) return mtr_fail(MTR_ENOMEM, "out of memory");

    if (!has_hdf5_signature(path)) return mtr_fail(MTR_EFORMAT, "%s: not an HDF5 file", path);
    if ((rc = mtr_h5_check_file(path))) return rc;
    f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return mtr_fail(MTR_ETRUNCATED, "%s: HDF5 cannot open it (truncated or damaged)", path);
    /* the headers and local heaps of the root group and its groups, before anything looks up a name in them */
    if ((rc = mtr_h5_check_attrs(f, path))) goto close_f;
    static const char *const groups[] = {MTR_G_SEQ, MTR_G_TOK, MTR_G_ROUTER};
    for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++)
        if (H5Lexists(f, groups[g], H5P_DEFAULT) > 0 && (rc = mtr_h5_check_object(f, groups[g], path))) goto close_f;

    char fmt[64];
    uint64_t ver = 0, nseq = 0, ntok = 0;
    if (mtr_h5_get_str(f, MTR_A_FORMAT, fmt, sizeof fmt, path) || strcmp(fmt, MTR_FORMAT_NAME) != 0) {
        rc = mtr_fail(MTR_EFORMAT, "%s: not a moetrace shard (attribute '%s' is not \"%s\")", path, MTR_A_FORMAT,
                      MTR_FORMAT_NAME);
        goto close_f;
    }
    if ((rc = mtr_h5_get_u64(f, MTR_A_FORMAT_VERSION, &ver, path))) goto close_f;
    if (ver != MTR_FORMAT_VERSION) {
        rc = mtr_fail(MTR_EVERSION, "%s: format_version %llu, this reader supports %d", path,
                      (unsigned long long)ver, MTR_FORMAT_VERSION);
        goto close_f;
    }
    mtr_model_info m;
    float *bias = NULL;
    if ((rc = mtr_read_model_attrs(f, &m, &bias, path))) goto close_f;
    if ((rc = check_manifest_model(r, &m, path))) {
        free(bias);
        goto close_f;
    }
    if (first) {
        r->model = m;
        r->selection_bias = bias;
        r->model.selection_bias = bias;
    } else {
        rc = mtr_model_compare(&r->model, &m, path, r->shards[0].path);
        free(bias);
        if (rc) goto close_f;
    }
    if (!mtr_h5_has_attr(f, MTR_A_N_SEQUENCES) || !mtr_h5_has_attr(f, MTR_A_N_TOKENS)) {
        rc = mtr_fail(MTR_EPARTIAL, "%s: shard was not finished (no sequence count)", path);
        goto close_f;
    }
    if ((rc = mtr_h5_get_u64(f, MTR_A_N_SEQUENCES, &nseq, path)) || (rc = mtr_h5_get_u64(f, MTR_A_N_TOKENS, &ntok, path)))
        goto close_f;
    if (nseq > MAX_SEQS_PER_SHARD || ntok > MAX_TOKENS_PER_SHARD) {
        rc = mtr_fail(MTR_EFORMAT, "%s: implausible counts (%llu sequences, %llu tokens)", path,
                      (unsigned long long)nseq, (unsigned long long)ntok);
        goto close_f;
    }
    s->info.n_sequences = nseq;
    s->info.n_tokens = ntok;
    char dt[16];
    if ((rc = mtr_h5_get_str(f, MTR_A_RUN_ID, s->run_id, sizeof s->run_id, path)) ||
        (rc = mtr_h5_get_str(f, MTR_A_STORED_DTYPE, dt, sizeof dt, path)))
        goto close_f;
    if (mtr_dtype_parse(&s->root_dtype, dt)) {
        rc = mtr_fail(MTR_EFORMAT, "%s: unknown stored_dtype '%s'", path, dt);
        goto close_f;
    }
    if ((rc = load_chunk_table(r, s, f, ntok))) goto close_f;
    s->info.has_topk = H5Lexists(f, MTR_D_TOPK_IDS, H5P_DEFAULT) > 0;
    if (!s->info.has_logits && !s->info.has_topk) {
        rc = mtr_fail(MTR_EFORMAT, "%s: holds neither /%s nor /%s", path, MTR_D_LOGITS, MTR_D_TOPK_IDS);
        goto close_f;
    }
    /* the top-k columns are read on demand into (T, L, K) buffers; the sequence arrays below are sized by nseq */
    if ((s->info.has_topk &&
         ((rc = check_shape(f, MTR_D_TOPK_IDS, 3, ntok, r->model.n_layers, r->model.top_k, path)) ||
          (rc = check_shape(f, MTR_D_TOPK_WEIGHTS, 3, ntok, r->model.n_layers, r->model.top_k, path)))) ||
        (rc = check_shape(f, MTR_D_SEQ_ID, 1, nseq, 0, 0, path)))
        goto close_f;

    /* sequences: read, then check that token ranges are inside the shard, ascending and disjoint */
    if (r->n_seqs + nseq > r->seq_cap) {
        size_t ncap = r->seq_cap ? r->seq_cap : 1024;
        while (ncap < r->n_seqs + nseq) ncap *= 2;
        mtr_seq_info *ns = realloc(r->seqs, ncap * sizeof *ns);
        if (!ns) {
            rc = mtr_fail(MTR_ENOMEM, "out of memory");
            goto close_f;
        }
        r->seqs = ns;
        r->seq_cap = ncap;
    }
    uint64_t *u64 = malloc((nseq ? nseq : 1) * 8);
    uint32_t *u32 = malloc((nseq ? nseq : 1) * 4);
    char **strs = malloc((nseq ? nseq : 1) * sizeof *strs);
    mtr_seq_info *out = r->seqs + r->n_seqs;
    if (!u64 || !u32 || !strs) {
        rc = mtr_fail(MTR_ENOMEM, "out of memory");
        goto free_cols;
    }
    memset(out, 0, nseq * sizeof *out);
    if ((rc = read_column(f, MTR_D_SEQ_ID, H5T_NATIVE_UINT64, u64, nseq, path))) goto free_cols;
    for (uint64_t i = 0; i < nseq; i++) {
        out[i].seq_id = u64[i];
        out[i].shard = (uint32_t)(r->n_shards - 1);
        out[i].run = run_index;
    }
    if ((rc = read_column(f, MTR_D_TOKEN_OFFSET, H5T_NATIVE_UINT64, u64, nseq, path))) goto free_cols;
    for (uint64_t i = 0; i < nseq; i++) out[i].token_offset = u64[i];
    if ((rc = read_column(f, MTR_D_SEQ_N_TOKENS, H5T_NATIVE_UINT32, u32, nseq, path))) goto free_cols;
    for (uint64_t i = 0; i < nseq; i++) out[i].n_tokens = u32[i];
    if ((rc = read_column(f, MTR_D_FLAGS, H5T_NATIVE_UINT32, u32, nseq, path))) goto free_cols;
    for (uint64_t i = 0; i < nseq; i++) out[i].flags = u32[i];
    if ((rc = read_str_column(r, f, MTR_D_UNIT_ID, strs, nseq, path))) goto free_cols;
    for (uint64_t i = 0; i < nseq; i++) out[i].unit_id = strs[i];
    if ((rc = read_str_column(r, f, MTR_D_LANG, strs, nseq, path))) goto free_cols;
    for (uint64_t i = 0; i < nseq; i++) out[i].lang = strs[i];
    if ((rc = read_str_column(r, f, MTR_D_DATASET, strs, nseq, path))) goto free_cols;
    for (uint64_t i = 0; i < nseq; i++) out[i].dataset = strs[i];
    uint64_t next = 0;
    for (uint64_t i = 0; i < nseq; i++) {
        if (out[i].n_tokens == 0 || out[i].token_offset < next || out[i].token_offset + out[i].n_tokens > ntok) {
            rc = mtr_fail(MTR_EFORMAT, "%s: sequence %llu (seq_id %llu) has a bad token range", path,
                          (unsigned long long)i, (unsigned long long)out[i].seq_id);
            goto free_cols;
        }
        next = out[i].token_offset + out[i].n_tokens;
    }
    /* token columns must match the token count (their contents are read on demand) */
    const char *tokcols[] = {MTR_D_TOKEN_ID, MTR_D_POSITION, MTR_D_ROLE};
    for (size_t c = 0; c < 3; c++) {
        hid_t d = open_dataset(f, tokcols[c], path, &rc);
        if (rc || (d >= 0 && (rc = mtr_h5_check_storage(d, tokcols[c], path)))) {
            if (d >= 0) H5Dclose(d);
            goto free_cols;
        }
        hid_t sp = d >= 0 ? H5Dget_space(d) : H5I_INVALID_HID;
        hssize_t np2 = sp >= 0 ? H5Sget_simple_extent_npoints(sp) : -1;
        if (sp >= 0) H5Sclose(sp);
        if (d >= 0) H5Dclose(d);
        if (np2 < 0 || (uint64_t)np2 != ntok) {
            rc = mtr_fail(MTR_EFORMAT, "%s: /%s missing or not (n_tokens)", path, tokcols[c]);
            goto free_cols;
        }
    }
    r->n_seqs += nseq;
    s->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (s->fd < 0) rc = mtr_fail(MTR_EIO, "%s: %s", path, strerror(errno));
free_cols:
    free(u64);
    free(u32);
    free(strs);
close_f:
    H5Fclose(f);
    return rc;
}

/* ---- runs ---- */

static int add_run_meta(mtr_run *r)
{
    mtr_run_meta *nm = realloc(r->metas, (r->n_runs + 1) * sizeof *nm);
    if (!nm) return MTR_ENOMEM;
    r->metas = nm;
    char **ns = realloc(r->meta_strings, (r->n_runs + 1) * 2 * sizeof *ns);
    if (!ns) return MTR_ENOMEM;
    r->meta_strings = ns;
    memset(&r->metas[r->n_runs], 0, sizeof *r->metas);
    r->meta_strings[2 * r->n_runs] = r->meta_strings[2 * r->n_runs + 1] = NULL;
    r->n_runs++;
    return 0;
}

/* Fill the run metadata from a shard's root attributes (used for a single shard, and to check a manifest). */
static int meta_from_shard(mtr_run *r, size_t run_index, const char *path)
{
    mtr_run_meta *m = &r->metas[run_index];
    char dt[16] = "", stored[64] = "";
    int rc = 0;
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return mtr_fail(MTR_ETRUNCATED, "%s: HDF5 cannot open it (truncated or damaged)", path);
    if ((rc = mtr_h5_get_str(f, MTR_A_RUN_ID, m->run_id, sizeof m->run_id, path)) ||
        (rc = mtr_h5_get_str(f, MTR_A_PRODUCER, m->producer, sizeof m->producer, path)) ||
        (rc = mtr_h5_get_str(f, MTR_A_PRODUCER_VERSION, m->producer_version, sizeof m->producer_version, path)) ||
        (rc = mtr_h5_get_str(f, MTR_A_CORPUS_ID, m->corpus_id, sizeof m->corpus_id, path)) ||
        (rc = mtr_h5_get_str(f, MTR_A_STORED_DTYPE, dt, sizeof dt, path)) ||
        (rc = mtr_h5_get_str(f, MTR_A_STORED, stored, sizeof stored, path)) ||
        (rc = mtr_h5_get_str_alloc(f, MTR_A_STEERING, &r->meta_strings[2 * run_index], path)) ||
        (rc = mtr_h5_get_str_alloc(f, MTR_A_CAPTURE_SETTINGS, &r->meta_strings[2 * run_index + 1], path)))
        goto close_f;
    if (mtr_dtype_parse(&m->stored_dtype, dt)) {
        rc = mtr_fail(MTR_EFORMAT, "%s: unknown stored_dtype '%s'", path, dt);
        goto close_f;
    }
    m->stored = MTR_STORED_LOGITS;
    for (int s = 0; s < MTR_STORED_COUNT; s++)
        if (strcmp(stored, mtr_stored_name((mtr_stored)s)) == 0) m->stored = (mtr_stored)s;
    m->steering = r->meta_strings[2 * run_index];
    m->capture_settings = r->meta_strings[2 * run_index + 1];
close_f:
    H5Fclose(f);
    return rc;
}

static int is_dir(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0) return -1;
    return S_ISDIR(st.st_mode) ? 1 : 0;
}

static int cmp_seq_id(const void *a, const void *b)
{
    const mtr_seq_info *x = *(const mtr_seq_info *const *)a, *y = *(const mtr_seq_info *const *)b;
    return x->seq_id < y->seq_id ? -1 : x->seq_id > y->seq_id ? 1 : (x->shard > y->shard) - (x->shard < y->shard);
}

/* seq_ids are unique within a run (FORMAT.md 1): the sequences from first_seq on, all of one run */
static int check_unique_seq_ids(mtr_run *r, size_t first_seq, const char *dir)
{
    size_t n = r->n_seqs - first_seq;
    if (n < 2) return 0;
    const mtr_seq_info **v = malloc(n * sizeof *v);
    if (!v) return mtr_fail(MTR_ENOMEM, "%s: out of memory", dir);
    for (size_t i = 0; i < n; i++) v[i] = &r->seqs[first_seq + i];
    qsort(v, n, sizeof *v, cmp_seq_id);
    int rc = 0;
    for (size_t i = 1; i < n && !rc; i++)
        if (v[i]->seq_id == v[i - 1]->seq_id) {
            const char *a = strrchr(r->shards[v[i - 1]->shard].path, '/'), *b = strrchr(r->shards[v[i]->shard].path, '/');
            rc = mtr_fail(MTR_EDUP, "%s: seq_id %llu is in both %s and %s", dir, (unsigned long long)v[i]->seq_id,
                          a ? a + 1 : r->shards[v[i - 1]->shard].path, b ? b + 1 : r->shards[v[i]->shard].path);
        }
    free(v);
    return rc;
}

/* what a JSON value is, for a message: "a string", "missing", ... */
static const char *json_kind(const json_t *v)
{
    if (!v) return "missing";
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

static int open_run_dir(mtr_run *r, const char *dir, uint32_t run_index, unsigned flags)
{
    json_t *man = NULL;
    int rc = mtr_manifest_load(&man, dir);
    if (rc == MTR_ENOTFOUND) return mtr_fail(MTR_ENOTFOUND, "%s: not a run (no %s)", dir, MTR_MANIFEST_NAME);
    if (rc) return rc;
    const char *fmt = json_string_value(json_object_get(man, "format"));
    const json_t *jver = json_object_get(man, "format_version");
    json_int_t ver = json_integer_value(jver);
    json_t *shards = json_object_get(man, "shards");
    char path[4160];
    size_t i;
    json_t *s;
    mtr_run_meta *meta = &r->metas[run_index];
    if (!fmt || strcmp(fmt, MTR_FORMAT_NAME) != 0) {
        rc = mtr_fail(MTR_EFORMAT, "%s/%s: not a moetrace manifest", dir, MTR_MANIFEST_NAME);
        goto done;
    }
    if (!json_is_integer(jver)) {
        rc = mtr_fail(MTR_EFORMAT, "%s/%s: format_version is %s, not an integer", dir, MTR_MANIFEST_NAME,
                      json_kind(jver));
        goto done;
    }
    if (ver != MTR_FORMAT_VERSION) {
        rc = mtr_fail(MTR_EVERSION, "%s/%s: format_version %lld, this reader supports %d", dir, MTR_MANIFEST_NAME,
                      (long long)ver, MTR_FORMAT_VERSION);
        goto done;
    }
    if (!json_is_array(shards)) {
        rc = mtr_fail(MTR_EFORMAT, "%s/%s: no shard list", dir, MTR_MANIFEST_NAME);
        goto done;
    }
    if (json_array_size(shards) == 0) {
        rc = mtr_fail(MTR_ENOTFOUND, "%s: run holds no finished shard yet", dir);
        goto done;
    }
    meta->manifest_complete = json_is_true(json_object_get(man, "complete"));
    const char *run_id = json_string_value(json_object_get(man, "run_id"));
    const char *stored_dtype = json_string_value(json_object_get(man, "stored_dtype"));
    size_t first_seq = r->n_seqs;
    r->man_model = json_object_get(man, "model");
    r->man_dir = dir;
    json_array_foreach(shards, i, s)
    {
        const char *file = json_string_value(json_object_get(s, "file"));
        if (!file) {
            rc = mtr_fail(MTR_EFORMAT, "%s/%s: shard entry %zu has no \"file\" string", dir, MTR_MANIFEST_NAME, i);
            goto done;
        }
        /* a shard is a file in the run directory: a path out of it (or into another) is refused, never followed */
        if (!*file || strchr(file, '/') || strcmp(file, ".") == 0 || strcmp(file, "..") == 0) {
            rc = mtr_fail(MTR_EFORMAT, "%s/%s: shard entry %zu, \"%s\", is not a file name in the run directory "
                          "(a shard path may not hold '/' or be '.' or '..')", dir, MTR_MANIFEST_NAME, i, file);
            goto done;
        }
        if ((rc = mtr_path_join(path, sizeof path, dir, file))) {
            rc = mtr_fail(MTR_EFORMAT, "%s/%s: shard entry %zu: the path of \"%s\" is too long", dir,
                          MTR_MANIFEST_NAME, i, file);
            goto done;
        }
        for (size_t j = 0; j < i; j++)
            if (strcmp(file, json_string_value(json_object_get(json_array_get(shards, j), "file"))) == 0) {
                rc = mtr_fail(MTR_EFORMAT, "%s: %s lists %s twice (entries %zu and %zu)", dir, MTR_MANIFEST_NAME,
                              file, j, i);
                goto done;
            }
        if ((rc = open_shard(r, path, run_index, flags & ~MTR_OPEN_ALLOW_PARTIAL, r->n_shards == 0))) goto done;
        const shard_rt *sh = &r->shards[r->n_shards - 1];
        if (run_id && strcmp(sh->run_id, run_id) != 0) {
            rc = mtr_fail(MTR_EMISMATCH, "%s: run_id '%s' is not the run's '%s' (%s): a shard of another run",
                          path, sh->run_id, run_id, MTR_MANIFEST_NAME);
            goto done;
        }
        if (stored_dtype && strcmp(mtr_dtype_name(sh->root_dtype), stored_dtype) != 0) {
            rc = mtr_fail(MTR_EMISMATCH, "%s: stored_dtype '%s' is not the run's '%s' (%s)", path,
                          mtr_dtype_name(sh->root_dtype), stored_dtype, MTR_MANIFEST_NAME);
            goto done;
        }
        if (i == 0 && (rc = meta_from_shard(r, run_index, path))) goto done;
    }
    if ((rc = check_unique_seq_ids(r, first_seq, dir))) goto done;
    /* what else lies in the directory: unfinished shards and finished ones the manifest does not list */
    DIR *dp = opendir(dir);
    struct dirent *de;
    while (dp && (de = readdir(dp)) != NULL) {
        unsigned idx;
        char tail[32] = "";
        if (sscanf(de->d_name, "shard-%6u.h5%31s", &idx, tail) < 1) continue;
        if (strcmp(tail, MTR_PARTIAL_SUFFIX) == 0)
            meta->n_partial++;
        else if (tail[0] == '\0') {
            bool listed = false;
            json_array_foreach(shards, i, s) listed |= strcmp(json_string_value(json_object_get(s, "file")),
                                                              de->d_name) == 0;
            if (!listed) meta->n_orphans++;
        }
    }
    if (dp) closedir(dp);
done:
    r->man_model = NULL;
    r->man_dir = NULL;
    json_decref(man);
    return rc;
}

int mtr_run_open_many(mtr_run **out, const char *const *paths, size_t n_paths, unsigned flags)
{
    int rc = 0;
    *out = NULL;
    mtr_clear_error();
    if (!paths || n_paths == 0) return mtr_fail(MTR_EINVAL, "no run given");
    if ((rc = mtr_h5zstd_register())) return rc;
    tune_malloc();
    mtr_run *r = calloc(1, sizeof *r);
    if (!r) return mtr_fail(MTR_ENOMEM, "out of memory");
    for (size_t p = 0; p < n_paths; p++) {
        int d = is_dir(paths[p]);
        if (d < 0) {
            rc = mtr_fail(MTR_ENOTFOUND, "%s: %s", paths[p], strerror(errno));
            goto fail;
        }
        if (add_run_meta(r)) {
            rc = mtr_fail(MTR_ENOMEM, "out of memory");
            goto fail;
        }
        if (d) {
            rc = open_run_dir(r, paths[p], (uint32_t)(r->n_runs - 1), flags);
        } else {
            rc = open_shard(r, paths[p], (uint32_t)(r->n_runs - 1), flags, r->n_shards == 0);
            if (!rc) rc = meta_from_shard(r, r->n_runs - 1, paths[p]);
            r->metas[r->n_runs - 1].manifest_complete = false;
        }
        if (rc) goto fail;
    }
    if ((rc = mtr_decoder_create(&r->serial, r))) goto fail;
    *out = r;
    return 0;
fail:
    mtr_run_close(r);
    return rc;
}

int mtr_run_open(mtr_run **out, const char *path, unsigned flags)
{
    return mtr_run_open_many(out, &path, 1, flags);
}

void mtr_run_close(mtr_run *r)
{
    if (!r) return;
    mtr_decoder_destroy(r->serial);
    for (size_t i = 0; i < r->n_shards; i++) {
        if (r->shards[i].fd >= 0) close(r->shards[i].fd);
        if (r->shards[i].h5 >= 0) H5Fclose(r->shards[i].h5);
        free(r->shards[i].chunks);
        free(r->shards[i].path);
    }
    for (size_t i = 0; i < r->n_strings; i++) free(r->strings[i]);
    for (size_t i = 0; i < 2 * r->n_runs; i++) free(r->meta_strings[i]);
    free(r->meta_strings);
    free(r->strings);
    free(r->shards);
    free(r->seqs);
    free(r->metas);
    free(r->selection_bias);
    free(r);
}

const mtr_model_info *mtr_run_model(const mtr_run *r) { return &r->model; }
const mtr_run_meta *mtr_run_get_meta(const mtr_run *r, size_t i) { return i < r->n_runs ? &r->metas[i] : NULL; }
size_t mtr_run_n_runs(const mtr_run *r) { return r->n_runs; }
size_t mtr_run_n_shards(const mtr_run *r) { return r->n_shards; }
const mtr_shard_info *mtr_run_shard(const mtr_run *r, size_t i) { return i < r->n_shards ? &r->shards[i].info : NULL; }
size_t mtr_run_n_seqs(const mtr_run *r) { return r->n_seqs; }
const mtr_seq_info *mtr_run_seq(const mtr_run *r, size_t i) { return i < r->n_seqs ? &r->seqs[i] : NULL; }
const mtr_chunk_ref *mtr_run_chunks(const mtr_run *r, size_t shard)
{
    return shard < r->n_shards ? r->shards[shard].chunks : NULL;
}

int mtr_run_select(size_t **out, size_t *n_out, const mtr_run *r, const char *lang, const char *dataset,
                   const char *unit_id)
{
    *out = NULL;
    *n_out = 0;
    size_t n = 0;
    size_t *idx = malloc((r->n_seqs ? r->n_seqs : 1) * sizeof *idx);
    if (!idx) return mtr_fail(MTR_ENOMEM, "out of memory");
    for (size_t i = 0; i < r->n_seqs; i++) {
        const mtr_seq_info *s = &r->seqs[i];
        if ((lang && strcmp(lang, s->lang) != 0) || (dataset && strcmp(dataset, s->dataset) != 0) ||
            (unit_id && strcmp(unit_id, s->unit_id) != 0))
            continue;
        idx[n++] = i;
    }
    if (n == 0) {
        free(idx);
        return 0;
    }
    *out = idx;
    *n_out = n;
    return 0;
}

/* ---- token and top-k columns ---- */

static int shard_h5(mtr_run *r, shard_rt *s, hid_t *out)
{
    (void)r;
    if (s->h5 < 0) s->h5 = H5Fopen(s->path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (s->h5 < 0) return mtr_fail(MTR_EIO, "%s: cannot reopen", s->path);
    *out = s->h5;
    return 0;
}

/* Rows row0..row0+nrows of dataset `name`, each of d1 x d2 values (d1 = 0: a 1-D column), into out. The dataset
 * must have exactly that shape: a damaged header declaring wider rows would otherwise have HDF5 write past out. */
static int read_rows(hid_t f, const char *name, hid_t mtype, uint64_t row0, uint64_t nrows, uint32_t d1, uint32_t d2,
                     void *out, const char *path)
{
    int rc = 0;
    hid_t d = open_dataset(f, name, path, &rc);
    if (rc) return rc;
    if (d < 0) return mtr_fail(MTR_ENOTFOUND, "%s: /%s missing", path, name);
    hid_t fs = H5Dget_space(d), ms = H5I_INVALID_HID;
    const int want = d1 ? 3 : 1;
    hsize_t dims[3] = {0, 0, 0}, start[3] = {row0, 0, 0}, count[3] = {nrows, d1, d2};
    if (fs < 0 || H5Sget_simple_extent_ndims(fs) != want || H5Sget_simple_extent_dims(fs, dims, NULL) != want ||
        (d1 && (dims[1] != d1 || dims[2] != d2)) || dims[0] < row0 || dims[0] - row0 < nrows) {
        rc = mtr_fail(MTR_ECORRUPT, "%s: /%s has shape %llux%llux%llu (rank %d), not rows of %ux%u covering %llu..%llu",
                      path, name, (unsigned long long)dims[0], (unsigned long long)dims[1], (unsigned long long)dims[2],
                      fs < 0 ? -1 : H5Sget_simple_extent_ndims(fs), d1, d2, (unsigned long long)row0,
                      (unsigned long long)(row0 + nrows));
        goto done;
    }
    ms = H5Screate_simple(want, count, NULL);
    if (ms < 0 || H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL) < 0 ||
        mtr_h5_dread(d, mtype, ms, fs, out) < 0)
        rc = mtr_fail(MTR_ECORRUPT, "%s: cannot read rows %llu..%llu of /%s", path, (unsigned long long)row0,
                      (unsigned long long)(row0 + nrows), name);
done:
    if (ms >= 0) H5Sclose(ms);
    if (fs >= 0) H5Sclose(fs);
    H5Dclose(d);
    return rc;
}

int mtr_run_read_tokens(mtr_run *r, size_t i, int32_t *token_ids, int32_t *positions, uint8_t *roles)
{
    if (i >= r->n_seqs) return mtr_fail(MTR_EINVAL, "sequence index %zu out of range", i);
    const mtr_seq_info *q = &r->seqs[i];
    shard_rt *s = &r->shards[q->shard];
    hid_t f;
    int rc = shard_h5(r, s, &f);
    if (!rc && token_ids)
        rc = read_rows(f, MTR_D_TOKEN_ID, H5T_NATIVE_INT32, q->token_offset, q->n_tokens, 0, 0, token_ids, s->path);
    if (!rc && positions)
        rc = read_rows(f, MTR_D_POSITION, H5T_NATIVE_INT32, q->token_offset, q->n_tokens, 0, 0, positions, s->path);
    if (!rc && roles) rc = read_rows(f, MTR_D_ROLE, H5T_NATIVE_UINT8, q->token_offset, q->n_tokens, 0, 0, roles, s->path);
    return rc;
}

int mtr_run_read_topk(mtr_run *r, size_t i, uint16_t *ids, float *weights)
{
    if (i >= r->n_seqs) return mtr_fail(MTR_EINVAL, "sequence index %zu out of range", i);
    const mtr_seq_info *q = &r->seqs[i];
    shard_rt *s = &r->shards[q->shard];
    if (!s->info.has_topk) return mtr_fail(MTR_ENOTFOUND, "%s: top-k ids are not stored", s->path);
    hid_t f;
    int rc = shard_h5(r, s, &f);
    if (!rc && ids) rc = read_rows(f, MTR_D_TOPK_IDS, H5T_NATIVE_UINT16, q->token_offset, q->n_tokens, r->model.n_layers,
                                   r->model.top_k, ids, s->path);
    if (!rc && weights)
        rc = read_rows(f, MTR_D_TOPK_WEIGHTS, H5T_NATIVE_FLOAT, q->token_offset, q->n_tokens, r->model.n_layers,
                           r->model.top_k, weights, s->path);
    if (!rc && ids) {
        size_t n = (size_t)q->n_tokens * r->model.n_layers * r->model.top_k;
        for (size_t j = 0; j < n; j++)
            if (ids[j] >= r->model.n_experts)
                return mtr_fail(MTR_EFORMAT, "%s: top-k id %u >= n_experts", s->path, ids[j]);
    }
    return rc;
}

/* ---- raw chunks and decoding ---- */

int mtr_chunk_read(const mtr_run *r, size_t shard, size_t chunk, void *buf)
{
    const shard_rt *s = &r->shards[shard];
    const mtr_chunk_ref *c = &s->chunks[chunk];
    size_t done = 0;
    while (done < c->size) {
        ssize_t n = pread(s->fd, (uint8_t *)buf + done, c->size - done, (off_t)(c->addr + done));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return mtr_fail(MTR_EIO, "%s: read of chunk %zu: %s", s->path, chunk, strerror(errno));
        if (n == 0) return mtr_fail(MTR_ETRUNCATED, "%s: chunk %zu ends past the end of the file", s->path, chunk);
        done += (size_t)n;
    }
    return 0;
}

int mtr_decoder_create(mtr_decoder **out, const mtr_run *r)
{
    mtr_decoder *d = calloc(1, sizeof *d);
    *out = NULL;
    if (!d) return mtr_fail(MTR_ENOMEM, "out of memory");
    d->r = r;
    size_t cb = r->max_chunk_bytes ? r->max_chunk_bytes : 1, rb = r->max_raw_bytes ? r->max_raw_bytes : 1;
    d->dctx = ZSTD_createDCtx();
    d->raw = malloc(rb);
    d->tmp = malloc(cb);
    d->stored = malloc(cb);
    if (!d->dctx || !d->raw || !d->tmp || !d->stored) {
        mtr_decoder_destroy(d);
        return mtr_fail(MTR_ENOMEM, "out of memory for chunk buffers");
    }
    *out = d;
    return 0;
}

void mtr_decoder_destroy(mtr_decoder *d)
{
    if (!d) return;
    ZSTD_freeDCtx(d->dctx);
    free(d->raw);
    free(d->tmp);
    free(d->stored);
    free(d);
}

int mtr_decoder_decode(mtr_decoder *d, size_t shard, size_t chunk, const void *raw, void *out)
{
    const shard_rt *s = &d->r->shards[shard];
    const mtr_chunk_ref *c = &s->chunks[chunk];
    const size_t esz = mtr_dtype_size(s->dtype), bytes = s->chunk_elems * esz;
    bool zstd_on = s->zstd_bit >= 0 && !(c->filter_mask & (1u << s->zstd_bit));
    bool shuf_on = s->shuffle_bit >= 0 && !(c->filter_mask & (1u << s->shuffle_bit));
    const void *src = raw;
    if (zstd_on) {
        void *dst = shuf_on ? d->tmp : out;
        size_t n = ZSTD_decompressDCtx(d->dctx, dst, bytes, raw, c->size);
        if (ZSTD_isError(n) || n != bytes)
            return mtr_fail(MTR_ECORRUPT, "%s: logits chunk %zu (token %u): %s", s->path, chunk, c->tok0,
                            ZSTD_isError(n) ? ZSTD_getErrorName(n) : "wrong decompressed size");
        src = dst;
    } else if (c->size != bytes) {
        return mtr_fail(MTR_ECORRUPT, "%s: uncompressed chunk %zu has %llu bytes, expected %zu", s->path, chunk,
                        (unsigned long long)c->size, bytes);
    }
    if (shuf_on)
        mtr_unshuffle(out, src, s->chunk_elems, esz);
    else if (src != out)
        memcpy(out, src, bytes);
    return 0;
}

int mtr_decoder_load_f32(mtr_decoder *d, size_t shard, size_t chunk, float *out)
{
    const shard_rt *s = &d->r->shards[shard];
    const mtr_chunk_ref *c = &s->chunks[chunk];
    int rc = mtr_chunk_read(d->r, shard, chunk, d->raw);
    if (rc) return rc;
    size_t n = (size_t)c->n_tok * d->r->model.n_layers * d->r->model.n_experts;
    bool zstd_on = s->zstd_bit >= 0 && !(c->filter_mask & (1u << s->zstd_bit));
    bool shuf_on = s->shuffle_bit >= 0 && !(c->filter_mask & (1u << s->shuffle_bit));
    if (zstd_on && shuf_on) {
        /* the common case in one pass after zstd: unshuffle and widen to f32 together, padding rows skipped */
        const size_t bytes = s->chunk_elems * mtr_dtype_size(s->dtype);
        size_t got = ZSTD_decompressDCtx(d->dctx, d->tmp, bytes, d->raw, c->size);
        if (ZSTD_isError(got) || got != bytes)
            return mtr_fail(MTR_ECORRUPT, "%s: logits chunk %zu (token %u): %s", s->path, chunk, c->tok0,
                            ZSTD_isError(got) ? ZSTD_getErrorName(got) : "wrong decompressed size");
        mtr_unpack_shuffled(out, d->tmp, n, s->chunk_elems, s->dtype);
        return 0;
    }
    if ((rc = mtr_decoder_decode(d, shard, chunk, d->raw, d->stored))) return rc;
    mtr_convert(out, MTR_DTYPE_F32, d->stored, s->dtype, n);
    return 0;
}

int mtr_run_read_logits(mtr_run *r, size_t i, float *out)
{
    if (i >= r->n_seqs) return mtr_fail(MTR_EINVAL, "sequence index %zu out of range", i);
    const mtr_seq_info *q = &r->seqs[i];
    const shard_rt *s = &r->shards[q->shard];
    if (!s->info.has_logits) return mtr_fail(MTR_ENOTFOUND, "%s: logits are not stored (top-k only)", s->path);
    const size_t row = (size_t)r->model.n_layers * r->model.n_experts, ct = s->info.chunk_tokens;
    uint64_t t0 = q->token_offset, t1 = q->token_offset + q->n_tokens;
    for (uint64_t c = t0 / ct; c * ct < t1; c++) {
        mtr_decoder *d = r->serial;
        int rc = mtr_chunk_read(r, q->shard, c, d->raw);
        if (!rc) rc = mtr_decoder_decode(d, q->shard, c, d->raw, d->stored);
        if (rc) return rc;
        uint64_t a = c * ct > t0 ? c * ct : t0, b = (c + 1) * ct < t1 ? (c + 1) * ct : t1;
        mtr_convert(out + (a - t0) * row, MTR_DTYPE_F32, d->stored + (a - c * ct) * row * mtr_dtype_size(s->dtype),
                    s->dtype, (b - a) * row);
    }
    return 0;
}

/* ---- block iterator ---- */

typedef struct {
    uint32_t shard, chunk; /* the chunk this piece lies in */
    uint32_t job;          /* index into the iterator's distinct chunk list */
    size_t seq;
    uint32_t tok0, n_tok;  /* within the sequence */
    uint32_t row0;         /* within the chunk */
} piece;

struct mtr_iter {
    mtr_run *r;
    piece *pieces;
    size_t n_pieces, next;
    uint32_t (*jobs)[2]; /* distinct (shard, chunk) in order */
    size_t n_jobs;
    size_t batch_first, batch_n; /* jobs currently decoded */
    uint32_t batch;
    int n_threads;
    float *slots;       /* (batch, chunk rows, n_layers, n_experts) */
    size_t slot_floats;
    mtr_decoder **dec;  /* (n_threads) */
};

int mtr_iter_create(mtr_iter **out, mtr_run *r, const size_t *seqs, size_t n_seqs, const mtr_iter_opts *opts)
{
    mtr_iter_opts dflt = MTR_ITER_OPTS_INIT;
    int rc = 0;
    *out = NULL;
    if (!opts) opts = &dflt;
    if (!seqs) n_seqs = r->n_seqs;
    mtr_iter *it = calloc(1, sizeof *it);
    if (!it) return mtr_fail(MTR_ENOMEM, "out of memory");
    it->r = r;
    it->n_threads = opts->n_threads > 0 ? opts->n_threads : omp_get_max_threads();
    it->batch = opts->batch ? opts->batch : (uint32_t)(4 * it->n_threads);
    size_t cap = 0;
    size_t prev = 0;
    for (size_t k = 0; k < n_seqs; k++) {
        size_t i = seqs ? seqs[k] : k;
        if (i >= r->n_seqs || (k > 0 && i <= prev)) {
            rc = mtr_fail(MTR_EINVAL, "iterator: sequence indices must be valid and ascending");
            goto fail;
        }
        prev = i;
        const mtr_seq_info *q = &r->seqs[i];
        const shard_rt *s = &r->shards[q->shard];
        if (!s->info.has_logits) {
            rc = mtr_fail(MTR_ENOTFOUND, "%s: logits are not stored (top-k only)", s->path);
            goto fail;
        }
        const uint64_t ct = s->info.chunk_tokens, t0 = q->token_offset, t1 = t0 + q->n_tokens;
        for (uint64_t c = t0 / ct; c * ct < t1; c++) {
            if (it->n_pieces == cap) {
                cap = cap ? 2 * cap : 1024;
                piece *np = realloc(it->pieces, cap * sizeof *np);
                if (!np) goto nomem;
                it->pieces = np;
            }
            uint64_t a = c * ct > t0 ? c * ct : t0, b = (c + 1) * ct < t1 ? (c + 1) * ct : t1;
            piece *p = &it->pieces[it->n_pieces++];
            p->shard = q->shard;
            p->chunk = (uint32_t)c;
            p->seq = i;
            p->tok0 = (uint32_t)(a - t0);
            p->n_tok = (uint32_t)(b - a);
            p->row0 = (uint32_t)(a - c * ct);
        }
    }
    /* distinct chunks in order: consecutive pieces share a chunk when sequences share it */
    it->jobs = malloc((it->n_pieces ? it->n_pieces : 1) * sizeof *it->jobs);
    if (!it->jobs) goto nomem;
    for (size_t p = 0; p < it->n_pieces; p++) {
        piece *pc = &it->pieces[p];
        if (!it->n_jobs || it->jobs[it->n_jobs - 1][0] != pc->shard || it->jobs[it->n_jobs - 1][1] != pc->chunk) {
            it->jobs[it->n_jobs][0] = pc->shard;
            it->jobs[it->n_jobs][1] = pc->chunk;
            it->n_jobs++;
        }
        pc->job = (uint32_t)(it->n_jobs - 1);
    }
    size_t max_rows = 0;
    for (size_t s = 0; s < r->n_shards; s++)
        if (r->shards[s].info.chunk_tokens > max_rows) max_rows = r->shards[s].info.chunk_tokens;
    it->slot_floats = max_rows * r->model.n_layers * r->model.n_experts;
    if (it->n_jobs) {
        if (!(it->slots = malloc((size_t)it->batch * it->slot_floats * sizeof(float)))) goto nomem;
        if (!(it->dec = calloc((size_t)it->n_threads, sizeof *it->dec))) goto nomem;
        for (int t = 0; t < it->n_threads; t++)
            if ((rc = mtr_decoder_create(&it->dec[t], r))) goto fail;
    }
    *out = it;
    return 0;
nomem:
    rc = mtr_fail(MTR_ENOMEM, "out of memory for the iterator");
fail:
    mtr_iter_destroy(it);
    return rc;
}

static int decode_batch(mtr_iter *it, size_t first)
{
    size_t n = it->n_jobs - first < it->batch ? it->n_jobs - first : it->batch;
    int err = 0;
    /* errors inside the parallel region only set a flag; the message is recorded by the failing thread, so it is
     * redone serially below to land on the caller's thread */
#pragma omp parallel for num_threads(it->n_threads) schedule(dynamic, 1) reduction(| : err)
    for (size_t j = 0; j < n; j++) {
        mtr_decoder *d = it->dec[omp_get_thread_num()];
        if (mtr_decoder_load_f32(d, it->jobs[first + j][0], it->jobs[first + j][1], it->slots + j * it->slot_floats))
            err = 1;
    }
    if (err) {
        for (size_t j = 0; j < n; j++) {
            int rc = mtr_decoder_load_f32(it->dec[0], it->jobs[first + j][0], it->jobs[first + j][1],
                                          it->slots + j * it->slot_floats);
            if (rc) return rc;
        }
        return mtr_fail(MTR_EIO, "chunk decoding failed in a worker thread");
    }
    it->batch_first = first;
    it->batch_n = n;
    return 0;
}

int mtr_iter_next(mtr_iter *it, mtr_block *out)
{
    if (it->next >= it->n_pieces) return 0;
    const piece *p = &it->pieces[it->next];
    if (p->job < it->batch_first || p->job >= it->batch_first + it->batch_n) {
        int rc = decode_batch(it, p->job);
        if (rc) return rc;
    }
    const size_t row = (size_t)it->r->model.n_layers * it->r->model.n_experts;
    out->seq = p->seq;
    out->tok0 = p->tok0;
    out->n_tokens = p->n_tok;
    out->logits = it->slots + (p->job - it->batch_first) * it->slot_floats + (size_t)p->row0 * row;
    it->next++;
    return 1;
}

void mtr_iter_destroy(mtr_iter *it)
{
    if (!it) return;
    if (it->dec)
        for (int t = 0; t < it->n_threads; t++) mtr_decoder_destroy(it->dec[t]);
    free(it->dec);
    free(it->slots);
    free(it->jobs);
    free(it->pieces);
    free(it);
}
