/* writer.c — the trace writer (FORMAT.md "Writers").
 *
 * Logits are copied (as f32) into a ring of chunk slots of (chunk_tokens, n_layers, n_experts). Full slots go to
 * persistent compression threads (one ZSTD_CCtx each) that convert to the stored dtype, byte-shuffle and compress,
 * while the caller goes on appending; the caller alone talks to HDF5, writing finished chunks in order with
 * H5Dwrite_chunk, which bypasses HDF5's own (serial, globally locked) filter pipeline.
 * Chunks span sequence boundaries; /seq and /tok are small and written when the shard is finished. A shard lives
 * as shard-NNNNNN.h5.partial until it is complete, fsynced and renamed; then run.json is replaced atomically.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zstd.h>

#include "internal.h"

/* ---- a set of seq_ids (open addressing; UINT64_MAX marks an empty slot) ---- */

typedef struct {
    uint64_t *keys;
    size_t cap, n;
} idset;

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    return x ^ (x >> 33);
}

static bool idset_has(const idset *s, uint64_t k)
{
    if (!s->cap) return false;
    for (size_t i = mix64(k) & (s->cap - 1);; i = (i + 1) & (s->cap - 1)) {
        if (s->keys[i] == k) return true;
        if (s->keys[i] == UINT64_MAX) return false;
    }
}

static int idset_add(idset *s, uint64_t k)
{
    if ((s->n + 1) * 2 > s->cap) {
        size_t ncap = s->cap ? s->cap * 2 : 1024;
        uint64_t *nk = malloc(ncap * sizeof *nk);
        if (!nk) return MTR_ENOMEM;
        memset(nk, 0xff, ncap * sizeof *nk);
        for (size_t i = 0; i < s->cap; i++) {
            if (s->keys[i] == UINT64_MAX) continue;
            size_t j = mix64(s->keys[i]) & (ncap - 1);
            while (nk[j] != UINT64_MAX) j = (j + 1) & (ncap - 1);
            nk[j] = s->keys[i];
        }
        free(s->keys);
        s->keys = nk;
        s->cap = ncap;
    }
    size_t i = mix64(k) & (s->cap - 1);
    while (s->keys[i] != UINT64_MAX && s->keys[i] != k) i = (i + 1) & (s->cap - 1);
    if (s->keys[i] == UINT64_MAX) {
        s->keys[i] = k;
        s->n++;
    }
    return 0;
}

/* ---- growable arrays for the per-shard /seq and /tok columns ---- */

typedef struct {
    void *p;
    size_t n, cap, elem;
} vec;

static int vec_reserve(vec *v, size_t extra)
{
    if (v->n + extra <= v->cap) return 0;
    size_t ncap = v->cap ? v->cap : 1024;
    while (ncap < v->n + extra) ncap *= 2;
    void *np = realloc(v->p, ncap * v->elem);
    if (!np) return MTR_ENOMEM;
    v->p = np;
    v->cap = ncap;
    return 0;
}

static void vec_free(vec *v)
{
    free(v->p);
    v->p = NULL;
    v->n = v->cap = 0;
}

/* ---- the writer ---- */

enum { SLOT_FREE, SLOT_READY, SLOT_BUSY, SLOT_DONE };

typedef struct {
    float *in;        /* (chunk_tokens, n_layers, n_experts) f32 */
    uint8_t *comp;    /* compressed output, comp_cap bytes */
    size_t comp_size; /* or a zstd error code */
    uint64_t chunk;   /* chunk index within the shard */
    int state;
} wslot;

struct mtr_writer {
    char dir[4096];
    mtr_model_info model;
    float *selection_bias; /* (n_layers, n_experts) owned copy, or NULL */
    mtr_writer_opts opts;
    char *producer, *producer_version, *run_id, *corpus_id, *capture_settings, *steering; /* owned copies */
    json_t *manifest;
    idset done;
    uint32_t next_shard;
    int n_threads;
    bool failed;

    /* shard in progress */
    hid_t file, d_logits;
    int sync_fd;        /* our own descriptor of the shard in progress, for early writeback (-1 if none) */
    uint64_t synced_to; /* stored bytes already handed to writeback */
    uint32_t shard_index;
    char final_path[4160], partial_path[4160 + sizeof MTR_PARTIAL_SUFFIX];
    uint64_t shard_tokens, shard_stored;
    uint64_t shard_seq_min, shard_seq_max;
    vec seq_id, unit_id, lang, dataset, tok_off, seq_ntok, seq_flags; /* per sequence; strings owned */
    vec token_id, position, role, topk_ids, topk_w;                      /* per token */

    /* chunk pipeline: slots cycle FREE -> (filled by the caller) -> READY -> BUSY (a worker) -> DONE -> written */
    size_t row_elems, chunk_elems, chunk_bytes; /* elements per token row / per chunk; stored bytes per chunk */
    wslot *slots;                               /* (n_slots) ring */
    uint32_t n_slots;
    uint32_t fill_slot;                         /* slot the caller fills */
    uint32_t fill;                              /* rows filled in it */
    uint32_t write_slot;                        /* oldest slot not yet written */
    uint32_t in_flight;                         /* slots submitted and not yet written */
    uint64_t next_chunk;                        /* shard chunk index of the slot being filled */
    uint64_t extent_chunks;                     /* chunks covered by the logits dataset's current extent */
    size_t comp_cap;
    pthread_t *workers;                         /* (n_threads) */
    int n_started;
    pthread_mutex_t mu;
    pthread_cond_t work_cv, done_cv;
    bool quit;
    float *route_scratch;                       /* (n_experts) */
    float *row_f32;                             /* (row_elems) for top-k of non-f32 input */

    mtr_writer_stats stats;
};

static char *dup_or(const char *s, const char *dflt) { return strdup(s ? s : dflt); }

static void free_shard_vectors(mtr_writer *w)
{
    for (size_t i = 0; i < w->unit_id.n; i++) {
        free(((char **)w->unit_id.p)[i]);
        free(((char **)w->lang.p)[i]);
        free(((char **)w->dataset.p)[i]);
    }
    vec *all[] = {&w->seq_id, &w->unit_id, &w->lang, &w->dataset, &w->tok_off, &w->seq_ntok, &w->seq_flags,
                  &w->token_id, &w->position, &w->role, &w->topk_ids, &w->topk_w};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) vec_free(all[i]);
}

static void init_shard_vectors(mtr_writer *w)
{
    w->seq_id.elem = 8;
    w->unit_id.elem = w->lang.elem = w->dataset.elem = sizeof(char *);
    w->tok_off.elem = 8;
    w->seq_ntok.elem = w->seq_flags.elem = 4;
    w->token_id.elem = w->position.elem = 4;
    w->role.elem = 1;
    w->topk_ids.elem = 2 * (size_t)w->model.n_layers * w->model.top_k;
    w->topk_w.elem = 4 * (size_t)w->model.n_layers * w->model.top_k;
}

