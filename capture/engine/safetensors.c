/* safetensors.c — read-only, memory-mapped safetensors checkpoints (single file or sharded with an index), every
 * header validated before a byte of tensor data is trusted. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mtr_model.h"
#include "model_internal.h"

/* The reference implementation refuses headers above 100 MB; so do we (a corrupt length must not allocate). */
#define ST_MAX_HEADER ((uint64_t)100 << 20)

static const struct {
    const char *name;
    unsigned size;
} st_dtypes[] = {
#define MTR_X_ROW(name, str, size) {str, size},
    MTR_ST_DTYPE_LIST(MTR_X_ROW)
#undef MTR_X_ROW
};

typedef struct {
    char *path;
    void *map;
    size_t size;
} st_file;

struct mtr_st {
    st_file *files;
    uint32_t n_files;
    mtr_st_tensor *tensors; /* (n) sorted by name */
    size_t n;
    json_t *metadata;       /* __metadata__ of the first file, or NULL */
};

const char *mtr_st_dtype_name(mtr_st_dtype d) { return (unsigned)d < MTR_ST_DTYPE_COUNT ? st_dtypes[d].name : "?"; }

static int cmp_tensor_name(const void *a, const void *b)
{
    return strcmp(((const mtr_st_tensor *)a)->name, ((const mtr_st_tensor *)b)->name);
}

typedef struct {
    uint64_t begin, end;
    const char *name;
} st_span;

static int cmp_span(const void *a, const void *b)
{
    const st_span *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : (x->end > y->end) - (x->end < y->end);
}

