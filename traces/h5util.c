/* h5util.c — small HDF5 attribute helpers, the run manifest (run.json) and durable file replacement.
 * Strings are stored as variable-length UTF-8 so h5py returns str, and read back from either string form. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

void mtr_h5_quiet(void)
{
    if (!getenv("MTR_HDF5_ERRORS")) H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* set it to see HDF5's own error stack */
}

static hid_t vlen_str_type(void)
{
    hid_t t = H5Tcopy(H5T_C_S1);
    if (t < 0) return t;
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    return t;
}

static int write_attr(hid_t obj, const char *name, hid_t ftype, hid_t mtype, hid_t space, const void *data)
{
    int rc = 0;
    if (H5Aexists(obj, name) > 0) H5Adelete(obj, name);
    hid_t a = H5Acreate2(obj, name, ftype, space, H5P_DEFAULT, H5P_DEFAULT);
    if (a < 0 || H5Awrite(a, mtype, data) < 0) rc = mtr_fail(MTR_EHDF5, "cannot write attribute '%s'", name);
    if (a >= 0) H5Aclose(a);
    return rc;
}

int mtr_h5_set_str(hid_t obj, const char *name, const char *value)
{
    hid_t t = vlen_str_type(), s = H5Screate(H5S_SCALAR);
    int rc = write_attr(obj, name, t, t, s, &value);
    H5Sclose(s);
    H5Tclose(t);
    return rc;
}

int mtr_h5_set_u32(hid_t obj, const char *name, uint32_t v)
{
    hid_t s = H5Screate(H5S_SCALAR);
    int rc = write_attr(obj, name, H5T_STD_U32LE, H5T_NATIVE_UINT32, s, &v);
    H5Sclose(s);
    return rc;
}

int mtr_h5_set_u64(hid_t obj, const char *name, uint64_t v)
{
    hid_t s = H5Screate(H5S_SCALAR);
    int rc = write_attr(obj, name, H5T_STD_U64LE, H5T_NATIVE_UINT64, s, &v);
    H5Sclose(s);
    return rc;
}

int mtr_h5_set_i32v(hid_t obj, const char *name, const int32_t *v, size_t n)
{
    hsize_t dim = n;
    hid_t s = H5Screate_simple(1, &dim, NULL);
    int rc = write_attr(obj, name, H5T_STD_I32LE, H5T_NATIVE_INT32, s, v);
    H5Sclose(s);
    return rc;
}

/* the bytes of one whole chunk of the dataset mtr_h5_dread is reading in this thread, for the zstd filter */
static _Thread_local size_t chunk_expected;
size_t mtr_h5_chunk_expected(void) { return chunk_expected; }

/* The bytes of one whole chunk of a chunked dataset (its chunk dims times its stored element size), 0 if not
 * chunked or too large; *rank and cd[] its chunk dims. */
static size_t chunk_bytes(hid_t d, int *rank, hsize_t *cd, int *nfilters)
{
    size_t bytes = 0;
    hid_t dcpl = H5Dget_create_plist(d), ft = H5Dget_type(d);
    *rank = dcpl >= 0 && H5Pget_layout(dcpl) == H5D_CHUNKED ? H5Pget_chunk(dcpl, H5S_MAX_RANK, cd) : -1;
    *nfilters = dcpl >= 0 ? H5Pget_nfilters(dcpl) : 0;
    /* a variable-length element is stored as a heap reference, not H5Tget_size's bytes: unknown here */
    if (*rank > 0 && ft >= 0 && H5Tget_class(ft) != H5T_VLEN && H5Tis_variable_str(ft) <= 0) {
        bytes = H5Tget_size(ft);
        for (int i = 0; i < *rank && bytes; i++) bytes = cd[i] && bytes <= SIZE_MAX / cd[i] ? bytes * cd[i] : 0;
    }
    if (ft >= 0) H5Tclose(ft);
    if (dcpl >= 0) H5Pclose(dcpl);
    return bytes;
}

/* A compact or contiguous dataset's data must hold exactly the elements of its dataspace: HDF5 1.10 copies that
 * many out of however few a compact one has, and a flipped dimension would size the reader's buffer. Variable-
 * length elements are stored as heap references. */