static void iso_now(char *buf, size_t cap)
{
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static int parse_json_text(json_t **out, const char *text, const char *what)
{
    json_error_t err;
    if (!text || strcmp(text, "none") == 0) {
        *out = json_null();
        return 0;
    }
    *out = json_loads(text, JSON_DECODE_ANY, &err);
    if (!*out) return mtr_fail(MTR_EINVAL, "%s is not valid JSON: %s", what, err.text);
    return 0;
}

static int manifest_new(mtr_writer *w)
{
    char created[32];
    json_t *steer = NULL, *settings = NULL;
    int rc;
    iso_now(created, sizeof created);
    if ((rc = parse_json_text(&steer, w->steering, "steering spec"))) return rc;
    if ((rc = parse_json_text(&settings, w->capture_settings, "capture settings"))) {
        json_decref(steer);
        return rc;
    }
    w->manifest = json_pack(
        "{s:s, s:i, s:i, s:s, s:s, s:s, s:s, s:o, s:s, s:s, s:i, s:i, s:s, s:o, s:o, s:[], s:i, s:i, s:b}", "format",
        MTR_FORMAT_NAME, "format_version", MTR_FORMAT_VERSION, "format_minor", MTR_FORMAT_MINOR, "run_id", w->run_id,
        "producer", w->producer, "producer_version", w->producer_version, "created", created, "model",
        mtr_model_to_json(&w->model), "stored_dtype", mtr_dtype_name(w->opts.stored_dtype), "stored",
        mtr_stored_name(w->opts.store_logits ? (w->opts.store_topk ? MTR_STORED_LOGITS_TOPK : MTR_STORED_LOGITS)
                                             : MTR_STORED_TOPK),
        "chunk_tokens", (json_int_t)w->opts.chunk_tokens, "zstd_level", (json_int_t)w->opts.zstd_level,
        "corpus_id", w->corpus_id, "steering", steer, "capture_settings", settings, "shards", "n_sequences",
        (json_int_t)0, "n_tokens", (json_int_t)0, "complete", 0);
    if (!w->manifest) return mtr_fail(MTR_ENOMEM, "%s: cannot build manifest", w->dir);
    return 0;
}

/* Add a finished shard to the manifest and rewrite it. */
static int manifest_add_shard(mtr_writer *w, const char *file, uint64_t n_seq, uint64_t n_tok, uint64_t stored,
                              uint64_t file_bytes, uint64_t seq_min, uint64_t seq_max)
{
    json_t *shards = json_object_get(w->manifest, "shards");
    json_array_append_new(shards, json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:I}", "file", file, "n_sequences",
                                            (json_int_t)n_seq, "n_tokens", (json_int_t)n_tok, "stored_bytes",
                                            (json_int_t)stored, "file_bytes", (json_int_t)file_bytes,
                                            "seq_id_min", (json_int_t)seq_min, "seq_id_max", (json_int_t)seq_max));
    json_int_t ns = json_integer_value(json_object_get(w->manifest, "n_sequences"));
    json_int_t nt = json_integer_value(json_object_get(w->manifest, "n_tokens"));
    json_object_set_new(w->manifest, "n_sequences", json_integer(ns + (json_int_t)n_seq));
    json_object_set_new(w->manifest, "n_tokens", json_integer(nt + (json_int_t)n_tok));
    return mtr_manifest_write(w->dir, w->manifest, w->opts.sync);
}

/* ---- shard lifecycle ---- */

