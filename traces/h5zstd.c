/* h5zstd.c — the zstd HDF5 filter, id 32015 (FORMAT.md "Compression").
 *
 * Built twice from this one file: into libmoetrace, where mtr_h5zstd_register() registers it in-process (Debian
 * ships no zstd filter for HDF5), and as the dynamically loaded plugin libh5zstd.so (-DMTR_H5ZSTD_PLUGIN) so
 * h5dump, h5py and HDFView read and write traces with HDF5_PLUGIN_PATH set. cd_values[0] is the compression level,
 * as in the registered filter; a chunk is one zstd frame with its content size in the header.
 */
#include <hdf5.h>
#include <zstd.h>

#ifdef MTR_H5ZSTD_PLUGIN
#include <H5PLextern.h>
#else
#include <pthread.h>

#include "internal.h"
#endif

#define ZSTD_FILTER_ID 32015


static size_t h5zstd_filter(unsigned int flags, size_t cd_nelmts, const unsigned int cd_values[], size_t nbytes,
                            size_t *buf_size, void **buf)
{
    void *out = NULL;
    size_t n;
    if (flags & H5Z_FLAG_REVERSE) {
        unsigned long long want = ZSTD_getFrameContentSize(*buf, nbytes);
        if (want == ZSTD_CONTENTSIZE_ERROR || want == ZSTD_CONTENTSIZE_UNKNOWN || want > ((size_t)1 << 40))
            return 0; /* not a frame we wrote, or one without a size: fail the read rather than guess */
#ifndef MTR_H5ZSTD_PLUGIN
        /* HDF5 1.10 takes a whole chunk from what the filter returns without checking its size: a frame that
         * declares less than the chunk mtr_h5_dread is reading is refused */
        if (want < mtr_h5_chunk_expected()) return 0;
#endif
        out = H5allocate_memory((size_t)want, 0);
        if (!out) return 0;
        n = ZSTD_decompress(out, (size_t)want, *buf, nbytes);
        if (ZSTD_isError(n) || n != want) goto fail;
    } else {
        int level = cd_nelmts > 0 ? (int)cd_values[0] : 1;
        if (level > ZSTD_maxCLevel()) level = ZSTD_maxCLevel();
        size_t cap = ZSTD_compressBound(nbytes);
        ZSTD_CCtx *cctx = ZSTD_createCCtx();
        out = cctx ? H5allocate_memory(cap, 0) : NULL;
        if (!out) {
            ZSTD_freeCCtx(cctx);
            return 0;
        }
        /* frames carry a content checksum so a damaged chunk fails to read instead of giving wrong numbers */
        ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, level);
        ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 1);
        n = ZSTD_compress2(cctx, out, cap, *buf, nbytes);
        ZSTD_freeCCtx(cctx);
        if (ZSTD_isError(n)) goto fail;
    }
    H5free_memory(*buf);
    *buf = out;
    *buf_size = n;
    return n;
fail:
    H5free_memory(out);
    return 0;
}

static const H5Z_class2_t h5zstd_class = {
    H5Z_CLASS_T_VERS,
    (H5Z_filter_t)ZSTD_FILTER_ID,
    1,
    1,
    "zstd",
    NULL,
    NULL,
    h5zstd_filter,
};

#ifdef MTR_H5ZSTD_PLUGIN
H5PL_type_t H5PLget_plugin_type(void) { return H5PL_TYPE_FILTER; }
const void *H5PLget_plugin_info(void) { return &h5zstd_class; }
#else
static pthread_once_t register_once = PTHREAD_ONCE_INIT;
static int register_status;

static void register_filter(void)
{
    mtr_h5_quiet();
    register_status = H5Zregister(&h5zstd_class) < 0 ? MTR_EHDF5 : 0;
}

int mtr_h5zstd_register(void)
{
    pthread_once(&register_once, register_filter);
    if (register_status) return mtr_fail(register_status, "cannot register the zstd HDF5 filter %d", ZSTD_FILTER_ID);
    return 0;
}

size_t mtr_zstd_bound(size_t n) { return ZSTD_compressBound(n); }
#endif