static int check_whole(hid_t d, const char *name, const char *file)
{
    int rc = 0;
    hid_t sp = H5Dget_space(d), ft = H5Dget_type(d), fid = H5Iget_file_id(d);
    hid_t fcpl = fid >= 0 ? H5Fget_create_plist(fid) : H5I_INVALID_HID;
    size_t sa = 8, sl = 8;
    if (fcpl >= 0) H5Pget_sizes(fcpl, &sa, &sl);
    hssize_t n = sp >= 0 ? H5Sget_simple_extent_npoints(sp) : -1;
    const size_t esz = ft < 0 ? 0 : H5Tget_class(ft) == H5T_VLEN || H5Tis_variable_str(ft) > 0 ? 4 + sa + 4
                                                                                                 : H5Tget_size(ft);
    const hsize_t have = H5Dget_storage_size(d);
    if (n < 0 || esz == 0 || (uint64_t)n > UINT64_MAX / esz || have != (uint64_t)n * esz)
        rc = mtr_fail(MTR_ECORRUPT, "%s: /%s: its data holds %llu bytes, its %lld elements need %llu", file,
                      name, (unsigned long long)have, (long long)n,
                      (unsigned long long)(n >= 0 && esz ? (uint64_t)n * esz : 0));
    if (fcpl >= 0) H5Pclose(fcpl);
    if (fid >= 0) H5Fclose(fid);
    if (ft >= 0) H5Tclose(ft);
    if (sp >= 0) H5Sclose(sp);
    return rc;
}

int mtr_h5_check_storage(hid_t d, const char *name, const char *file)
{
    hsize_t cd[H5S_MAX_RANK], dims[H5S_MAX_RANK], at[H5S_MAX_RANK];
    int rank = 0, nf = 0, rc = 0;
    hid_t dcpl = H5Dget_create_plist(d);
    const H5D_layout_t lay = dcpl >= 0 ? H5Pget_layout(dcpl) : H5D_LAYOUT_ERROR;
    if (dcpl >= 0) H5Pclose(dcpl);
    if (lay == H5D_COMPACT || lay == H5D_CONTIGUOUS) return check_whole(d, name, file);
    const size_t whole = chunk_bytes(d, &rank, cd, &nf);
    /* variable-length strings: their references are checked by mtr_h5_check_vlen_dset */
    if (rank <= 0 || !whole) return 0;
    hid_t sp = H5Dget_space(d);
    uint64_t cells = 1;
    if (sp < 0 || H5Sget_simple_extent_ndims(sp) != rank || H5Sget_simple_extent_dims(sp, dims, NULL) < 0) {
        rc = mtr_fail(MTR_ECORRUPT, "%s: /%s: chunk shape and dataspace disagree", file, name);
        goto done;
    }
    for (int i = 0; i < rank; i++) {
        at[i] = 0;
        uint64_t n = (dims[i] + cd[i] - 1) / cd[i];
        if (n && cells > ((uint64_t)1 << 26) / n) {
            rc = mtr_fail(MTR_EFORMAT, "%s: /%s has more than 2^26 chunks", file, name);
            goto done;
        }
        cells *= n;
    }
    /* every chunk of the grid: absent (read as fill values), or stored through all its filters, or stored whole */
    for (uint64_t c = 0; c < cells && !rc; c++) {
        unsigned mask = 0;
        haddr_t addr = HADDR_UNDEF;
        hsize_t size = 0;
        if (H5Dget_chunk_info_by_coord(d, at, &mask, &addr, &size) < 0) {
            rc = mtr_fail(MTR_ECORRUPT, "%s: /%s: the chunk index is damaged", file, name);
            break;
        }
        const unsigned all = nf >= 32 ? ~0u : (1u << nf) - 1;
        if (addr != HADDR_UNDEF && (nf == 0 || (mask & all) != 0) && ((mask & all) != all || size != whole))
            rc = mtr_fail(MTR_ECORRUPT, "%s: /%s: a chunk is stored with %llu bytes and filter mask %#x, not whole "
                          "(%zu bytes) or through its %d filters", file, name, (unsigned long long)size, mask, whole, nf);
        for (int i = rank - 1; i >= 0; i--) { /* the next chunk of the grid, last dimension fastest */
            if ((at[i] += cd[i]) < dims[i]) break;
            at[i] = 0;
        }
    }
done:
    if (sp >= 0) H5Sclose(sp);
    return rc;
}