static int open_shard(mtr_writer *w)
{
    char name[64];
    int rc = 0;
    hid_t fapl = H5I_INVALID_HID, dcpl = H5I_INVALID_HID, space = H5I_INVALID_HID, g = H5I_INVALID_HID;
    w->shard_index = w->next_shard++;
    snprintf(name, sizeof name, MTR_SHARD_FMT, w->shard_index);
    if ((rc = mtr_path_join(w->final_path, sizeof w->final_path, w->dir, name))) return rc;
    snprintf(w->partial_path, sizeof w->partial_path, "%s%s", w->final_path, MTR_PARTIAL_SUFFIX);

    fapl = H5Pcreate(H5P_FILE_ACCESS);
    /* larger metadata blocks keep the chunk index compact for shards of thousands of chunks */
    H5Pset_meta_block_size(fapl, 1 << 20);
    w->file = H5Fcreate(w->partial_path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    if (w->file < 0) {
        rc = mtr_fail(MTR_EIO, "%s: cannot create shard", w->partial_path);
        goto close_fapl;
    }
    char created[32];
    iso_now(created, sizeof created);
    if ((rc = mtr_h5_set_str(w->file, MTR_A_FORMAT, MTR_FORMAT_NAME)) ||
        (rc = mtr_h5_set_u32(w->file, MTR_A_FORMAT_VERSION, MTR_FORMAT_VERSION)) ||
        (rc = mtr_h5_set_u32(w->file, MTR_A_FORMAT_MINOR, MTR_FORMAT_MINOR)) ||
        (rc = mtr_h5_set_str(w->file, MTR_A_PRODUCER, w->producer)) ||
        (rc = mtr_h5_set_str(w->file, MTR_A_PRODUCER_VERSION, w->producer_version)) ||
        (rc = mtr_h5_set_str(w->file, MTR_A_RUN_ID, w->run_id)) ||
        (rc = mtr_h5_set_u32(w->file, MTR_A_SHARD_INDEX, w->shard_index)) ||
        (rc = mtr_h5_set_str(w->file, MTR_A_CREATED, created)) || (rc = mtr_write_model_attrs(w->file, &w->model)) ||
        (rc = mtr_h5_set_str(w->file, MTR_A_STORED_DTYPE, mtr_dtype_name(w->opts.stored_dtype))) ||
        (rc = mtr_h5_set_str(w->file, MTR_A_STORED,
                             mtr_stored_name(w->opts.store_logits
                                                 ? (w->opts.store_topk ? MTR_STORED_LOGITS_TOPK : MTR_STORED_LOGITS)
                                                 : MTR_STORED_TOPK))) ||
        (rc = mtr_h5_set_str(w->file, MTR_A_STEERING, w->steering)) ||
        (rc = mtr_h5_set_str(w->file, MTR_A_CORPUS_ID, w->corpus_id)) ||
        (rc = mtr_h5_set_str(w->file, MTR_A_CAPTURE_SETTINGS, w->capture_settings)))
        goto close_fapl;

    const char *groups[] = {MTR_G_SEQ, MTR_G_TOK, MTR_G_ROUTER};
    for (size_t i = 0; i < 3; i++) {
        g = H5Gcreate2(w->file, groups[i], H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        if (g < 0) {
            rc = mtr_fail(MTR_EHDF5, "%s: cannot create group /%s", w->partial_path, groups[i]);
            goto close_fapl;
        }
        H5Gclose(g);
    }
    if (w->selection_bias) {
        hsize_t dims[2] = {w->model.n_layers, w->model.n_experts};
        space = H5Screate_simple(2, dims, NULL);
        hid_t d = H5Dcreate2(w->file, MTR_D_SELECTION_BIAS, H5T_IEEE_F32LE, space, H5P_DEFAULT, H5P_DEFAULT,
                             H5P_DEFAULT);
        if (d < 0 || H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, w->selection_bias) < 0)
            rc = mtr_fail(MTR_EHDF5, "%s: cannot write %s", w->partial_path, MTR_D_SELECTION_BIAS);
        if (d >= 0) H5Dclose(d);
        H5Sclose(space);
        space = H5I_INVALID_HID;
        if (rc) goto close_fapl;
    }
    if (w->opts.store_logits) {
        hsize_t dims[3] = {0, w->model.n_layers, w->model.n_experts};
        hsize_t maxd[3] = {H5S_UNLIMITED, w->model.n_layers, w->model.n_experts};
        hsize_t chunk[3] = {w->opts.chunk_tokens, w->model.n_layers, w->model.n_experts};
        unsigned level = (unsigned)w->opts.zstd_level;
        space = H5Screate_simple(3, dims, maxd);
        dcpl = H5Pcreate(H5P_DATASET_CREATE);
        H5Pset_chunk(dcpl, 3, chunk);
        H5Pset_shuffle(dcpl);
        H5Pset_filter(dcpl, MTR_ZSTD_FILTER_ID, H5Z_FLAG_MANDATORY, 1, &level);
        hid_t ftype = w->opts.stored_dtype == MTR_DTYPE_F32 ? H5T_IEEE_F32LE : H5T_STD_U16LE;
        w->d_logits = H5Dcreate2(w->file, MTR_D_LOGITS, ftype, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
        if (w->d_logits < 0) {
            rc = mtr_fail(MTR_EHDF5, "%s: cannot create %s", w->partial_path, MTR_D_LOGITS);
            goto close_fapl;
        }
        if ((rc = mtr_h5_set_str(w->d_logits, MTR_A_DTYPE, mtr_dtype_name(w->opts.stored_dtype)))) goto close_fapl;
    }
    w->shard_tokens = w->shard_stored = w->synced_to = 0;
    w->sync_fd = w->opts.sync ? open(w->partial_path, O_RDONLY | O_CLOEXEC) : -1;
    w->shard_seq_min = UINT64_MAX;
    w->shard_seq_max = 0;
    w->fill = 0;
    w->next_chunk = w->extent_chunks = 0;
close_fapl:
    if (dcpl >= 0) H5Pclose(dcpl);
    if (space >= 0) H5Sclose(space);
    if (fapl >= 0) H5Pclose(fapl);
    return rc;
}

/* Compression thread: take the READY slot with the lowest chunk index, pack and compress it, mark it DONE. */
static void *worker_main(void *arg)
{
    mtr_writer *w = arg;
    uint8_t *packed = malloc(w->chunk_bytes);
    ZSTD_CCtx *cctx = ZSTD_createCCtx();
    if (cctx) {
        /* a content checksum per chunk, so a damaged chunk is an error and never silently wrong numbers */
        ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, w->opts.zstd_level);
        ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 1);
    }
    pthread_mutex_lock(&w->mu);
    for (;;) {
        wslot *job = NULL;
        for (uint32_t i = 0; i < w->n_slots; i++)
            if (w->slots[i].state == SLOT_READY && (!job || w->slots[i].chunk < job->chunk)) job = &w->slots[i];
        if (!job) {
            if (w->quit) break;
            pthread_cond_wait(&w->work_cv, &w->mu);
            continue;
        }
        job->state = SLOT_BUSY;
        pthread_mutex_unlock(&w->mu);
        size_t c = (size_t)-1; /* a zstd error code if we cannot work */
        if (packed && cctx) {
            mtr_pack_shuffled(packed, job->in, w->chunk_elems, w->opts.stored_dtype);
            c = ZSTD_compress2(cctx, job->comp, w->comp_cap, packed, w->chunk_bytes);
        }
        pthread_mutex_lock(&w->mu);
        job->comp_size = c;
        job->state = SLOT_DONE;
        pthread_cond_broadcast(&w->done_cv);
    }
    pthread_mutex_unlock(&w->mu);
    ZSTD_freeCCtx(cctx);
    free(packed);
    return NULL;
}

/* Write the oldest submitted slots that are compressed, in chunk order. With `wait`, block until at least
 * `want_free` slots are free (all of them: every submitted chunk written). */
static int write_done(mtr_writer *w, uint32_t want_written)
{
    int rc = 0;
    while (w->in_flight > 0) {
        wslot *s = &w->slots[w->write_slot];
        pthread_mutex_lock(&w->mu);
        while (s->state != SLOT_DONE && w->in_flight > want_written) pthread_cond_wait(&w->done_cv, &w->mu);
        bool done = s->state == SLOT_DONE;
        pthread_mutex_unlock(&w->mu);
        if (!done) break; /* not ready and we need not wait */
        if (ZSTD_isError(s->comp_size))
            return mtr_fail(MTR_EIO, "%s: zstd compression of chunk %llu failed", w->partial_path,
                            (unsigned long long)s->chunk);
        if (s->chunk >= w->extent_chunks) {
            /* the extent must cover every chunk written; rows past the real end are trimmed at finish */
            hsize_t dims[3] = {(s->chunk + 1) * w->opts.chunk_tokens, w->model.n_layers, w->model.n_experts};
            if (H5Dset_extent(w->d_logits, dims) < 0)
                return mtr_fail(MTR_EHDF5, "%s: cannot extend %s", w->partial_path, MTR_D_LOGITS);
            w->extent_chunks = s->chunk + 1;
        }
        hsize_t off[3] = {s->chunk * w->opts.chunk_tokens, 0, 0};
        if (H5Dwrite_chunk(w->d_logits, H5P_DEFAULT, 0, off, s->comp_size, s->comp) < 0)
            return mtr_fail(MTR_EIO, "%s: cannot write chunk at token %llu", w->partial_path,
                            (unsigned long long)off[0]);
        w->shard_stored += s->comp_size;
        w->stats.stored_bytes += s->comp_size;
        s->state = SLOT_FREE;
        w->write_slot = (w->write_slot + 1) % w->n_slots;
        w->in_flight--;
    }
    /* start writeback of what is written so far without waiting for it, so the fsync that finishes the shard
     * finds most of it on disk already instead of writing the whole shard at once */
    if (w->opts.sync && w->sync_fd >= 0 && w->shard_stored - w->synced_to >= ((uint64_t)32 << 20)) {
        H5Fflush(w->file, H5F_SCOPE_LOCAL);
        sync_file_range(w->sync_fd, 0, 0, SYNC_FILE_RANGE_WRITE);
        w->synced_to = w->shard_stored;
    }
    return rc;
}

