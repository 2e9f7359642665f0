/* fuzz_steer.c — libFuzzer target for steering files (traces/steer.c, traces/STEERING.md), HDF5 or JSON twin. The
 * first byte chooses how the input becomes a file:
 *   even: the bytes are the file (a JSON twin; raw HDF5 bytes only with MTR_FUZZ_RAW_HDF5=1, since then nearly
 *         every finding is a fault inside libhdf5's own parser, which this code cannot fix);
 *   odd:  the bytes are a JSON object turned into an HDF5 file through the HDF5 API — each key an attribute or,
 *         for target_layers / experts / scores / coef, a dataset, typed by its JSON value (string: variable- or
 *         fixed-length by its length's parity; integer: u32, i64 or u64 by range; real: f64; array: 1-D, array
 *         of arrays: 2-D, integer or f64 elements; object: a group, "provenance" its JSON text). So mutations
 *         reach the loader's checks of types, shapes and values in a well-formed HDF5 file.
 * A file must load as a validated description — then applying it to router logits of every layer, checking it
 * against a model and exporting it must stay inside its arrays — or fail with a pinned error; never a crash. */
#include <hdf5.h>
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "mtr_steer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int is_dataset(const char *key)
{
    return !strcmp(key, "target_layers") || !strcmp(key, "experts") || !strcmp(key, "scores") || !strcmp(key, "coef");
}

/* numbers of a JSON array (rank 1) or array of arrays (rank 2, ragged rows padded with 0) into a new buffer of
 * doubles; *all_int tells whether every element is an integer. NULL if not numeric or too large. */
static double *numbers(json_t *v, int *rank, hsize_t *dims, int *all_int)
{
    size_t rows = json_array_size(v), cols = 0;
    *rank = 1;
    *all_int = 1;
    if (rows && json_is_array(json_array_get(v, 0))) {
        *rank = 2;
        for (size_t i = 0; i < rows; i++)
            if (json_array_size(json_array_get(v, i)) > cols) cols = json_array_size(json_array_get(v, i));
    }
    size_t n = *rank == 2 ? rows * cols : rows;
    if (n > (1u << 20)) return NULL;
    double *buf = calloc(n ? n : 1, sizeof *buf);
    if (!buf) return NULL;
    for (size_t i = 0; i < rows; i++) {
        json_t *row = json_array_get(v, i);
        size_t m = *rank == 2 ? json_array_size(row) : 1;
        for (size_t j = 0; j < m; j++) {
            json_t *x = *rank == 2 ? json_array_get(row, j) : row;
            if (!json_is_number(x)) {
                free(buf);
                return NULL;
            }
            *all_int &= json_is_integer(x);
            buf[*rank == 2 ? i * cols + j : i] = json_number_value(x);
        }
    }
    dims[0] = rows;
    dims[1] = cols;
    return buf;
}