hid_t mtr_h5_open_dataset(hid_t loc, const char *name, bool storage, const char *file, int *rc)
{
    *rc = 0;
    if (H5Lexists(loc, name, H5P_DEFAULT) <= 0) {
        *rc = mtr_fail(MTR_EFORMAT, "%s: dataset /%s missing", file, name);
        return H5I_INVALID_HID;
    }
    if ((*rc = mtr_h5_check_object(loc, name, file))) return H5I_INVALID_HID;
    hid_t d = H5Dopen2(loc, name, H5P_DEFAULT);
    if (d < 0) {
        *rc = mtr_fail(MTR_ECORRUPT, "%s: cannot open /%s", file, name);
    } else if (storage && (*rc = mtr_h5_check_storage(d, name, file))) {
        H5Dclose(d);
        d = H5I_INVALID_HID;
    }
    return d;
}

herr_t mtr_h5_dread(hid_t d, hid_t mtype, hid_t mspace, hid_t fspace, void *out)
{
    hsize_t cd[H5S_MAX_RANK];
    int rank = 0, nf = 0;
    chunk_expected = chunk_bytes(d, &rank, cd, &nf);
    herr_t st = H5Dread(d, mtype, mspace, fspace, H5P_DEFAULT, out);
    chunk_expected = 0;
    return st;
}

int mtr_h5_set_f64(hid_t obj, const char *name, double v)
{
    hid_t s = H5Screate(H5S_SCALAR);
    int rc = write_attr(obj, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, s, &v);
    H5Sclose(s);
    return rc;
}

int mtr_h5_get_f64(hid_t obj, const char *name, double *out, const char *file)
{
    int rc = mtr_h5_check_attrs(obj, file);
    if (rc) return rc;
    if (H5Aexists(obj, name) <= 0) return mtr_fail(MTR_EFORMAT, "%s: attribute '%s' missing", file, name);
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    hid_t sp = a >= 0 ? H5Aget_space(a) : H5I_INVALID_HID;
    rc = a < 0 || sp < 0 || H5Sget_simple_extent_npoints(sp) != 1 || H5Aread(a, H5T_NATIVE_DOUBLE, out) < 0
                 ? mtr_fail(MTR_EFORMAT, "%s: attribute '%s' is not one number", file, name)
                 : 0;
    if (sp >= 0) H5Sclose(sp);
    if (a >= 0) H5Aclose(a);
    return rc;
}

bool mtr_h5_has_attr(hid_t obj, const char *name) { return H5Aexists(obj, name) > 0; }

int mtr_h5_get_str_alloc(hid_t obj, const char *name, char **out, const char *file)
{
    int rc = 0;
    hid_t a = H5I_INVALID_HID, ft = H5I_INVALID_HID, mt = H5I_INVALID_HID, sp = H5I_INVALID_HID;
    *out = NULL;
    if ((rc = mtr_h5_check_attrs(obj, file))) return rc;
    if (H5Aexists(obj, name) <= 0) return mtr_fail(MTR_EFORMAT, "%s: attribute '%s' missing", file, name);
    a = H5Aopen(obj, name, H5P_DEFAULT);
    if (a < 0) return mtr_fail(MTR_EFORMAT, "%s: cannot open attribute '%s'", file, name);
    ft = H5Aget_type(a);
    sp = H5Aget_space(a);
    if (ft < 0 || H5Tget_class(ft) != H5T_STRING || H5Sget_simple_extent_npoints(sp) != 1) {
        rc = mtr_fail(MTR_EFORMAT, "%s: attribute '%s' is not a string", file, name);
        goto close_attr;
    }
    if (H5Tis_variable_str(ft) > 0) {
        char *v = NULL;
        if ((rc = mtr_h5_check_vlen_attr(obj, name, file))) goto close_attr;
        mt = vlen_str_type();
        if (H5Aread(a, mt, &v) < 0 || !v) {
            rc = mtr_fail(MTR_EFORMAT, "%s: cannot read attribute '%s'", file, name);
            goto close_attr;
        }
        *out = strdup(v);
        H5free_memory(v);
    } else {
        size_t n = H5Tget_size(ft);
        char *v = calloc(n + 1, 1);
        mt = H5Tcopy(H5T_C_S1);
        H5Tset_size(mt, n);
        if (!v || H5Aread(a, mt, v) < 0) {
            free(v);
            rc = mtr_fail(MTR_EFORMAT, "%s: cannot read attribute '%s'", file, name);
            goto close_attr;
        }
        *out = v;
    }
    if (!*out) rc = mtr_fail(MTR_ENOMEM, "%s: out of memory reading '%s'", file, name);
close_attr:
    if (mt >= 0) H5Tclose(mt);
    if (sp >= 0) H5Sclose(sp);
    if (ft >= 0) H5Tclose(ft);
    H5Aclose(a);
    return rc;
}

