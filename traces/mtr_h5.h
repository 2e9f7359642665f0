/* mtr_h5.h — reading HDF5 files from outside safely. HDF5 1.10 trusts sizes and addresses inside a file: a
 * flipped bit in an object header, a group's local heap or a global heap collection makes it read past its
 * buffers, allocate what the file declares, or loop. These checks read the structures HDF5 would trust directly
 * from the file first and refuse damaged ones with a one-line message naming the file; the trace reader, reduce
 * (summaries.h5) and stats (tables.h5) read through them. Part of libmoetrace.
 *
 * Each check returns 0 when the structure is sound, and also when the file is not one the checks can read
 * (another driver, addresses or lengths not of 8 bytes: then HDF5's own checks are all there is); otherwise
 * MTR_ECORRUPT, MTR_EFORMAT or MTR_ETRUNCATED with the detail in mtr_errmsg(). */
#ifndef MTR_H5_H
#define MTR_H5_H

#include <hdf5.h>
#include <stdbool.h>
#include <stdint.h>

#include "moetrace.h"

/* Before H5Fopen(path): the root group's object header, which opening loads, must lie inside the file with the
 * size it declares. MTR_ENOTFOUND / MTR_EIO when the file cannot be read; 0 when it does not start with the HDF5
 * signature (the caller says what it expected). */
MTR_API int mtr_h5_check_file(const char *path);
/* Before HDF5 decodes the attributes of obj (any attribute access does): every attribute message in its object
 * header must hold its name, datatype, dataspace and value within the message; for a group, its local heap must
 * lie inside the file (HDF5 allocates its declared size before it looks a name up). */
MTR_API int mtr_h5_check_attrs(hid_t obj, const char *file);
/* Before H5Dopen2 / H5Gopen2 (loc, name): the object's dataspace, datatype and layout messages must be plausible
 * and within their messages, and so must its attribute messages and a group's local heap. MTR_EFORMAT when its
 * header cannot be found. */
MTR_API int mtr_h5_check_object(hid_t loc, const char *name, const char *file);
/* Before HDF5 reads a variable-length string: the global heap object it points to must exist, have the string's
 * length and lie in a well-formed collection. For attribute `name` of obj, or for the first n elements of the
 * string dataset dset (contiguous, or chunked without filters), `name` naming it in messages. */
MTR_API int mtr_h5_check_vlen_attr(hid_t obj, const char *name, const char *file);
MTR_API int mtr_h5_check_vlen_dset(hid_t dset, uint64_t n, const char *name, const char *file);
/* Before HDF5 reads a dataset's data, and before anything is sized by its dataspace: a compact or contiguous
 * dataset's data must hold exactly its elements (a flipped dimension is caught here); every chunk of a chunked
 * dataset's grid must be absent, stored through all its filters, or stored whole (the chunk's bytes) with all of
 * them skipped. HDF5 1.10 copies whole element counts or chunks out of shorter buffers. MTR_ECORRUPT naming the
 * dataset. Queries the chunk index once per chunk: call it once per dataset, not per read. */
MTR_API int mtr_h5_check_storage(hid_t d, const char *name, const char *file);
/* H5Dopen2(loc, name) after mtr_h5_check_object, then (with storage) mtr_h5_check_storage: the dataset, or
 * H5I_INVALID_HID with *rc MTR_EFORMAT (missing) or MTR_ECORRUPT naming file and dataset. */
MTR_API hid_t mtr_h5_open_dataset(hid_t loc, const char *name, bool storage, const char *file, int *rc);
/* H5Dread, with the zstd filter told the bytes of one whole chunk of d (its chunk dims times its stored element
 * size), so a damaged chunk that decompresses short fails the read instead of HDF5 reading past it. */
MTR_API herr_t mtr_h5_dread(hid_t d, hid_t mtype, hid_t mspace, hid_t fspace, void *out);

/* Checked attribute reads (mtr_h5_check_attrs first): 0, or MTR_EFORMAT naming file and attribute when it is
 * missing or not of the kind asked for. A string of any length (*out malloc'd), one unsigned integer, one
 * number. */
MTR_API int mtr_h5_get_str_alloc(hid_t obj, const char *name, char **out, const char *file);
MTR_API int mtr_h5_get_u64(hid_t obj, const char *name, uint64_t *out, const char *file);
MTR_API int mtr_h5_get_f64(hid_t obj, const char *name, double *out, const char *file);

#endif