/* Hand the slot being filled to the workers (its unfilled rows zeroed: the padding of a shard's last chunk), then
 * make sure the next slot is free, writing finished chunks as they come. */
static int submit_slot(mtr_writer *w)
{
    wslot *s = &w->slots[w->fill_slot];
    if (w->fill < w->opts.chunk_tokens)
        memset(s->in + (size_t)w->fill * w->row_elems, 0,
               (size_t)(w->opts.chunk_tokens - w->fill) * w->row_elems * sizeof(float));
    pthread_mutex_lock(&w->mu);
    s->chunk = w->next_chunk++;
    s->state = SLOT_READY;
    pthread_cond_signal(&w->work_cv);
    pthread_mutex_unlock(&w->mu);
    w->in_flight++;
    w->fill = 0;
    w->fill_slot = (w->fill_slot + 1) % w->n_slots;
    /* keep I/O flowing: write what is already compressed; block only when the ring is full */
    return write_done(w, w->in_flight == w->n_slots ? w->n_slots - 1 : w->n_slots);
}

/* Submit the partly filled slot, if any, and write every chunk of the shard. */
static int flush_all(mtr_writer *w)
{
    int rc = 0;
    if (!w->opts.store_logits) return 0;
    if (w->fill > 0 && (rc = submit_slot(w))) return rc;
    return write_done(w, 0);
}

/* A compressed dataset of n rows, each row (d1, d2) when those are non-zero. */
static int write_column(mtr_writer *w, const char *path, hid_t ftype, hid_t mtype, const void *data, size_t n,
                        size_t d1, size_t d2)
{
    int rc = 0;
    int rank = d2 ? 3 : d1 ? 2 : 1;
    size_t row = (d1 ? d1 : 1) * (d2 ? d2 : 1), rows = MTR_META_CHUNK / row ? MTR_META_CHUNK / row : 1;
    hsize_t dims[3] = {n, d1, d2}, chunk[3] = {n < rows ? (n ? n : 1) : rows, d1, d2};
    unsigned level = (unsigned)w->opts.zstd_level;
    hid_t space = H5Screate_simple(rank, dims, NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    /* strings are variable-length: HDF5 filters do not apply to them, so they stay contiguous */
    if (n > 0 && H5Tis_variable_str(ftype) <= 0) {
        H5Pset_chunk(dcpl, rank, chunk);
        H5Pset_shuffle(dcpl);
        H5Pset_filter(dcpl, MTR_ZSTD_FILTER_ID, H5Z_FLAG_MANDATORY, 1, &level);
    }
    hid_t d = H5Dcreate2(w->file, path, ftype, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (d < 0 || (n > 0 && H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0))
        rc = mtr_fail(MTR_EHDF5, "%s: cannot write /%s", w->partial_path, path);
    if (d >= 0) H5Dclose(d);
    H5Pclose(dcpl);
    H5Sclose(space);
    return rc;
}

static int write_str_column(mtr_writer *w, const char *path, const vec *v)
{
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    int rc = write_column(w, path, t, t, v->p, v->n, 0, 0);
    H5Tclose(t);
    return rc;
}

static int fsync_path(const char *path)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) return mtr_fail(MTR_EIO, "%s: cannot reopen for fsync: %s", path, strerror(errno));
    int rc = fsync(fd) < 0 ? mtr_fail(MTR_EIO, "%s: fsync: %s", path, strerror(errno)) : 0;
    close(fd);
    return rc;
}

/* Give up the shard in progress after a write failed (disk full, I/O error). HDF5 1.10 cannot survive a failed
 * H5Fclose: it frees the file but keeps its id, and its exit handler closes that id again and crashes. So the
 * close must not fail: HDF5's descriptor is first pointed at an anonymous memory file, where the metadata still
 * cached goes instead of the full disk. The .partial on disk is then incomplete and is removed (resume redoes its
 * sequences anyway), which also gives its space back. */
static void abandon_shard(mtr_writer *w)
{
    if (w->file < 0) return;
    void *handle = NULL;
    hid_t fapl = H5Fget_access_plist(w->file);
    int mem = memfd_create("mtr-abandoned-shard", MFD_CLOEXEC);
    /* the shard is created with the default (POSIX, sec2) driver, whose handle is the descriptor */
    if (mem >= 0 && fapl >= 0 && H5Pget_driver(fapl) == H5FD_SEC2 &&
        H5Fget_vfd_handle(w->file, H5P_DEFAULT, &handle) >= 0 && handle)
        dup2(mem, *(int *)handle);
    if (mem >= 0) close(mem);
    if (fapl >= 0) H5Pclose(fapl);
    if (w->d_logits >= 0) H5Dclose(w->d_logits);
    w->d_logits = H5I_INVALID_HID;
    H5Fclose(w->file);
    w->file = H5I_INVALID_HID;
    unlink(w->partial_path);
}