int mtr_h5_get_str(hid_t obj, const char *name, char *buf, size_t cap, const char *file)
{
    char *v = NULL;
    int rc = mtr_h5_get_str_alloc(obj, name, &v, file);
    if (rc) return rc;
    snprintf(buf, cap, "%s", v);
    free(v);
    return 0;
}

static int read_numeric(hid_t obj, const char *name, hid_t mtype, void *out, size_t n, const char *file)
{
    int rc = mtr_h5_check_attrs(obj, file);
    if (rc) return rc;
    if (H5Aexists(obj, name) <= 0) return mtr_fail(MTR_EFORMAT, "%s: attribute '%s' missing", file, name);
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    hid_t sp = a >= 0 ? H5Aget_space(a) : H5I_INVALID_HID;
    hid_t ft = a >= 0 ? H5Aget_type(a) : H5I_INVALID_HID;
    if (a < 0 || sp < 0 || ft < 0 || H5Tget_class(ft) != H5T_INTEGER)
        rc = mtr_fail(MTR_EFORMAT, "%s: attribute '%s' is not an integer", file, name);
    else if ((size_t)H5Sget_simple_extent_npoints(sp) != n)
        rc = mtr_fail(MTR_EFORMAT, "%s: attribute '%s' has %lld values, expected %zu", file, name,
                      (long long)H5Sget_simple_extent_npoints(sp), n);
    else if (H5Aread(a, mtype, out) < 0)
        rc = mtr_fail(MTR_EFORMAT, "%s: cannot read attribute '%s'", file, name);
    if (ft >= 0) H5Tclose(ft);
    if (sp >= 0) H5Sclose(sp);
    if (a >= 0) H5Aclose(a);
    return rc;
}

int mtr_h5_get_u64(hid_t obj, const char *name, uint64_t *out, const char *file)
{
    return read_numeric(obj, name, H5T_NATIVE_UINT64, out, 1, file);
}

int mtr_h5_get_i32v(hid_t obj, const char *name, int32_t *out, size_t n, const char *file)
{
    return read_numeric(obj, name, H5T_NATIVE_INT32, out, n, file);
}

/* ---- paths and durability ---- */

int mtr_path_join(char *buf, size_t cap, const char *dir, const char *name)
{
    int n = snprintf(buf, cap, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= cap) return mtr_fail(MTR_EINVAL, "%s: path too long", dir);
    return 0;
}

int mtr_fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return mtr_fail(MTR_EIO, "%s: cannot open directory: %s", dir, strerror(errno));
    int rc = fsync(fd) < 0 && errno != EINVAL ? mtr_fail(MTR_EIO, "%s: fsync: %s", dir, strerror(errno)) : 0;
    close(fd);
    return rc;
}

int mtr_manifest_write(const char *dir, json_t *root, bool sync)
{
    char path[4096], tmp[4160];
    int rc = mtr_path_join(path, sizeof path, dir, MTR_MANIFEST_NAME);
    if (rc) return rc;
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    char *text = json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS);
    if (!text) return mtr_fail(MTR_ENOMEM, "%s: cannot serialise manifest", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = mtr_fail(MTR_EIO, "%s: cannot create: %s", tmp, strerror(errno));
        goto free_text;
    }
    size_t len = strlen(text), off = 0;
    while (off < len) {
        ssize_t w = write(fd, text + off, len - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            rc = mtr_fail(MTR_EIO, "%s: write: %s", tmp, strerror(errno));
            break;
        }
        off += (size_t)w;
    }
    if (!rc && write(fd, "\n", 1) != 1) rc = mtr_fail(MTR_EIO, "%s: write: %s", tmp, strerror(errno));
    if (!rc && sync && fsync(fd) < 0) rc = mtr_fail(MTR_EIO, "%s: fsync: %s", tmp, strerror(errno));
    if (close(fd) < 0 && !rc) rc = mtr_fail(MTR_EIO, "%s: close: %s", tmp, strerror(errno));
    if (!rc && rename(tmp, path) < 0) rc = mtr_fail(MTR_EIO, "%s: rename: %s", path, strerror(errno));
    if (rc) unlink(tmp);
    if (!rc && sync) rc = mtr_fsync_dir(dir);