static void put(hid_t f, const char *key, json_t *v)
{
    hid_t sp = H5I_INVALID_HID, t = H5I_INVALID_HID, o = H5I_INVALID_HID;
    if (json_is_string(v) || (json_is_object(v) && !strcmp(key, "provenance"))) {
        char *dumped = json_is_object(v) ? json_dumps(v, JSON_COMPACT) : NULL;
        const char *s = dumped ? dumped : json_string_value(v);
        size_t n = strlen(s);
        sp = H5Screate(H5S_SCALAR);
        t = H5Tcopy(H5T_C_S1);
        H5Tset_cset(t, H5T_CSET_UTF8);
        if (n % 2) { /* fixed-length */
            H5Tset_size(t, n);
            o = H5Acreate2(f, key, t, sp, H5P_DEFAULT, H5P_DEFAULT);
            if (o >= 0) H5Awrite(o, t, s);
        } else {
            H5Tset_size(t, H5T_VARIABLE);
            o = H5Acreate2(f, key, t, sp, H5P_DEFAULT, H5P_DEFAULT);
            if (o >= 0) H5Awrite(o, t, &s);
        }
        if (o >= 0) H5Aclose(o);
        free(dumped);
    } else if (json_is_integer(v) || json_is_real(v) || json_is_boolean(v)) {
        json_int_t i = json_is_integer(v) ? json_integer_value(v) : json_is_true(v);
        sp = H5Screate(H5S_SCALAR);
        if (json_is_real(v)) {
            double d = json_real_value(v);
            o = H5Acreate2(f, key, H5T_IEEE_F64LE, sp, H5P_DEFAULT, H5P_DEFAULT);
            if (o >= 0) H5Awrite(o, H5T_NATIVE_DOUBLE, &d);
        } else if (json_is_boolean(v)) {
            uint8_t b = (uint8_t)i;
            o = H5Acreate2(f, key, H5T_STD_U8LE, sp, H5P_DEFAULT, H5P_DEFAULT);
            if (o >= 0) H5Awrite(o, H5T_NATIVE_UINT8, &b);
        } else if (i >= 0 && i <= 0xffffffffLL) {
            uint32_t u = (uint32_t)i;
            o = H5Acreate2(f, key, H5T_STD_U32LE, sp, H5P_DEFAULT, H5P_DEFAULT);
            if (o >= 0) H5Awrite(o, H5T_NATIVE_UINT32, &u);
        } else if (i < 0) {
            int64_t s64 = i;
            o = H5Acreate2(f, key, H5T_STD_I64LE, sp, H5P_DEFAULT, H5P_DEFAULT);
            if (o >= 0) H5Awrite(o, H5T_NATIVE_INT64, &s64);
        } else {
            uint64_t u = (uint64_t)i;
            o = H5Acreate2(f, key, H5T_STD_U64LE, sp, H5P_DEFAULT, H5P_DEFAULT);
            if (o >= 0) H5Awrite(o, H5T_NATIVE_UINT64, &u);
        }
        if (o >= 0) H5Aclose(o);
    } else if (json_is_array(v)) {
        int rank, all_int;
        hsize_t dims[2];
        double *buf = numbers(v, &rank, dims, &all_int);
        if (!buf) return;
        sp = H5Screate_simple(rank, dims, NULL);
        /* integers as i32 when they fit (negative ones included: the loader must refuse them), else f64 */
        int fits = all_int;
        size_t n = rank == 2 ? dims[0] * dims[1] : dims[0];
        for (size_t i = 0; i < n && fits; i++) fits = buf[i] >= -2147483648.0 && buf[i] <= 2147483647.0;
        int32_t *ibuf = fits ? malloc((n ? n : 1) * sizeof *ibuf) : NULL;
        for (size_t i = 0; ibuf && i < n; i++) ibuf[i] = (int32_t)buf[i];
        hid_t ft = ibuf ? H5T_STD_I32LE : H5T_IEEE_F64LE, mt = ibuf ? H5T_NATIVE_INT32 : H5T_NATIVE_DOUBLE;
        const void *src = ibuf ? (const void *)ibuf : (const void *)buf;
        if (is_dataset(key)) {
            o = H5Dcreate2(f, key, ft, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
            if (o >= 0 && n) H5Dwrite(o, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, src);
            if (o >= 0) H5Dclose(o);
        } else {
            o = H5Acreate2(f, key, ft, sp, H5P_DEFAULT, H5P_DEFAULT);
            if (o >= 0 && n) H5Awrite(o, mt, src);
            if (o >= 0) H5Aclose(o);
        }
        free(ibuf);
        free(buf);
    } else if (json_is_object(v)) {
        o = H5Gcreate2(f, key, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        if (o >= 0) H5Gclose(o);
    }
    if (t >= 0) H5Tclose(t);
    if (sp >= 0) H5Sclose(sp);
}

/* the JSON object in data as an HDF5 steering file at path; -1 if data is not a JSON object */
static int json_to_h5(const char *path, const uint8_t *data, size_t size)
{
    json_t *root = json_loadb((const char *)data, size, 0, NULL);
    if (!json_is_object(root)) {
        json_decref(root);
        return -1;
    }
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0) {
        json_decref(root);
        return -1;
    }
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) if (*key && !strchr(key, '/') && strcmp(key, ".")) put(f, key, v);
    H5Fclose(f);
    json_decref(root);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[512], a[512], b[512];
    if (size < 1) return 0;
    int structured = data[0] & 1;
    data++, size--;
    if (structured) {
        snprintf(path, sizeof path, "%s/steer.h5", fuzz_dir());
        if (json_to_h5(path, data, size)) return 0;
    } else {
        static const char h5sig[4] = {(char)0x89, 'H', 'D', 'F'};
        static int raw_h5 = -1;
        if (raw_h5 < 0) raw_h5 = getenv("MTR_FUZZ_RAW_HDF5") && *getenv("MTR_FUZZ_RAW_HDF5") == '1';
        if (!raw_h5 && size >= 4 && !memcmp(data, h5sig, 4)) return 0;
        if (fuzz_write(path, sizeof path, "steer", data, size)) return 0;
    }
    mtr_steer *s = NULL;
    if (mtr_steer_load(&s, path) == 0) {
        float *z = malloc((size_t)s->n_experts * sizeof *z);
        if (z) {
            uint64_t rng = s->seed;
            for (uint32_t l = 0; l < s->n_layers + 1; l++) {
                for (uint32_t e = 0; e < s->n_experts; e++) z[e] = (float)((e * 37u + l) % 11u) - 5.0f;
                mtr_steer_apply(s, l, z, &rng);
                mtr_steer_apply(s, l, z, NULL);
            }
            volatile float sink = z[0];
            (void)sink;
        }
        free(z);
        mtr_model_info m;
        mtr_model_info_init(&m, s->model_id, "qwen3_moe", s->n_layers, s->n_experts, s->top_k);
        (void)mtr_steer_check_model(s, &m);
        bool lossy;
        snprintf(a, sizeof a, "%s/easysteer.json", fuzz_dir());
        (void)mtr_steer_export_easysteer(s, a, &lossy);
        snprintf(a, sizeof a, "%s/flat.bin", fuzz_dir());
        snprintf(b, sizeof b, "%s/flat.json", fuzz_dir());
        (void)mtr_steer_export_flat(s, a, b);
    }
    mtr_steer_destroy(s);
    return 0;
}