/* Write the remaining chunks and the /seq, /tok, top-k columns; close, fsync, rename; update the manifest. */
static int finish_shard(mtr_writer *w)
{
    int rc = 0;
    if (w->file < 0) return 0;
    if ((rc = flush_all(w))) goto fail;
    if (w->opts.store_logits) {
        hsize_t dims[3] = {w->shard_tokens, w->model.n_layers, w->model.n_experts};
        if (H5Dset_extent(w->d_logits, dims) < 0) {
            rc = mtr_fail(MTR_EHDF5, "%s: cannot set extent of %s", w->partial_path, MTR_D_LOGITS);
            goto fail;
        }
    }
    size_t ns = w->seq_id.n, nt = w->token_id.n;
    if ((rc = write_column(w, MTR_D_SEQ_ID, H5T_STD_U64LE, H5T_NATIVE_UINT64, w->seq_id.p, ns, 0, 0)) ||
        (rc = write_str_column(w, MTR_D_UNIT_ID, &w->unit_id)) || (rc = write_str_column(w, MTR_D_LANG, &w->lang)) ||
        (rc = write_str_column(w, MTR_D_DATASET, &w->dataset)) ||
        (rc = write_column(w, MTR_D_TOKEN_OFFSET, H5T_STD_U64LE, H5T_NATIVE_UINT64, w->tok_off.p, ns, 0, 0)) ||
        (rc = write_column(w, MTR_D_SEQ_N_TOKENS, H5T_STD_U32LE, H5T_NATIVE_UINT32, w->seq_ntok.p, ns, 0, 0)) ||
        (rc = write_column(w, MTR_D_FLAGS, H5T_STD_U32LE, H5T_NATIVE_UINT32, w->seq_flags.p, ns, 0, 0)) ||
        (rc = write_column(w, MTR_D_TOKEN_ID, H5T_STD_I32LE, H5T_NATIVE_INT32, w->token_id.p, nt, 0, 0)) ||
        (rc = write_column(w, MTR_D_POSITION, H5T_STD_I32LE, H5T_NATIVE_INT32, w->position.p, nt, 0, 0)) ||
        (rc = write_column(w, MTR_D_ROLE, H5T_STD_U8LE, H5T_NATIVE_UINT8, w->role.p, nt, 0, 0)))
        goto fail;
    if (w->opts.store_topk) {
        size_t k = w->model.top_k;
        /* ids fit a byte for up to 256 experts; the file type narrows, memory stays u16 */
        hid_t ft = w->model.n_experts <= 256 ? H5T_STD_U8LE : H5T_STD_U16LE;
        if ((rc = write_column(w, MTR_D_TOPK_IDS, ft, H5T_NATIVE_UINT16, w->topk_ids.p, nt, w->model.n_layers, k)) ||
            (rc = write_column(w, MTR_D_TOPK_WEIGHTS, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, w->topk_w.p, nt,
                               w->model.n_layers, k)))
            goto fail;
    }
    if ((rc = mtr_h5_set_u64(w->file, MTR_A_N_SEQUENCES, ns)) || (rc = mtr_h5_set_u64(w->file, MTR_A_N_TOKENS, nt)))
        goto fail;
    if (w->d_logits >= 0) H5Dclose(w->d_logits);
    w->d_logits = H5I_INVALID_HID;
    /* everything written before the close, so that a full disk fails here, where the shard can still be
     * abandoned safely, and not inside H5Fclose (see abandon_shard) */
    if (H5Fflush(w->file, H5F_SCOPE_LOCAL) < 0) {
        rc = mtr_fail(MTR_EIO, "%s: cannot write the shard's metadata", w->partial_path);
        goto fail;
    }
    if (H5Fclose(w->file) < 0) {
        w->file = H5I_INVALID_HID;
        rc = mtr_fail(MTR_EIO, "%s: cannot close shard", w->partial_path);
        goto fail;
    }
    w->file = H5I_INVALID_HID;
    if (w->sync_fd >= 0) {
        if (fsync(w->sync_fd) < 0) rc = mtr_fail(MTR_EIO, "%s: fsync: %s", w->partial_path, strerror(errno));
        close(w->sync_fd);
        w->sync_fd = -1;
        if (rc) goto fail;
    } else if (w->opts.sync && (rc = fsync_path(w->partial_path))) {
        goto fail;
    }
    if (rename(w->partial_path, w->final_path) < 0) {
        rc = mtr_fail(MTR_EIO, "%s: rename: %s", w->partial_path, strerror(errno));
        goto fail;
    }
    if (w->opts.sync && (rc = mtr_fsync_dir(w->dir))) goto fail;
    struct stat st;
    uint64_t fbytes = stat(w->final_path, &st) == 0 ? (uint64_t)st.st_size : 0;
    const char *base = strrchr(w->final_path, '/') + 1;
    if ((rc = manifest_add_shard(w, base, ns, nt, w->shard_stored, fbytes, ns ? w->shard_seq_min : 0,
                                 w->shard_seq_max)))
        goto fail;
    w->stats.n_shards++;
    free_shard_vectors(w);
    init_shard_vectors(w);
    return 0;
fail:
    w->failed = true;
    return rc;
}

/* ---- resume ---- */

/* The seq_ids of a finished shard into w->done, with what its manifest entry holds: counts, seq_id range and the
 * stored bytes of the logits. */
static int read_shard_ids(mtr_writer *w, const char *path, uint64_t *n_seq, uint64_t *n_tok, uint64_t *seq_min,
                          uint64_t *seq_max, uint64_t *stored)
{
    int rc = 0;
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return mtr_fail(MTR_EFORMAT, "%s: not a readable HDF5 shard", path);
    hid_t d = H5Dopen2(f, MTR_D_SEQ_ID, H5P_DEFAULT);
    hid_t sp = d >= 0 ? H5Dget_space(d) : H5I_INVALID_HID;
    hssize_t n = sp >= 0 ? H5Sget_simple_extent_npoints(sp) : -1;
    uint64_t *ids = n > 0 ? malloc((size_t)n * 8) : NULL;
    if (n < 0 || (n > 0 && !ids)) rc = mtr_fail(MTR_EFORMAT, "%s: /%s missing", path, MTR_D_SEQ_ID);
    else if (n > 0 && H5Dread(d, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, ids) < 0)
        rc = mtr_fail(MTR_EFORMAT, "%s: cannot read /%s", path, MTR_D_SEQ_ID);
    *seq_min = n > 0 ? UINT64_MAX : 0;
    *seq_max = 0;
    for (hssize_t i = 0; !rc && i < n; i++) {
        if (idset_add(&w->done, ids[i])) rc = mtr_fail(MTR_ENOMEM, "out of memory");
        if (ids[i] < *seq_min) *seq_min = ids[i];
        if (ids[i] > *seq_max) *seq_max = ids[i];
    }
    if (!rc) rc = mtr_h5_get_u64(f, MTR_A_N_TOKENS, n_tok, path);
    *stored = 0;
    if (!rc && H5Lexists(f, MTR_D_LOGITS, H5P_DEFAULT) > 0) {
        hid_t z = H5Dopen2(f, MTR_D_LOGITS, H5P_DEFAULT);
        if (z >= 0) {
            *stored = H5Dget_storage_size(z);
            H5Dclose(z);
        }
    }
    *n_seq = n > 0 ? (uint64_t)n : 0;
    free(ids);
    if (sp >= 0) H5Sclose(sp);
    if (d >= 0) H5Dclose(d);
    H5Fclose(f);
    return rc;
}

static bool manifest_lists(json_t *shards, const char *name)
{
    size_t i;
    json_t *s;
    json_array_foreach(shards, i, s) if (strcmp(json_string_value(json_object_get(s, "file")), name) == 0) return true;
    return false;
}

/* a value as a message shows it: compact JSON, long ones cut */
static void json_brief(char *buf, size_t n, const json_t *v)
{
    char *t = v ? json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_SORT_KEYS) : NULL;
    if (!t) {
        snprintf(buf, n, "%s", v ? "?" : "absent");
        return;
    }
    if (strlen(t) >= n && n > 4) snprintf(buf, n, "%.*s...", (int)(n - 4), t);
    else snprintf(buf, n, "%s", t);
    free(t);
}

/* A resumed run continues the same capture: what the run was started with under `key` in run.json (capture
 * settings, steering) must equal what the resuming writer was given, or the run would mix sequences made two ways.
 * The message names the first member that differs. */