free_text:
    free(text);
    return rc;
}

int mtr_manifest_load(json_t **out, const char *dir)
{
    char path[4096];
    json_error_t err;
    int rc = mtr_path_join(path, sizeof path, dir, MTR_MANIFEST_NAME);
    if (rc) return rc;
    if (access(path, F_OK) != 0) return mtr_fail(MTR_ENOTFOUND, "%s: no manifest", path);
    *out = json_load_file(path, JSON_REJECT_DUPLICATES, &err);
    if (!*out) return mtr_fail(MTR_EFORMAT, "%s:%d: invalid JSON: %s", path, err.line, err.text);
    if (!json_is_object(*out)) {
        json_decref(*out);
        *out = NULL;
        return mtr_fail(MTR_EFORMAT, "%s: manifest is not a JSON object", path);
    }
    return 0;
}

/* ---- model description ---- */

void mtr_model_info_init(mtr_model_info *m, const char *model_id, const char *model_type, uint32_t n_layers,
                         uint32_t n_experts, uint32_t top_k)
{
    memset(m, 0, sizeof *m);
    snprintf(m->model_id, sizeof m->model_id, "%s", model_id ? model_id : "");
    snprintf(m->model_type, sizeof m->model_type, "%s", model_type ? model_type : "");
    m->n_layers = n_layers;
    m->n_decoder_layers = n_layers;
    m->n_experts = n_experts;
    m->top_k = top_k;
    m->score_fn = MTR_SCORE_SOFTMAX;
    for (uint32_t l = 0; l < n_layers && l < MTR_MAX_LAYERS; l++) m->layer_index[l] = (int32_t)l;
}

int mtr_model_info_check(const mtr_model_info *m)
{
    if (m->n_layers < 1 || m->n_layers > MTR_MAX_LAYERS)
        return mtr_fail(MTR_EINVAL, "n_layers %u outside 1..%d", m->n_layers, MTR_MAX_LAYERS);
    if (m->n_experts < 1 || m->n_experts > MTR_MAX_EXPERTS)
        return mtr_fail(MTR_EINVAL, "n_experts %u outside 1..%d", m->n_experts, MTR_MAX_EXPERTS);
    if (m->top_k < 1 || m->top_k > m->n_experts || m->top_k > MTR_MAX_TOPK)
        return mtr_fail(MTR_EINVAL, "top_k %u outside 1..min(n_experts, %d)", m->top_k, MTR_MAX_TOPK);
    if (m->n_decoder_layers < m->n_layers)
        return mtr_fail(MTR_EINVAL, "n_decoder_layers %u < n_layers %u", m->n_decoder_layers, m->n_layers);
    if ((unsigned)m->score_fn >= MTR_SCORE_FN_COUNT) return mtr_fail(MTR_EINVAL, "unknown score function");
    if (m->score_fn == MTR_SCORE_SPARSEMIXER) {
        if (!(m->sparsemixer_eps >= 0 && m->sparsemixer_eps < 1))
            return mtr_fail(MTR_EINVAL, "sparsemixer_eps %g outside [0, 1)", m->sparsemixer_eps);
        if (m->renormalize || m->selection_bias)
            return mtr_fail(MTR_EINVAL, "sparsemixer weights are neither renormalised nor given a selection bias");
    }
    for (uint32_t l = 0; l < m->n_layers; l++) {
        if (m->layer_index[l] < 0 || (uint32_t)m->layer_index[l] >= m->n_decoder_layers)
            return mtr_fail(MTR_EINVAL, "layer_index[%u] = %d outside 0..%u", l, m->layer_index[l],
                            m->n_decoder_layers - 1);
        if (l > 0 && m->layer_index[l] <= m->layer_index[l - 1])
            return mtr_fail(MTR_EINVAL, "layer_index is not strictly increasing at %u", l);
    }
    return 0;
}