static int map_file(st_file *f, const char *path)
{
    f->path = strdup(path);
    if (!f->path) return mtr_fail(MTR_ENOMEM, "%s: out of memory", path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return mtr_fail(errno == ENOENT ? MTR_ENOTFOUND : MTR_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return mtr_fail(MTR_EIO, "%s: not a regular file", path);
    }
    f->size = (size_t)st.st_size;
    if (f->size < 8) {
        close(fd);
        return mtr_fail(MTR_ETRUNCATED, "%s: %zu bytes, too short for a safetensors header", path, f->size);
    }
    f->map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (f->map == MAP_FAILED) {
        f->map = NULL;
        return mtr_fail(MTR_EIO, "%s: cannot map: %s", path, strerror(errno));
    }
    return 0;
}

/* Parse and validate one file's header; append its tensors to st (names duplicated into the json which we keep
 * alive through the tensor's own strdup). */
static int parse_header(mtr_st *st, uint32_t fi, size_t *cap)
{
    st_file *f = &st->files[fi];
    const unsigned char *p = f->map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | p[i];
    if (hlen > ST_MAX_HEADER)
        return mtr_fail(MTR_EFORMAT, "%s: header length %llu is not plausible (corrupt or not safetensors)", f->path,
                        (unsigned long long)hlen);
    if (hlen > f->size - 8)
        return mtr_fail(MTR_ETRUNCATED, "%s: header of %llu bytes runs past the end of the %zu-byte file", f->path,
                        (unsigned long long)hlen, f->size);
    json_error_t jerr;
    json_t *root = json_loadb((const char *)p + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) return mtr_fail(MTR_EFORMAT, "%s: header is not valid JSON: %s", f->path, jerr.text);
    int rc = 0;
    st_span *spans = NULL;
    size_t n_spans = 0;
    if (!json_is_object(root)) {
        rc = mtr_fail(MTR_EFORMAT, "%s: header is not a JSON object", f->path);
        goto done;
    }
    const uint64_t data_size = f->size - 8 - hlen;
    const unsigned char *data = p + 8 + hlen;
    spans = calloc(json_object_size(root) + 1, sizeof *spans);
    if (!spans) {
        rc = mtr_fail(MTR_ENOMEM, "%s: out of memory", f->path);
        goto done;
    }
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) {
            if (!json_is_object(val)) {
                rc = mtr_fail(MTR_EFORMAT, "%s: __metadata__ is not an object", f->path);
                goto done;
            }
            if (fi == 0 && !st->metadata) st->metadata = json_incref(val);
            continue;
        }
        json_t *jd = json_object_get(val, "dtype"), *js = json_object_get(val, "shape"),
               *jo = json_object_get(val, "data_offsets");
        if (!json_is_object(val) || !json_is_string(jd) || !json_is_array(js) || !json_is_array(jo) ||
            json_array_size(jo) != 2) {
            rc = mtr_fail(MTR_EFORMAT, "%s: tensor '%s' lacks dtype, shape or data_offsets [begin, end]", f->path,
                          key);
            goto done;
        }
        mtr_st_tensor t = {0};
        int d = -1;
        for (int k = 0; k < MTR_ST_DTYPE_COUNT; k++)
            if (strcmp(json_string_value(jd), st_dtypes[k].name) == 0) d = k;
        if (d < 0) {
            rc = mtr_fail(MTR_EFORMAT, "%s: tensor '%s' has unsupported dtype '%s'", f->path, key,
                          json_string_value(jd));
            goto done;
        }
        t.dtype = (mtr_st_dtype)d;
        if (json_array_size(js) > MTR_ST_MAX_DIMS) {
            rc = mtr_fail(MTR_EFORMAT, "%s: tensor '%s' has %zu dimensions (at most %d)", f->path, key,
                          json_array_size(js), MTR_ST_MAX_DIMS);
            goto done;
        }
        t.ndim = (uint32_t)json_array_size(js);
        t.n_elems = 1;
        for (uint32_t k = 0; k < t.ndim; k++) {
            json_t *x = json_array_get(js, k);
            if (!json_is_integer(x) || json_integer_value(x) < 0) {
                rc = mtr_fail(MTR_EFORMAT, "%s: tensor '%s' shape[%u] is not a non-negative integer", f->path, key,
                              k);
                goto done;
            }
            t.shape[k] = (uint64_t)json_integer_value(x);
            if (t.shape[k] && t.n_elems > UINT64_MAX / 8 / t.shape[k]) {
                rc = mtr_fail(MTR_EFORMAT, "%s: tensor '%s' shape overflows", f->path, key);
                goto done;
            }
            t.n_elems *= t.shape[k];
        }
        json_t *jb = json_array_get(jo, 0), *je = json_array_get(jo, 1);
        if (!json_is_integer(jb) || !json_is_integer(je) || json_integer_value(jb) < 0 ||
            json_integer_value(je) < json_integer_value(jb)) {
            rc = mtr_fail(MTR_EFORMAT, "%s: tensor '%s' data_offsets are not [begin <= end]", f->path, key);
            goto done;
        }
        uint64_t b = (uint64_t)json_integer_value(jb), e = (uint64_t)json_integer_value(je);
        if (e > data_size) {
            rc = mtr_fail(MTR_ETRUNCATED, "%s: tensor '%s' data [%llu, %llu) runs past the %llu-byte data area",
                          f->path, key, (unsigned long long)b, (unsigned long long)e, (unsigned long long)data_size);
            goto done;
        }
        t.nbytes = e - b;
        if (t.nbytes != t.n_elems * st_dtypes[d].size) {
            rc = mtr_fail(MTR_EFORMAT, "%s: tensor '%s' holds %llu bytes but %s x %llu elements need %llu", f->path,
                          key, (unsigned long long)t.nbytes, st_dtypes[d].name, (unsigned long long)t.n_elems,
                          (unsigned long long)(t.n_elems * st_dtypes[d].size));
            goto done;
        }
        t.data = data + b;
        t.file = fi;
        t.name = strdup(key);
        if (!t.name) {
            rc = mtr_fail(MTR_ENOMEM, "%s: out of memory", f->path);
            goto done;
        }
        if (st->n == *cap) {
            size_t nc = *cap ? *cap * 2 : 256;
            mtr_st_tensor *nt = realloc(st->tensors, nc * sizeof *nt);
            if (!nt) {
                free((char *)t.name);
                rc = mtr_fail(MTR_ENOMEM, "%s: out of memory", f->path);
                goto done;
            }
            st->tensors = nt;
            *cap = nc;
        }
        st->tensors[st->n++] = t;
        if (t.nbytes) spans[n_spans++] = (st_span){b, e, t.name};
    }
    qsort(spans, n_spans, sizeof *spans, cmp_span);
    for (size_t i = 1; i < n_spans; i++)
        if (spans[i].begin < spans[i - 1].end) {
            rc = mtr_fail(MTR_EFORMAT, "%s: tensors '%s' and '%s' overlap", f->path, spans[i - 1].name,
                          spans[i].name);
            goto done;
        }