static int resume_same(mtr_writer *w, const char *key, const char *text, const char *what)
{
    json_t *now = NULL;
    int rc = parse_json_text(&now, text, what);
    if (rc) return rc;
    const json_t *then = json_object_get(w->manifest, key);
    if (!json_equal(now, then)) {
        const char *name = NULL, *k;
        json_t *v;
        char a[96], b[96];
        if (json_is_object(now) && json_is_object(then)) {
            json_object_foreach(now, k, v) if (!json_equal(v, json_object_get(then, k))) { name = k; break; }
            if (!name) json_object_foreach((json_t *)then, k, v) if (!json_object_get(now, k)) { name = k; break; }
        }
        json_brief(a, sizeof a, name ? json_object_get(then, name) : then);
        json_brief(b, sizeof b, name ? json_object_get(now, name) : now);
        rc = mtr_fail(MTR_EMISMATCH, "%s: resumed with other %s than the run was started with: %s%s%s %s in the run, "
                                     "%s now (resume with the run's, or start a new run)",
                      w->dir, what, name ? "'" : "", name ? name : "", name ? "'" : "", a, b);
    }
    json_decref(now);
    return rc;
}

static int resume_run(mtr_writer *w)
{
    int rc = mtr_manifest_load(&w->manifest, w->dir);
    if (rc) return rc;
    json_t *shards = json_object_get(w->manifest, "shards");
    json_t *model = mtr_model_to_json(&w->model);
    bool same = json_equal(model, json_object_get(w->manifest, "model"));
    json_decref(model);
    if (!same) return mtr_fail(MTR_EMISMATCH, "%s: the run was captured with a different model description", w->dir);
    const char *dt = json_string_value(json_object_get(w->manifest, "stored_dtype"));
    if (!dt || strcmp(dt, mtr_dtype_name(w->opts.stored_dtype)) != 0)
        return mtr_fail(MTR_EMISMATCH, "%s: run stores %s, resume asked for %s", w->dir, dt ? dt : "?",
                        mtr_dtype_name(w->opts.stored_dtype));
    if (!json_is_array(shards)) return mtr_fail(MTR_EFORMAT, "%s: manifest has no shard list", w->dir);
    if ((rc = resume_same(w, "capture_settings", w->capture_settings, "capture settings")) ||
        (rc = resume_same(w, "steering", w->steering, "steering")))
        return rc;
    const char *rid = json_string_value(json_object_get(w->manifest, "run_id"));
    if (rid) {
        free(w->run_id);
        w->run_id = strdup(rid);
    }
    json_object_set_new(w->manifest, "complete", json_false());

    DIR *dp = opendir(w->dir);
    if (!dp) return mtr_fail(MTR_EIO, "%s: cannot list: %s", w->dir, strerror(errno));
    struct dirent *de;
    char path[4160];
    while ((de = readdir(dp)) != NULL) {
        unsigned idx;
        char tail[32] = "";
        if (sscanf(de->d_name, "shard-%6u.h5%31s", &idx, tail) < 1) continue;
        if (idx >= w->next_shard) w->next_shard = idx + 1;
        if ((rc = mtr_path_join(path, sizeof path, w->dir, de->d_name))) break;
        if (strcmp(tail, MTR_PARTIAL_SUFFIX) == 0) {
            unlink(path); /* the shard in progress when the last writer died: its sequences are redone */
            continue;
        }
        if (tail[0] != '\0') continue;
        uint64_t ns = 0, nt = 0, smin = 0, smax = 0, stored = 0;
        if ((rc = read_shard_ids(w, path, &ns, &nt, &smin, &smax, &stored))) break;
        if (!manifest_lists(shards, de->d_name)) {
            /* finished and renamed, but the writer died before the manifest said so: adopt it */
            struct stat st;
            if (stat(path, &st) != 0) st.st_size = 0;
            json_array_append_new(shards, json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:I}", "file", de->d_name,
                                                    "n_sequences", (json_int_t)ns, "n_tokens", (json_int_t)nt,
                                                    "stored_bytes", (json_int_t)stored, "file_bytes",
                                                    (json_int_t)st.st_size, "seq_id_min", (json_int_t)smin,
                                                    "seq_id_max", (json_int_t)smax));
            json_int_t a = json_integer_value(json_object_get(w->manifest, "n_sequences"));
            json_int_t b = json_integer_value(json_object_get(w->manifest, "n_tokens"));
            json_object_set_new(w->manifest, "n_sequences", json_integer(a + (json_int_t)ns));
            json_object_set_new(w->manifest, "n_tokens", json_integer(b + (json_int_t)nt));
        }
    }
    closedir(dp);
    if (rc) return rc;
    /* shards the manifest lists must exist: a missing one means the run directory was damaged */
    size_t i;
    json_t *s;
    json_array_foreach(shards, i, s)
    {
        const char *f = json_string_value(json_object_get(s, "file"));
        if (!f || mtr_path_join(path, sizeof path, w->dir, f) || access(path, F_OK) != 0)
            return mtr_fail(MTR_ENOTFOUND, "%s: manifest lists shard '%s' which is missing", w->dir, f ? f : "?");
    }
    return mtr_manifest_write(w->dir, w->manifest, w->opts.sync);
}

/* ---- public API ---- */

static int make_run_id(char *buf, size_t cap)
{
    uint8_t r[8] = {0};
    if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) {
        uint64_t x = mix64((uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32));
        memcpy(r, &x, 8);
    }
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    char ts[32];
    strftime(ts, sizeof ts, "%Y%m%dT%H%M%SZ", &tm);
    snprintf(buf, cap, "%s-%02x%02x%02x%02x%02x%02x", ts, r[0], r[1], r[2], r[3], r[4], r[5]);
    return 0;
}