int mtr_write_model_attrs(hid_t f, const mtr_model_info *m)
{
    int rc = 0;
    if ((rc = mtr_h5_set_str(f, MTR_A_MODEL_ID, m->model_id)) || (rc = mtr_h5_set_str(f, MTR_A_MODEL_TYPE, m->model_type)) ||
        (rc = mtr_h5_set_u32(f, MTR_A_N_LAYERS, m->n_layers)) ||
        (rc = mtr_h5_set_u32(f, MTR_A_N_DECODER_LAYERS, m->n_decoder_layers)) ||
        (rc = mtr_h5_set_i32v(f, MTR_A_LAYER_INDEX, m->layer_index, m->n_layers)) ||
        (rc = mtr_h5_set_u32(f, MTR_A_N_EXPERTS, m->n_experts)) || (rc = mtr_h5_set_u32(f, MTR_A_TOP_K, m->top_k)) ||
        (rc = mtr_h5_set_str(f, MTR_A_SCORE_FN, mtr_score_fn_name(m->score_fn))) ||
        (rc = mtr_h5_set_u32(f, MTR_A_RENORMALIZE, m->renormalize)) ||
        (rc = mtr_h5_set_u32(f, MTR_A_ROUTER_BIAS, m->router_bias)) ||
        (rc = mtr_h5_set_u32(f, MTR_A_SELECTION_BIAS, m->selection_bias != NULL)))
        return rc;
    if (m->score_fn == MTR_SCORE_SPARSEMIXER && (rc = mtr_h5_set_f64(f, MTR_A_SPARSEMIXER_EPS, m->sparsemixer_eps)))
        return rc;
    return 0;
}

static int get_u32_attr(hid_t f, const char *name, uint32_t *out, const char *path)
{
    uint64_t v = 0;
    int rc = mtr_h5_get_u64(f, name, &v, path);
    if (rc) return rc;
    if (v > UINT32_MAX) return mtr_fail(MTR_EFORMAT, "%s: attribute '%s' = %llu out of range", path, name,
                                        (unsigned long long)v);
    *out = (uint32_t)v;
    return 0;
}

int mtr_read_model_attrs(hid_t f, mtr_model_info *m, float **selection_bias, const char *path)
{
    char buf[64];
    uint32_t u = 0, has_sel = 0;
    int rc;
    memset(m, 0, sizeof *m);
    *selection_bias = NULL;
    if ((rc = mtr_h5_get_str(f, MTR_A_MODEL_ID, m->model_id, sizeof m->model_id, path)) ||
        (rc = mtr_h5_get_str(f, MTR_A_MODEL_TYPE, m->model_type, sizeof m->model_type, path)) ||
        (rc = get_u32_attr(f, MTR_A_N_LAYERS, &m->n_layers, path)) ||
        (rc = get_u32_attr(f, MTR_A_N_DECODER_LAYERS, &m->n_decoder_layers, path)) ||
        (rc = get_u32_attr(f, MTR_A_N_EXPERTS, &m->n_experts, path)) ||
        (rc = get_u32_attr(f, MTR_A_TOP_K, &m->top_k, path)))
        return rc;
    if (m->n_layers < 1 || m->n_layers > MTR_MAX_LAYERS)
        return mtr_fail(MTR_EFORMAT, "%s: n_layers %u outside 1..%d", path, m->n_layers, MTR_MAX_LAYERS);
    if ((rc = mtr_h5_get_i32v(f, MTR_A_LAYER_INDEX, m->layer_index, m->n_layers, path)) ||
        (rc = mtr_h5_get_str(f, MTR_A_SCORE_FN, buf, sizeof buf, path)))
        return rc;
    if (mtr_score_fn_parse(&m->score_fn, buf)) return mtr_fail(MTR_EFORMAT, "%s: unknown score_fn '%s'", path, buf);
    if ((rc = get_u32_attr(f, MTR_A_RENORMALIZE, &u, path))) return rc;
    m->renormalize = u != 0;
    if ((rc = get_u32_attr(f, MTR_A_ROUTER_BIAS, &u, path))) return rc;
    m->router_bias = u != 0;
    if ((rc = get_u32_attr(f, MTR_A_SELECTION_BIAS, &has_sel, path))) return rc;
    if (m->score_fn == MTR_SCORE_SPARSEMIXER && (rc = mtr_h5_get_f64(f, MTR_A_SPARSEMIXER_EPS, &m->sparsemixer_eps, path)))
        return rc;
    if ((rc = mtr_model_info_check(m))) return mtr_fail(MTR_EFORMAT, "%s: %s", path, mtr_errmsg());
    if (has_sel) {
        size_t n = (size_t)m->n_layers * m->n_experts;
        hid_t d = H5Dopen2(f, MTR_D_SELECTION_BIAS, H5P_DEFAULT);
        hid_t sp = d >= 0 ? H5Dget_space(d) : H5I_INVALID_HID;
        float *b = NULL;
        if (d < 0 || sp < 0 || (size_t)H5Sget_simple_extent_npoints(sp) != n)
            rc = mtr_fail(MTR_EFORMAT, "%s: %s missing or not (n_layers, n_experts)", path, MTR_D_SELECTION_BIAS);
        else if (!(b = malloc(n * sizeof *b)))
            rc = mtr_fail(MTR_ENOMEM, "%s: out of memory", path);
        else if (mtr_h5_dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, b) < 0)
            rc = mtr_fail(MTR_EFORMAT, "%s: cannot read %s", path, MTR_D_SELECTION_BIAS);
        if (sp >= 0) H5Sclose(sp);
        if (d >= 0) H5Dclose(d);
        if (rc) {
            free(b);
            return rc;
        }
        *selection_bias = b;
        m->selection_bias = b;
    }
    return 0;
}

