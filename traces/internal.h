/* internal.h — private helpers shared by the files of libmoetrace (not installed). */
#ifndef MTR_INTERNAL_H
#define MTR_INTERNAL_H

#include <hdf5.h>
#include <jansson.h>
#include <stdarg.h>

#include "moetrace.h"
#include "mtr_h5.h"


/* HDF5 error printing off for this process (we report through mtr_errmsg). */
void mtr_h5_quiet(void);

/* Attribute helpers: 0 or a negative mtr_err with detail naming `file`. */
int mtr_h5_set_str(hid_t obj, const char *name, const char *value);
int mtr_h5_set_u32(hid_t obj, const char *name, uint32_t v);
int mtr_h5_set_u64(hid_t obj, const char *name, uint64_t v);
int mtr_h5_set_i32v(hid_t obj, const char *name, const int32_t *v, size_t n);
int mtr_h5_set_f64(hid_t obj, const char *name, double v);
/* Read a string attribute into buf (truncated to cap-1); MTR_EFORMAT if missing or not a string. */
int mtr_h5_get_str(hid_t obj, const char *name, char *buf, size_t cap, const char *file);
int mtr_h5_get_i32v(hid_t obj, const char *name, int32_t *out, size_t n, const char *file);
bool mtr_h5_has_attr(hid_t obj, const char *name);
/* the whole-chunk bytes mtr_h5_dread (mtr_h5.h) told the zstd filter */
size_t mtr_h5_chunk_expected(void); /* 0 outside mtr_h5_dread */

/* zstd chunk codec shared by the HDF5 filter and the direct-chunk paths. */
size_t mtr_zstd_bound(size_t n);

/* Manifest (run.json) ----------------------------------------------------------------------------------- */
typedef struct {
    char file[64];
    uint64_t n_sequences, n_tokens, stored_bytes, file_bytes;
    uint64_t seq_id_min, seq_id_max;
} mtr_manifest_shard;

/* Write dir/run.json atomically (temp + fsync + rename + fsync dir). */
int mtr_manifest_write(const char *dir, json_t *root, bool sync);
/* Load dir/run.json; *out is a new reference. MTR_ENOTFOUND if absent, MTR_EFORMAT if not valid JSON. */
int mtr_manifest_load(json_t **out, const char *dir);

/* fsync a directory so a rename in it is durable. */
int mtr_fsync_dir(const char *dir);
/* Join dir and name into buf; MTR_EINVAL if it does not fit. */
int mtr_path_join(char *buf, size_t cap, const char *dir, const char *name);

/* Reading the fixed model description from a shard's root attributes. */
int mtr_read_model_attrs(hid_t file, mtr_model_info *m, float **selection_bias, const char *path);
int mtr_write_model_attrs(hid_t file, const mtr_model_info *m);
json_t *mtr_model_to_json(const mtr_model_info *m);
/* 0 if a (read from ref) and b (read from what) describe the same routing (ids, dims, semantics), else
 * MTR_EMISMATCH with a detail that blames what and names ref. */
int mtr_model_compare(const mtr_model_info *a, const mtr_model_info *b, const char *what, const char *ref);


#endif