int mtr_writer_create(mtr_writer **out, const char *dir, const mtr_model_info *model, const mtr_writer_opts *opts)
{
    mtr_writer_opts dflt = MTR_WRITER_OPTS_INIT;
    int rc = 0;
    *out = NULL;
    mtr_clear_error();
    if (!opts) opts = &dflt;
    if (!dir || !model) return mtr_fail(MTR_EINVAL, "writer: directory and model are required");
    if ((rc = mtr_model_info_check(model))) return rc;
    if ((unsigned)opts->stored_dtype >= MTR_DTYPE_COUNT) return mtr_fail(MTR_EINVAL, "unknown stored dtype");
    if (opts->chunk_tokens < 1 || opts->chunk_tokens > MTR_CHUNK_TOKENS_MAX)
        return mtr_fail(MTR_EINVAL, "chunk_tokens %u outside 1..%d", opts->chunk_tokens, MTR_CHUNK_TOKENS_MAX);
    if (!opts->store_logits && !opts->store_topk) return mtr_fail(MTR_EINVAL, "nothing to store (logits or top-k)");
    if (opts->zstd_level < 1 || opts->zstd_level > ZSTD_maxCLevel())
        return mtr_fail(MTR_EINVAL, "zstd level %d outside 1..%d", opts->zstd_level, ZSTD_maxCLevel());
    if (strlen(dir) >= 4000) return mtr_fail(MTR_EINVAL, "%s: path too long", dir);
    if ((rc = mtr_h5zstd_register())) return rc;

    mtr_writer *w = calloc(1, sizeof *w);
    if (!w) return mtr_fail(MTR_ENOMEM, "out of memory");
    w->file = w->d_logits = H5I_INVALID_HID;
    w->sync_fd = -1;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->work_cv, NULL);
    pthread_cond_init(&w->done_cv, NULL);
    snprintf(w->dir, sizeof w->dir, "%s", dir);
    w->model = *model;
    w->opts = *opts;
    if (model->selection_bias) {
        size_t n = (size_t)model->n_layers * model->n_experts;
        if (!(w->selection_bias = malloc(n * sizeof(float)))) goto nomem;
        memcpy(w->selection_bias, model->selection_bias, n * sizeof(float));
    }
    w->model.selection_bias = w->selection_bias;
    char rid[96];
    make_run_id(rid, sizeof rid);
    w->producer = dup_or(opts->producer, "libmoetrace");
    w->producer_version = dup_or(opts->producer_version, MTR_VERSION_STRING);
    w->run_id = dup_or(opts->run_id, rid);
    w->corpus_id = dup_or(opts->corpus_id, "");
    w->capture_settings = dup_or(opts->capture_settings, "{}");
    w->steering = dup_or(opts->steering, "none");
    if (!w->producer || !w->producer_version || !w->run_id || !w->corpus_id || !w->capture_settings || !w->steering)
        goto nomem;
    init_shard_vectors(w);

    w->n_threads = opts->n_threads > 0 ? opts->n_threads : omp_get_max_threads();
    if (w->n_threads < 1 || w->n_threads > 256) w->n_threads = w->n_threads < 1 ? 1 : 256;
    w->row_elems = (size_t)model->n_layers * model->n_experts;
    w->chunk_elems = w->row_elems * opts->chunk_tokens;
    w->chunk_bytes = w->chunk_elems * mtr_dtype_size(opts->stored_dtype);
    w->comp_cap = ZSTD_compressBound(w->chunk_bytes);
    if (!(w->route_scratch = malloc(model->n_experts * sizeof(float)))) goto nomem;
    if (!(w->row_f32 = malloc(w->row_elems * sizeof(float)))) goto nomem;
    if (opts->store_logits) {
        /* two slots per worker keep every worker busy while the caller fills and writes */
        w->n_slots = (uint32_t)(2 * w->n_threads + 2);
        if (!(w->slots = calloc(w->n_slots, sizeof *w->slots))) goto nomem;
        for (uint32_t i = 0; i < w->n_slots; i++)
            if (!(w->slots[i].in = malloc(w->chunk_elems * sizeof(float))) || !(w->slots[i].comp = malloc(w->comp_cap)))
                goto nomem;
        if (!(w->workers = calloc((unsigned)w->n_threads, sizeof *w->workers))) goto nomem;
        for (int t = 0; t < w->n_threads; t++) {
            if (pthread_create(&w->workers[t], NULL, worker_main, w) != 0) {
                rc = mtr_fail(MTR_ENOMEM, "%s: cannot start compression thread", dir);
                goto fail;
            }
            w->n_started++;
        }
    }

    if (mkdir(dir, 0777) < 0 && errno != EEXIST) {
        rc = mtr_fail(MTR_EIO, "%s: cannot create directory: %s", dir, strerror(errno));
        goto fail;
    }
    char mpath[4160];
    mtr_path_join(mpath, sizeof mpath, dir, MTR_MANIFEST_NAME);
    if (access(mpath, F_OK) == 0) {
        if (!opts->resume) {
            rc = mtr_fail(MTR_EEXIST, "%s: a run already exists here (continue it with --resume, or choose another directory)", dir);
            goto fail;
        }
        if ((rc = resume_run(w))) goto fail;
    } else {
        if ((rc = manifest_new(w))) goto fail;
        if ((rc = mtr_manifest_write(dir, w->manifest, opts->sync))) goto fail;
    }
    *out = w;
    return 0;
nomem:
    rc = mtr_fail(MTR_ENOMEM, "%s: out of memory setting up the writer", dir);
fail:
    mtr_writer_destroy(w);
    return rc;
}

bool mtr_writer_has_seq(const mtr_writer *w, uint64_t seq_id) { return idset_has(&w->done, seq_id); }

static int push_str(vec *v, const char *s)
{
    char *d = strdup(s ? s : "");
    if (!d || vec_reserve(v, 1)) {
        free(d);
        return MTR_ENOMEM;
    }
    ((char **)v->p)[v->n++] = d;
    return 0;
}

#define PUSH(v, type, val) (vec_reserve(&(v), 1) ? MTR_ENOMEM : (((type *)(v).p)[(v).n++] = (val), 0))