done:
    free(spans);
    json_decref(root);
    return rc;
}

static int path_is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int file_exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0;
}

/* Shard file names from the index, deduplicated in first-seen order. */
static int read_index(mtr_st *st, const char *dir, const char *index_path, json_t **weight_map_out)
{
    json_error_t jerr;
    json_t *root = json_load_file(index_path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) return mtr_fail(MTR_EFORMAT, "%s: not valid JSON: %s (line %d)", index_path, jerr.text, jerr.line);
    json_t *wm = json_object_get(root, "weight_map");
    if (!json_is_object(wm) || json_object_size(wm) == 0) {
        json_decref(root);
        return mtr_fail(MTR_EFORMAT, "%s: no \"weight_map\" object", index_path);
    }
    size_t n_files = 0, cap = json_object_size(wm);
    char **names = calloc(cap, sizeof *names);
    if (!names) {
        json_decref(root);
        return mtr_fail(MTR_ENOMEM, "%s: out of memory", index_path);
    }
    int rc = 0;
    const char *key;
    json_t *val;
    json_object_foreach(wm, key, val) {
        if (!json_is_string(val) || strchr(json_string_value(val), '/') || json_string_value(val)[0] == '.') {
            rc = mtr_fail(MTR_EFORMAT, "%s: weight_map entry '%s' is not a file name in the directory", index_path,
                          key);
            goto done;
        }
        bool seen = false;
        for (size_t i = 0; i < n_files && !seen; i++) seen = strcmp(names[i], json_string_value(val)) == 0;
        if (!seen) names[n_files++] = (char *)json_string_value(val);
    }
    st->files = calloc(n_files, sizeof *st->files);
    if (!st->files) {
        rc = mtr_fail(MTR_ENOMEM, "%s: out of memory", index_path);
        goto done;
    }
    for (size_t i = 0; i < n_files; i++) {
        char path[PATH_MAX];
        if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, names[i]) >= sizeof path) {
            rc = mtr_fail(MTR_EINVAL, "%s: path too long", dir);
            goto done;
        }
        st->n_files++;
        if ((rc = map_file(&st->files[i], path))) {
            if (rc == MTR_ENOTFOUND)
                mtr_fail(rc, "%s: names shard '%s', which is missing", index_path, names[i]);
            goto done;
        }
    }
    *weight_map_out = json_incref(wm);
done:
    free(names);
    json_decref(root);
    return rc;
}