json_t *mtr_model_to_json(const mtr_model_info *m)
{
    json_t *li = json_array();
    for (uint32_t l = 0; l < m->n_layers; l++) json_array_append_new(li, json_integer(m->layer_index[l]));
    json_t *j = json_pack("{s:s, s:s, s:i, s:i, s:o, s:i, s:i, s:{s:s, s:b, s:b, s:b}}", "model_id", m->model_id,
                          "model_type", m->model_type, "n_layers", (json_int_t)m->n_layers, "n_decoder_layers",
                          (json_int_t)m->n_decoder_layers, "layer_index", li, "n_experts", (json_int_t)m->n_experts,
                          "top_k", (json_int_t)m->top_k, "router", "score_fn", mtr_score_fn_name(m->score_fn),
                          "renormalize", m->renormalize, "router_bias", m->router_bias, "selection_bias",
                          m->selection_bias != NULL);
    if (j && m->score_fn == MTR_SCORE_SPARSEMIXER)
        json_object_set_new(json_object_get(j, "router"), MTR_A_SPARSEMIXER_EPS, json_real(m->sparsemixer_eps));
    return j;
}

int mtr_model_compare(const mtr_model_info *a, const mtr_model_info *b, const char *what, const char *ref)
{
    if (a->n_layers != b->n_layers || a->n_experts != b->n_experts || a->top_k != b->top_k)
        return mtr_fail(MTR_EMISMATCH,
                        "%s: model dimensions (%u layers, %u experts, top-%u) differ from (%u, %u, %u) of %s", what,
                        b->n_layers, b->n_experts, b->top_k, a->n_layers, a->n_experts, a->top_k, ref);
    if (strcmp(a->model_id, b->model_id) != 0)
        return mtr_fail(MTR_EMISMATCH, "%s: model '%s' differs from '%s' of %s", what, b->model_id, a->model_id, ref);
    if (a->score_fn != b->score_fn || a->renormalize != b->renormalize ||
        (a->selection_bias == NULL) != (b->selection_bias == NULL) || a->sparsemixer_eps != b->sparsemixer_eps)
        return mtr_fail(MTR_EMISMATCH, "%s: router semantics (score_fn, renormalisation, selection bias, sparsemixer "
                        "eps) differ from those of %s", what, ref);
    for (uint32_t l = 0; l < a->n_layers; l++)
        if (a->layer_index[l] != b->layer_index[l])
            return mtr_fail(MTR_EMISMATCH, "%s: layer_index differs at MoE layer %u from that of %s", what, l, ref);
    return 0;
}

int mtr_model_info_read(mtr_model_info *out, float **selection_bias, const char *path)
{
    mtr_h5_quiet();
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return mtr_fail(MTR_ENOTFOUND, "%s: cannot open as HDF5", path);
    float *bias = NULL;
    int rc = mtr_read_model_attrs(f, out, &bias, path);
    H5Fclose(f);
    if (!rc && (rc = mtr_model_info_check(out))) rc = mtr_fail(MTR_EFORMAT, "%s: %s", path, mtr_errmsg());
    if (rc || !selection_bias) {
        free(bias);
        out->selection_bias = NULL;
    } else
        *selection_bias = bias;
    return rc;
}