int mtr_writer_append(mtr_writer *w, const mtr_seq_meta *meta, const int32_t *token_ids, const int32_t *positions,
                      const uint8_t *roles, const void *logits, mtr_dtype logits_dtype)
{
    int rc = 0;
    mtr_clear_error();
    if (!w || !meta) return mtr_fail(MTR_EINVAL, "append: writer and metadata are required");
    if (w->failed) return mtr_fail(MTR_EIO, "%s: writer unusable after an earlier error", w->dir);
    if (meta->n_tokens < 1) return mtr_fail(MTR_EINVAL, "%s: seq %llu has no tokens", w->dir,
                                            (unsigned long long)meta->seq_id);
    if (meta->seq_id == UINT64_MAX) return mtr_fail(MTR_EINVAL, "%s: seq_id 2^64-1 is reserved", w->dir);
    if ((unsigned)logits_dtype >= MTR_DTYPE_COUNT) return mtr_fail(MTR_EINVAL, "append: unknown logits dtype");
    if (!logits) return mtr_fail(MTR_EINVAL, "%s: seq %llu: logits are required", w->dir,
                                 (unsigned long long)meta->seq_id);
    if (idset_has(&w->done, meta->seq_id))
        return mtr_fail(MTR_EDUP, "%s: seq_id %llu is already in the run", w->dir, (unsigned long long)meta->seq_id);
    for (uint32_t t = 0; roles && t < meta->n_tokens; t++)
        if (roles[t] >= MTR_ROLE_COUNT)
            return mtr_fail(MTR_EINVAL, "%s: seq %llu token %u: role %u unknown", w->dir,
                            (unsigned long long)meta->seq_id, t, roles[t]);
    if (w->file < 0 && (rc = open_shard(w))) goto fail;

    const size_t T = meta->n_tokens, in_esz = mtr_dtype_size(logits_dtype);
    const size_t st_esz = mtr_dtype_size(w->opts.stored_dtype);
    const uint32_t L = w->model.n_layers, E = w->model.n_experts, K = w->model.top_k;
    uint32_t flags = meta->flags;
    uint64_t offset = w->shard_tokens;

    if (vec_reserve(&w->token_id, T) || vec_reserve(&w->position, T) || vec_reserve(&w->role, T) ||
        (w->opts.store_topk && (vec_reserve(&w->topk_ids, T) || vec_reserve(&w->topk_w, T))))
        goto nomem;
    for (size_t t = 0; t < T; t++) {
        ((int32_t *)w->token_id.p)[w->token_id.n + t] = token_ids ? token_ids[t] : -1;
        ((int32_t *)w->position.p)[w->position.n + t] = positions ? positions[t] : (int32_t)t;
        ((uint8_t *)w->role.p)[w->role.n + t] = roles ? roles[t] : (uint8_t)MTR_ROLE_PROMPT;
    }

    /* logits: copy (as f32) into the stage, flushing whenever the stage fills. Checking the input for NaN/Inf is
     * the same as checking the stored values: rounding to bf16/f16 can only add infinities by overflow, which
     * the f16 check below catches for f16. */
    const uint8_t *src = logits;
    if (!(flags & MTR_SEQ_NONFINITE) && mtr_any_nonfinite(logits, logits_dtype, T * w->row_elems))
        flags |= MTR_SEQ_NONFINITE;
    size_t t = 0;
    while (t < T && w->opts.store_logits) {
        size_t room = w->opts.chunk_tokens - w->fill, take = T - t < room ? T - t : room;
        float *dst = w->slots[w->fill_slot].in + (size_t)w->fill * w->row_elems;
        mtr_convert(dst, MTR_DTYPE_F32, src + t * w->row_elems * in_esz, logits_dtype, take * w->row_elems);
        if (w->opts.stored_dtype == MTR_DTYPE_F16 && !(flags & MTR_SEQ_NONFINITE))
            for (size_t i = 0; i < take * w->row_elems; i++)
                if (fabsf(dst[i]) >= 65520.0f) flags |= MTR_SEQ_NONFINITE; /* overflows f16 to infinity */
        w->fill += (uint32_t)take;
        t += take;
        if (w->fill == w->opts.chunk_tokens && (rc = submit_slot(w))) goto fail;
    }
    if (w->opts.store_topk) {
        for (size_t tt = 0; tt < T; tt++) {
            const float *row;
            if (logits_dtype == MTR_DTYPE_F32) {
                row = (const float *)(src + tt * w->row_elems * in_esz);
            } else {
                mtr_convert(w->row_f32, MTR_DTYPE_F32, src + tt * w->row_elems * in_esz, logits_dtype, w->row_elems);
                row = w->row_f32;
            }
            uint16_t *ids = (uint16_t *)w->topk_ids.p + (w->topk_ids.n + tt) * (size_t)L * K;
            float *wt = (float *)w->topk_w.p + (w->topk_w.n + tt) * (size_t)L * K;
            for (uint32_t l = 0; l < L; l++)
                mtr_route(&w->model, l, row + (size_t)l * E, ids + (size_t)l * K, wt + (size_t)l * K, w->route_scratch);
        }
        w->topk_ids.n += T;
        w->topk_w.n += T;
    }
    w->token_id.n += T;
    w->position.n += T;
    w->role.n += T;
    w->shard_tokens += T;

    if (PUSH(w->seq_id, uint64_t, meta->seq_id) || push_str(&w->unit_id, meta->unit_id) ||
        push_str(&w->lang, meta->lang) || push_str(&w->dataset, meta->dataset) ||
        PUSH(w->tok_off, uint64_t, offset) || PUSH(w->seq_ntok, uint32_t, meta->n_tokens) ||
        PUSH(w->seq_flags, uint32_t, flags) || idset_add(&w->done, meta->seq_id))
        goto nomem;
    if (meta->seq_id < w->shard_seq_min) w->shard_seq_min = meta->seq_id;
    if (meta->seq_id > w->shard_seq_max) w->shard_seq_max = meta->seq_id;
    w->stats.n_sequences++;
    w->stats.n_tokens += T;
    w->stats.raw_bytes += T * w->row_elems * 4;

    /* rotate: stored bytes so far plus the chunks not yet written, uncompressed, as an upper bound */
    uint64_t pending = (uint64_t)(w->in_flight * w->opts.chunk_tokens + w->fill) * w->row_elems * st_esz +
                       (uint64_t)w->topk_ids.n * L * K * 6;
    if (w->shard_stored + pending >= w->opts.shard_bytes) rc = finish_shard(w);
    return rc;
nomem:
    rc = mtr_fail(MTR_ENOMEM, "%s: out of memory appending seq %llu", w->dir, (unsigned long long)meta->seq_id);
fail:
    w->failed = true;
    return rc;
}

int mtr_writer_flush(mtr_writer *w)
{
    if (!w) return MTR_EINVAL;
    if (w->failed) return mtr_fail(MTR_EIO, "%s: writer unusable after an earlier error", w->dir);
    return finish_shard(w);
}

void mtr_writer_get_stats(const mtr_writer *w, mtr_writer_stats *out) { *out = w->stats; }

int mtr_writer_close(mtr_writer *w)
{
    if (!w) return 0;
    int rc = w->failed ? mtr_fail(MTR_EIO, "%s: writer failed earlier; the run is incomplete", w->dir)
                       : finish_shard(w);
    if (!rc) {
        json_object_set_new(w->manifest, "complete", json_true());
        rc = mtr_manifest_write(w->dir, w->manifest, w->opts.sync);
    }
    mtr_writer_destroy(w);
    return rc;
}

void mtr_writer_destroy(mtr_writer *w)
{
    if (!w) return;
    if (w->failed) {
        abandon_shard(w);
    } else {
        /* left as *.partial: readers ignore it, resume removes it; it is closed only once its metadata is
         * written, else abandoned (a failed H5Fclose crashes HDF5 1.10 at exit) */
        if (w->d_logits >= 0) H5Dclose(w->d_logits);
        w->d_logits = H5I_INVALID_HID;
        if (w->file >= 0 && H5Fflush(w->file, H5F_SCOPE_LOCAL) < 0) abandon_shard(w);
        if (w->file >= 0) H5Fclose(w->file);
    }
    if (w->sync_fd >= 0) close(w->sync_fd);
    free_shard_vectors(w);
    pthread_mutex_lock(&w->mu);
    w->quit = true;
    pthread_cond_broadcast(&w->work_cv);
    pthread_mutex_unlock(&w->mu);
    for (int t = 0; t < w->n_started; t++) pthread_join(w->workers[t], NULL);
    free(w->workers);
    if (w->slots)
        for (uint32_t i = 0; i < w->n_slots; i++) {
            free(w->slots[i].in);
            free(w->slots[i].comp);
        }
    free(w->slots);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->work_cv);
    pthread_cond_destroy(&w->done_cv);
    free(w->route_scratch);
    free(w->row_f32);
    free(w->done.keys);
    free(w->selection_bias);
    free(w->producer);
    free(w->producer_version);
    free(w->run_id);
    free(w->corpus_id);
    free(w->capture_settings);
    free(w->steering);
    json_decref(w->manifest);
    free(w);
}