int mtr_st_open(mtr_st **out, const char *path)
{
    *out = NULL;
    mtr_st *st = calloc(1, sizeof *st);
    if (!st) return mtr_fail(MTR_ENOMEM, "%s: out of memory", path);
    json_t *weight_map = NULL;
    int rc = 0;
    char buf[PATH_MAX];
    if (path_is_dir(path)) {
        snprintf(buf, sizeof buf, "%s/model.safetensors.index.json", path);
        if (file_exists(buf)) {
            if ((rc = read_index(st, path, buf, &weight_map))) goto fail;
        } else {
            snprintf(buf, sizeof buf, "%s/model.safetensors", path);
            if (!file_exists(buf)) {
                rc = mtr_fail(MTR_ENOTFOUND, "%s: no model.safetensors or model.safetensors.index.json", path);
                goto fail;
            }
            if (!(st->files = calloc(1, sizeof *st->files))) {
                rc = mtr_fail(MTR_ENOMEM, "%s: out of memory", path);
                goto fail;
            }
            st->n_files = 1;
            if ((rc = map_file(&st->files[0], buf))) goto fail;
        }
    } else {
        if (!(st->files = calloc(1, sizeof *st->files))) {
            rc = mtr_fail(MTR_ENOMEM, "%s: out of memory", path);
            goto fail;
        }
        st->n_files = 1;
        if ((rc = map_file(&st->files[0], path))) goto fail;
    }
    size_t cap = 0;
    for (uint32_t i = 0; i < st->n_files; i++)
        if ((rc = parse_header(st, i, &cap))) goto fail;
    qsort(st->tensors, st->n, sizeof *st->tensors, cmp_tensor_name);
    for (size_t i = 1; i < st->n; i++)
        if (strcmp(st->tensors[i].name, st->tensors[i - 1].name) == 0) {
            rc = mtr_fail(MTR_EFORMAT, "%s and %s: both hold tensor '%s'", st->files[st->tensors[i - 1].file].path,
                          st->files[st->tensors[i].file].path, st->tensors[i].name);
            goto fail;
        }
    if (weight_map) {
        const char *key;
        json_t *val;
        json_object_foreach(weight_map, key, val) {
            const mtr_st_tensor *t = mtr_st_find(st, key);
            if (!t || strcmp(strrchr(st->files[t->file].path, '/') + 1, json_string_value(val)) != 0) {
                rc = mtr_fail(MTR_EFORMAT, "%s/model.safetensors.index.json: tensor '%s' is not in %s", path, key,
                              json_string_value(val));
                goto fail;
            }
        }
        if (json_object_size(weight_map) != st->n) {
            rc = mtr_fail(MTR_EFORMAT, "%s/model.safetensors.index.json: lists %zu tensors, the shards hold %zu",
                          path, json_object_size(weight_map), st->n);
            goto fail;
        }
        json_decref(weight_map);
    }
    *out = st;
    return 0;
fail:
    json_decref(weight_map);
    mtr_st_close(st);
    return rc;
}

void mtr_st_close(mtr_st *st)
{
    if (!st) return;
    for (size_t i = 0; i < st->n; i++) free((char *)st->tensors[i].name);
    free(st->tensors);
    for (uint32_t i = 0; i < st->n_files; i++) {
        if (st->files[i].map) munmap(st->files[i].map, st->files[i].size);
        free(st->files[i].path);
    }
    free(st->files);
    json_decref(st->metadata);
    free(st);
}

size_t mtr_st_count(const mtr_st *st) { return st->n; }
const mtr_st_tensor *mtr_st_get(const mtr_st *st, size_t i) { return i < st->n ? &st->tensors[i] : NULL; }
const char *mtr_st_file_path(const mtr_st *st, uint32_t file) { return file < st->n_files ? st->files[file].path : "?"; }

const mtr_st_tensor *mtr_st_find(const mtr_st *st, const char *name)
{
    size_t lo = 0, hi = st->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(st->tensors[mid].name, name);
        if (c == 0) return &st->tensors[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

const char *mtr_st_metadata(const mtr_st *st, const char *key)
{
    json_t *v = st->metadata ? json_object_get(st->metadata, key) : NULL;
    return json_is_string(v) ? json_string_value(v) : NULL;
}

void mtr_st_to_f32(float *dst, const mtr_st_tensor *t)
{
    const unsigned char *s = t->data;
    size_t n = (size_t)t->n_elems;
    switch (t->dtype) {
    case MTR_ST_F32: memcpy(dst, s, n * 4); break;
    case MTR_ST_BF16: mtr_convert(dst, MTR_DTYPE_F32, s, MTR_DTYPE_BF16, n); break;
    case MTR_ST_F16: mtr_convert(dst, MTR_DTYPE_F32, s, MTR_DTYPE_F16, n); break;
    default:
        for (size_t i = 0; i < n; i++) {
            double v = 0;
            switch (t->dtype) {
            case MTR_ST_F64: { double x; memcpy(&x, s + 8 * i, 8); v = x; break; }
            case MTR_ST_I64: { int64_t x; memcpy(&x, s + 8 * i, 8); v = (double)x; break; }
            case MTR_ST_I32: { int32_t x; memcpy(&x, s + 4 * i, 4); v = x; break; }
            case MTR_ST_I16: { int16_t x; memcpy(&x, s + 2 * i, 2); v = x; break; }
            case MTR_ST_I8: v = (int8_t)s[i]; break;
            default: v = s[i]; break;
            }
            dst[i] = (float)v;
        }
    }
}
