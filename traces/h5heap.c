/* h5heap.c — checks the global heap objects that variable-length strings point to before HDF5 reads them, and
 * the local heap of each group whose header is walked (its size is allocated as declared).
 * HDF5 1.10 trusts the object sizes inside a heap collection: one flipped bit in a size makes it copy past the
 * collection (a crash) or loop for ever. So the heap ID of each string (in the attribute message of the object
 * header, or in a contiguous string dataset) is read from the file directly, and its collection walked: objects
 * must tile the collection exactly, indices be unique, and the object have the ID's length. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define MAX_HEADER_BLOCKS 256             /* object header chunks followed (a loop of continuations ends here) */
#define MAX_BLOCK_BYTES ((uint64_t)1 << 24)
#define MAX_COLLECTION_BYTES ((uint64_t)1 << 30)
#define MIN_COLLECTION_BYTES 4096         /* HDF5 never writes a smaller one */
#define N_CACHED 8

/* one parsed collection: its objects' indices and sizes */
typedef struct {
    uint64_t addr;
    uint32_t n;
    uint16_t *idx;  /* (n) */
    uint64_t *size; /* (n) */
} collection;

/* the file under the checks: HDF5's own POSIX descriptor and the sizes the superblock declares */
typedef struct {
    int fd;
    uint64_t eof, base;
    size_t sa, sl; /* bytes of an address and of a length */
    const char *file;
    collection cache[N_CACHED];
    unsigned n_cached, next_slot;
} h5raw;

static uint64_t get_le(const uint8_t *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = n; i-- > 0;) v = v << 8 | p[i];
    return v;
}

static int read_at(h5raw *r, void *buf, uint64_t n, uint64_t off, const char *what)
{
    if (off > r->eof || n > r->eof - off)
        return mtr_fail(MTR_ETRUNCATED, "%s: %s at byte %llu lies past the end of the file: truncated or damaged", r->file, what,
                        (unsigned long long)off);
    uint8_t *p = buf;
    while (n > 0) {
        ssize_t got = pread(r->fd, p, n, (off_t)off);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) return mtr_fail(MTR_EIO, "%s: reading %s: %s", r->file, what, got ? strerror(errno) : "short read");
        p += got;
        off += (uint64_t)got;
        n -= (uint64_t)got;
    }
    return 0;
}

/* 1 with *r ready, 0 when the file is not one these checks can read (another driver, addresses or lengths not of
 * 8 bytes), <0 error */
static int raw_open(h5raw *r, hid_t obj, const char *file)
{
    memset(r, 0, sizeof *r);
    r->fd = -1;
    r->file = file;
    int ok = 0;
    hid_t fid = H5Iget_file_id(obj), fapl = H5I_INVALID_HID, fcpl = H5I_INVALID_HID;
    void *handle = NULL;
    hsize_t ub = 0;
    struct stat st;
    if (fid < 0) return mtr_fail(MTR_EHDF5, "%s: cannot find the file of an object", file);
    fapl = H5Fget_access_plist(fid);
    fcpl = H5Fget_create_plist(fid);
    if (fapl >= 0 && fcpl >= 0 && H5Pget_driver(fapl) == H5FD_SEC2 && H5Fget_vfd_handle(fid, fapl, &handle) >= 0 &&
        handle && H5Pget_sizes(fcpl, &r->sa, &r->sl) >= 0 && H5Pget_userblock(fcpl, &ub) >= 0 &&
        r->sa == 8 && r->sl == 8 && fstat(*(int *)handle, &st) == 0) {
        r->fd = *(int *)handle;
        r->eof = (uint64_t)st.st_size;
        r->base = ub;
        ok = 1;
    }
    if (fcpl >= 0) H5Pclose(fcpl);
    if (fapl >= 0) H5Pclose(fapl);
    H5Fclose(fid);
    return ok;
}

static void raw_close(h5raw *r)
{
    for (unsigned i = 0; i < r->n_cached; i++) {
        free(r->cache[i].idx);
        free(r->cache[i].size);
    }
}

/* Walk the collection at addr: "GCOL", version 1, its size, then objects (index, references, reserved, size,
 * data padded to 8 bytes) that tile it exactly; the free-space object (index 0) covers the rest. */
static int load_collection(h5raw *r, uint64_t addr, collection **out, const char *what)
{
    for (unsigned i = 0; i < r->n_cached; i++)
        if (r->cache[i].addr == addr) {
            *out = &r->cache[i];
            return 0;
        }
    uint8_t hdr[16];
    uint8_t *buf = NULL, *seen = NULL;
    const size_t hsz = 8 + r->sl, ohsz = 8 + r->sl;
    int rc = read_at(r, hdr, hsz, r->base + addr, what);
    if (rc) return rc;
    uint64_t size = get_le(hdr + 8, r->sl);
    if (memcmp(hdr, "GCOL", 4) != 0 || hdr[4] != 1)
        return mtr_fail(MTR_EFORMAT, "%s: %s points to byte %llu, which holds no global heap collection", r->file,
                        what, (unsigned long long)(r->base + addr));
    if (size < MIN_COLLECTION_BYTES || size > MAX_COLLECTION_BYTES || r->base + addr > r->eof ||
        size > r->eof - (r->base + addr))
        return mtr_fail(MTR_EFORMAT, "%s: global heap collection at byte %llu (%s) claims an impossible size %llu",
                        r->file, (unsigned long long)(r->base + addr), what, (unsigned long long)size);
    collection c = {addr, 0, NULL, NULL};
    size_t cap = (size_t)(size / ohsz);
    buf = malloc(size);
    seen = calloc(65536 / 8, 1);
    c.idx = malloc(cap * sizeof *c.idx);
    c.size = malloc(cap * sizeof *c.size);
    if (!buf || !seen || !c.idx || !c.size) {
        rc = mtr_fail(MTR_ENOMEM, "%s: out of memory checking a global heap collection", r->file);
        goto fail;
    }
    if ((rc = read_at(r, buf, size, r->base + addr, what))) goto fail;
    uint64_t p = hsz;
    while (size - p >= ohsz) {
        uint16_t idx = (uint16_t)get_le(buf + p, 2);
        uint64_t osz = get_le(buf + p + 8, r->sl);
        if (idx == 0) { /* free space: the rest of the collection, its own header included */
            if (osz != size - p) goto damaged;
            p = size;
            break;
        }
        if (osz > size - p - ohsz || (seen[idx / 8] >> (idx % 8) & 1)) goto damaged;
        seen[idx / 8] |= (uint8_t)(1u << (idx % 8));
        uint64_t need = ohsz + (osz + 7) / 8 * 8;
        if (need > size - p) goto damaged;
        c.idx[c.n] = idx;
        c.size[c.n++] = osz;
        p += need;
    }
    free(buf);
    free(seen);
    if (r->n_cached < N_CACHED) r->n_cached++;
    else {
        free(r->cache[r->next_slot].idx);
        free(r->cache[r->next_slot].size);
    }
    r->cache[r->next_slot] = c;
    *out = &r->cache[r->next_slot];
    r->next_slot = (r->next_slot + 1) % N_CACHED;
    return 0;
damaged:
    rc = mtr_fail(MTR_ECORRUPT, "%s: global heap collection at byte %llu (%s) is damaged: object at offset %llu "
                  "overruns it or repeats an index", r->file, (unsigned long long)(r->base + addr), what,
                  (unsigned long long)p);
fail:
    free(buf);
    free(seen);
    free(c.idx);
    free(c.size);
    return rc;
}

/* A heap ID (length u32, collection address, object index u32) must name an object of that length. */
static int check_heap_id(h5raw *r, const uint8_t *id, const char *what)
{
    uint64_t len = get_le(id, 4), addr = get_le(id + 4, r->sa);
    uint32_t idx = (uint32_t)get_le(id + 4 + r->sa, 4);
    if (len == 0) return 0; /* an empty string: HDF5 reads nothing */
    collection *c = NULL;
    int rc = load_collection(r, addr, &c, what);
    if (rc) return rc;
    for (uint32_t i = 0; i < c->n; i++)
        if (c->idx[i] == idx) {
            if (c->size[i] != len)
                return mtr_fail(MTR_ECORRUPT, "%s: %s: global heap object %u holds %llu bytes, the string has %llu",
                                r->file, what, idx, (unsigned long long)c->size[i], (unsigned long long)len);
            return 0;
        }
    return mtr_fail(MTR_ECORRUPT, "%s: %s: global heap object %u is missing from its collection", r->file, what, idx);
}

/* A member or tag name at t[*at]: NUL-terminated inside n bytes (HDF5 copies it with strdup), padded to a
 * multiple of 8 when `pad`; *at moves past it */
static bool name_ok(const uint8_t *t, uint64_t n, uint64_t *at, bool pad)
{
    const uint8_t *z = *at < n ? memchr(t + *at, 0, n - *at) : NULL;
    if (!z) return false;
    uint64_t len = (uint64_t)(z - (t + *at)) + 1;
    *at += pad ? (len + 7) / 8 * 8 : len;
    return *at <= n;
}

/* A datatype encoding of n bytes (class in the low nibble of byte 0, element size at 4): a plausible element size
 * for its class, bit fields inside it, a variable-length type's base of one byte per string character, and for
 * the classes that nest (enum, compound, array, variable-length) every member name terminated inside the encoding
 * and every nested type checked the same way. *used gets the encoding's length. */
static bool datatype_ok(h5raw *r, const uint8_t *t, uint64_t n, int depth, uint64_t *used)
{
    if (n < 8 || depth > 4) return false;
    unsigned cls = t[0] & 0x0f, ver = t[0] >> 4;
    uint64_t size = get_le(t + 4, 4), at = 8, sub = 0, nmemb = get_le(t + 1, 2);
    if (ver < 1 || ver > 4 || size == 0 || size > ((uint64_t)1 << 24)) return false;
    switch (cls) {
    case 0: /* fixed-point, bitfield: bit offset and precision inside the element */
    case 4:
    case 1: /* floating-point */
        if (n < 12 || get_le(t + 8, 2) + get_le(t + 10, 2) > 8 * size || get_le(t + 10, 2) == 0) return false;
        if (cls == 1 && (n < 20 || t[12] + t[13] > 8 * size || t[14] + t[15] > 8 * size)) return false;
        at = cls == 1 ? 20 : 12;
        break;
    case 2: /* time: a bit precision */
        at = 10;
        break;
    case 3: /* string, reference: no properties */
    case 7:
        break;
    case 5: /* opaque: a tag of t[1] bytes, padded */
        if (t[1] && (!memchr(t + 8, 0, t[1] < n - 8 ? t[1] : n - 8))) return false;
        at = 8 + (uint64_t)t[1];
        break;
    case 6: /* compound: nmemb members, each a name, an offset and a type (version 1 adds 28 bytes of dims) */
        for (uint64_t i = 0; i < nmemb; i++) {
            if (!name_ok(t, n, &at, ver < 3)) return false;
            at += ver == 1 ? 32 : ver == 2 ? 4 : size < 256 ? 1 : size < 65536 ? 2 : size < (1u << 24) ? 3 : 4;
            if (at > n || !datatype_ok(r, t + at, n - at, depth + 1, &sub)) return false;
            at += sub;
        }
        break;
    case 8: /* enumeration: a base type, nmemb names, nmemb values of the base's size */
        if (!datatype_ok(r, t + 8, n - 8, depth + 1, &sub)) return false;
        at += sub;
        for (uint64_t i = 0; i < nmemb; i++)
            if (!name_ok(t, n, &at, ver < 3)) return false;
        if (nmemb * get_le(t + 12, 4) > n - at) return false;
        at += nmemb * get_le(t + 12, 4);
        break;
    case 9: /* variable-length: a heap ID in the file, the base type follows */
        if (size != 8 + r->sa || !datatype_ok(r, t + 8, n - 8, depth + 1, &sub)) return false;
        if ((t[1] & 0x0f) == 1 && get_le(t + 12, 4) != 1) return false; /* a string's base is its characters */
        at += sub;
        break;
    case 10: { /* array: a rank, the dims (and in version 2 a permutation), the base type */
        if (n < 12 || t[8] < 1 || t[8] > 32) return false;
        at = 8 + (ver < 3 ? 4 + 8 * (uint64_t)t[8] : 1 + 4 * (uint64_t)t[8]);
        if (at > n || !datatype_ok(r, t + at, n - at, depth + 1, &sub)) return false;
        at += sub;
        break;
    }
    default:
        return false;
    }
    *used = at;
    return at <= n;
}

/* A dataspace encoding of n bytes: rank and dimensions within it; the number of elements in *nelem (0 null). */
static bool dataspace_ok(h5raw *r, const uint8_t *sp, uint64_t n, uint64_t *nelem)
{
    if (n < 4 || sp[0] < 1 || sp[0] > 2 || sp[1] > 32) return false;
    uint64_t rank = sp[1], hdr = sp[0] == 1 ? 8 : 4, ne = 1;
    if (sp[0] == 2 && sp[3] == 2) ne = 0; /* null dataspace */
    if (hdr + rank * r->sl * (sp[2] & 1 ? 2 : 1) > n) return false;
    for (uint64_t i = 0; i < rank; i++) {
        uint64_t dim = get_le(sp + hdr + i * r->sl, r->sl);
        ne = dim && ne > UINT64_MAX / dim ? UINT64_MAX : ne * dim;
    }
    *nelem = ne;
    return true;
}

/* A data layout message: a known version and class; chunk dimensions present and non-zero (HDF5 1.10 divides by
 * them, and misreads them when the version byte is damaged). */
static bool layout_ok(h5raw *r, const uint8_t *m, uint64_t n)
{
    if (n < 2 || m[0] < 1 || m[0] > 4) return false;
    if (m[0] <= 2) { /* version, rank, class, reserved 5, address unless compact, rank 4-byte dims */
        if (n < 8 || m[1] < 1 || m[1] > 33 || m[2] > 2) return false;
        uint64_t at = 8 + (m[2] ? r->sa : 0);
        if (at + 4 * (uint64_t)m[1] > n) return false;
        for (unsigned i = 0; m[2] == 2 && i < m[1]; i++)
            if (get_le(m + at + 4 * i, 4) == 0) return false;
        return true;
    }
    if (m[1] > 3) return false;
    if (m[1] != 2) return true;
    if (m[0] == 3) { /* rank, address, rank 4-byte dims (the last is the element size) */
        if (n < 3 || m[2] < 2 || m[2] > 33 || 3 + r->sa + 4 * (uint64_t)m[2] > n) return false;
        for (unsigned i = 0; i < m[2]; i++)
            if (get_le(m + 3 + r->sa + 4 * i, 4) == 0) return false;
        return true;
    }
    /* version 4: flags, rank, bytes per dim, dims */
    if (n < 5 || m[3] < 2 || m[3] > 33 || m[4] < 1 || m[4] > 8 || 5 + (uint64_t)m[3] * m[4] > n) return false;
    for (unsigned i = 0; i < m[3]; i++)
        if (get_le(m + 5 + (uint64_t)i * m[4], m[4]) == 0) return false;
    return true;
}

/* An attribute message's parts (name, datatype, dataspace, value) must fit the message, the dataspace's
 * dimensions its encoding, and the value as many elements as they describe: HDF5 1.10 decodes these sizes
 * unchecked (a flipped bit in them is a read past the header). *off gets the value's offset. */
static int check_attr_msg(h5raw *r, const uint8_t *m, uint64_t sz, uint64_t at, uint64_t *off)
{
    if (sz < 8 || m[0] < 1 || m[0] > 3) goto bad;
    uint64_t nlen = get_le(m + 2, 2), tlen = get_le(m + 4, 2), slen = get_le(m + 6, 2), o = m[0] == 3 ? 9 : 8;
    bool shared = m[0] >= 2 && (m[1] & 3);
    uint64_t t0 = o + (m[0] == 1 ? (nlen + 7) / 8 * 8 : nlen);
    uint64_t s0 = t0 + (m[0] == 1 ? (tlen + 7) / 8 * 8 : tlen);
    uint64_t d0 = s0 + (m[0] == 1 ? (slen + 7) / 8 * 8 : slen);
    if (nlen < 1 || o + nlen > sz || m[o + nlen - 1] != '\0' || d0 > sz) goto bad;
    *off = d0;
    if (shared) return 0; /* datatype or dataspace held elsewhere: HDF5 resolves those */
    uint64_t nelem = 0, esize = get_le(m + t0 + 4, 4);
    uint64_t tused = 0;
    if (!datatype_ok(r, m + t0, tlen, 0, &tused) || !dataspace_ok(r, m + s0, slen, &nelem)) goto bad;
    if (nelem && (nelem > UINT32_MAX || esize * nelem > sz - d0)) goto bad;
    return 0;
bad:
    return mtr_fail(MTR_ECORRUPT, "%s: the attribute message at byte %llu of an object header is damaged", r->file,
                    (unsigned long long)at);
}

/* The local heap of an old-style group (its symbol table message): "HEAP", version 0, 3 reserved bytes, the data
 * segment's size, the free list's offset and the segment's address. HDF5 1.10 allocates the declared size
 * before it reads the segment, so the segment must lie inside the file. */
static int check_local_heap(h5raw *r, uint64_t addr, uint64_t at)
{
    uint8_t h[8 + 3 * 8];
    int rc = read_at(r, h, 8 + 2 * r->sl + r->sa, r->base + addr, "a group's local heap");
    if (rc) return rc;
    if (memcmp(h, "HEAP", 4) != 0 || h[4] != 0)
        return mtr_fail(MTR_ECORRUPT, "%s: the group's local heap at byte %llu (from the symbol table message at "
                        "byte %llu) is damaged", r->file, (unsigned long long)(r->base + addr),
                        (unsigned long long)at);
    uint64_t size = get_le(h + 8, r->sl), seg = get_le(h + 8 + 2 * r->sl, r->sa);
    if (seg > r->eof || r->base + seg > r->eof || size > r->eof - (r->base + seg))
        return mtr_fail(MTR_ECORRUPT, "%s: the group's local heap at byte %llu declares a %llu-byte data segment at "
                        "byte %llu, past the end of the file (%llu bytes): truncated or damaged", r->file,
                        (unsigned long long)(r->base + addr), (unsigned long long)size, (unsigned long long)seg,
                        (unsigned long long)r->eof);
    return 0;
}

/* Check every attribute message of one object header block, and look for attribute `name` (may be NULL):
 * 1 with *data / *dlen set when found, 0 if not, <0 error. Continuation blocks are appended to conts. */
static int scan_block(h5raw *r, const uint8_t *b, uint64_t n, uint64_t at, int version, bool crt_order,
                      const char *name, uint64_t *conts, uint64_t *cont_lens, unsigned *n_conts, const uint8_t **data,
                      uint64_t *dlen)
{
    const uint64_t mh = version == 1 ? 8 : crt_order ? 6 : 4;
    int found = 0;
    for (uint64_t p = 0; n - p >= mh;) {
        unsigned type = version == 1 ? (unsigned)get_le(b + p, 2) : b[p];
        uint64_t sz = version == 1 ? get_le(b + p + 2, 2) : get_le(b + p + 1, 2);
        const uint8_t *m = b + p + mh;
        if (sz > n - p - mh) return found; /* the rest is a gap or damage: HDF5 judges that itself */
        if (type == 0x10 && sz >= r->sa + r->sl && *n_conts < MAX_HEADER_BLOCKS) {
            conts[*n_conts] = get_le(m, r->sa);
            cont_lens[(*n_conts)++] = get_le(m + r->sa, r->sl);
        } else if ((type == 0x01 || type == 0x03 || type == 0x08) && !((version == 1 ? b[p + 4] : b[p + 3]) & 2)) {
            uint64_t ne = 0, tu = 0; /* dataspace, datatype, layout of a dataset (not shared ones, held elsewhere) */
            bool good = type == 0x01 ? dataspace_ok(r, m, sz, &ne) : type == 0x03 ? datatype_ok(r, m, sz, 0, &tu)
                                                                                  : layout_ok(r, m, sz);
            if (!good)
                return mtr_fail(MTR_ECORRUPT, "%s: the %s message at byte %llu of an object header is damaged",
                                r->file, type == 0x01 ? "dataspace" : type == 0x03 ? "datatype" : "data layout",
                                (unsigned long long)(at + p));
        } else if (type == 0x11 && sz >= 2 * r->sa) { /* symbol table: B-tree and local heap addresses */
            int rc = check_local_heap(r, get_le(m + r->sa, r->sa), at + p);
            if (rc) return rc;
        } else if (type == 0x0c) {
            uint64_t off = 0;
            int rc = check_attr_msg(r, m, sz, at + p, &off);
            if (rc) return rc;
            const uint8_t *nm = m + (m[0] == 3 ? 9 : 8);
            uint64_t nlen = get_le(m + 2, 2);
            if (!found && name && nlen == strlen(name) + 1 && memcmp(nm, name, nlen) == 0) {
                *data = m + off;
                *dlen = sz - off;
                found = 1;
            }
        }
        p += mh + sz;
    }
    return found;
}

/* Walk the object header at addr, checking every attribute message (see check_attr_msg). With `name`, the raw
 * value of that attribute goes to *out (malloc'd), or NULL when the header does not hold it as a message (dense
 * attribute storage): then it cannot be checked here. */
static int walk_header(h5raw *r, uint64_t addr, const char *name, uint8_t **out, uint64_t *out_len)
{
    uint64_t conts[MAX_HEADER_BLOCKS], lens[MAX_HEADER_BLOCKS];
    unsigned n_conts = 0, done = 0;
    uint8_t pre[32];
    int rc, version;
    bool crt = false;
    uint64_t blk, blen;
    if (out) *out = NULL;
    if ((rc = read_at(r, pre, 16, addr, "object header"))) return rc;
    if (memcmp(pre, "OHDR", 4) == 0) {
        unsigned flags = pre[5];
        uint64_t p = 6 + (flags & 0x20 ? 16 : 0) + (flags & 0x10 ? 4 : 0);
        size_t w = (size_t)1 << (flags & 3);
        if ((rc = read_at(r, pre, p + w, addr, "object header"))) return rc;
        version = 2;
        crt = flags & 0x04;
        blk = addr + p + w;
        blen = get_le(pre + p, w);
    } else if (pre[0] == 1) {
        version = 1;
        blk = addr + 16;
        blen = get_le(pre + 8, 4);
    } else {
        return 0; /* not a header these checks know: left to HDF5 */
    }
    for (;;) {
        /* HDF5 allocates a chunk's declared length before reading it */
        if (blk > r->eof || blen > r->eof - blk)
            return mtr_fail(MTR_ECORRUPT, "%s: an object header chunk at byte %llu declares %llu bytes, past the end "
                            "of the file (%llu bytes): truncated or damaged", r->file, (unsigned long long)blk, (unsigned long long)blen,
                            (unsigned long long)r->eof);
        if (blen > MAX_BLOCK_BYTES) return 0;
        uint8_t *b = malloc(blen ? blen : 1);
        if (!b) return mtr_fail(MTR_ENOMEM, "%s: out of memory reading an object header", r->file);
        if ((rc = read_at(r, b, blen, blk, "object header"))) {
            free(b);
            return rc;
        }
        const uint8_t *msgs = b;
        uint64_t n = blen, at = blk;
        if (version == 2 && done > 0) { /* continuation chunk: "OCHK", messages, checksum */
            if (n < 8 || memcmp(b, "OCHK", 4) != 0) {
                free(b);
                return 0;
            }
            msgs += 4;
            at += 4;
            n -= 8;
        }
        const uint8_t *data = NULL;
        uint64_t dlen = 0;
        rc = scan_block(r, msgs, n, at, version, crt, name, conts, lens, &n_conts, &data, &dlen);
        if (rc == 1 && out && !*out) {
            if (!(*out = malloc(dlen ? dlen : 1))) rc = mtr_fail(MTR_ENOMEM, "out of memory");
            else memcpy(*out, data, dlen);
            *out_len = dlen;
        }
        free(b);
        if (rc < 0) {
            if (out) {
                free(*out);
                *out = NULL;
            }
            return rc;
        }
        if (done >= n_conts) return 0;
        blk = r->base + conts[done];
        blen = lens[done++];
    }
}

static int header_addr(hid_t obj, uint64_t *addr, const char *file)
{
    H5O_info_t oi;
    if (H5Oget_info2(obj, &oi, H5O_INFO_BASIC) < 0)
        return mtr_fail(MTR_EFORMAT, "%s: cannot find an object's header", file);
    *addr = oi.addr;
    return 0;
}

int mtr_h5_check_attrs(hid_t obj, const char *file)
{
    h5raw r;
    uint64_t addr = 0;
    int rc = raw_open(&r, obj, file);
    if (rc <= 0) return rc;
    if (!(rc = header_addr(obj, &addr, file))) rc = walk_header(&r, r.base + addr, NULL, NULL, NULL);
    raw_close(&r);
    return rc;
}

int mtr_h5_check_object(hid_t loc, const char *name, const char *file)
{
    h5raw r;
    H5O_info_t oi;
    int rc = raw_open(&r, loc, file);
    if (rc <= 0) return rc;
    /* the header is loaded but its messages are not decoded: that is what the walk checks first */
    if (H5Oget_info_by_name2(loc, name, &oi, H5O_INFO_BASIC, H5P_DEFAULT) >= 0)
        rc = walk_header(&r, r.base + oi.addr, NULL, NULL, NULL);
    else /* raw_open's 1 (opened) is not a verdict */
        rc = mtr_fail(MTR_EFORMAT, "%s: cannot find the header of /%s (damaged link or object header)", file, name);
    raw_close(&r);
    return rc;
}

int mtr_h5_check_vlen_attr(hid_t obj, const char *name, const char *file)
{
    h5raw r;
    int rc = raw_open(&r, obj, file);
    if (rc <= 0) return rc;
    uint8_t *v = NULL;
    uint64_t vlen = 0, addr = 0;
    char what[160];
    snprintf(what, sizeof what, "attribute '%s'", name);
    if (!(rc = header_addr(obj, &addr, file)) && !(rc = walk_header(&r, r.base + addr, name, &v, &vlen)) && v) {
        if (vlen < 8 + r.sa)
            rc = mtr_fail(MTR_EFORMAT, "%s: %s holds %llu bytes, too few for a string", file, what,
                          (unsigned long long)vlen);
        else
            rc = check_heap_id(&r, v, what);
    }
    free(v);
    raw_close(&r);
    return rc;
}

/* The heap IDs of elements [first, first + count) of a string dataset, stored raw at byte off of the file */
static int check_ids_at(h5raw *r, uint64_t off, uint64_t count, const char *what)
{
    const uint64_t w = 8 + r->sa;
    int rc = 0;
    uint8_t *ids = count <= ((uint64_t)1 << 36) / w ? malloc(count ? count * w : 1) : NULL;
    if (!ids) return mtr_fail(MTR_ENOMEM, "%s: out of memory checking %s", r->file, what);
    if (!(rc = read_at(r, ids, count * w, off, what)))
        for (uint64_t i = 0; i < count && !rc; i++) rc = check_heap_id(r, ids + i * w, what);
    free(ids);
    return rc;
}

/* A chunked 1-D string dataset without filters: each chunk's heap IDs, up to the first n elements. Chunks the
 * index does not list (never written) hold none. */
static int check_chunked_ids(h5raw *r, hid_t dset, uint64_t n, const char *what)
{
    hid_t dcpl = H5Dget_create_plist(dset), sp = H5Dget_space(dset);
    hsize_t cdim = 0, nchunks = 0;
    int rc = 0;
    if (dcpl < 0 || sp < 0 || H5Pget_chunk(dcpl, 1, &cdim) != 1 || H5Pget_nfilters(dcpl) != 0 || cdim == 0 ||
        H5Dget_num_chunks(dset, sp, &nchunks) < 0) {
        rc = 1; /* not this layout: left to HDF5 */
    } else {
        for (hsize_t i = 0; i < nchunks && !rc; i++) {
            hsize_t coff = 0, bytes = 0;
            haddr_t addr = HADDR_UNDEF;
            unsigned mask = 0;
            if (H5Dget_chunk_info(dset, sp, i, &coff, &mask, &addr, &bytes) < 0 || addr == HADDR_UNDEF) {
                rc = mtr_fail(MTR_ECORRUPT, "%s: the chunk index of %s is damaged", r->file, what);
                break;
            }
            if (bytes != cdim * (8 + r->sa) || coff % cdim != 0) {
                rc = mtr_fail(MTR_ECORRUPT, "%s: chunk %llu of %s holds %llu bytes at element %llu, not %llu "
                              "string references", r->file, (unsigned long long)i, what, (unsigned long long)bytes,
                              (unsigned long long)coff, (unsigned long long)cdim);
                break;
            }
            if (coff >= n) continue;
            rc = check_ids_at(r, r->base + addr, n - coff < cdim ? n - coff : cdim, what);
        }
    }
    if (sp >= 0) H5Sclose(sp);
    if (dcpl >= 0) H5Pclose(dcpl);
    return rc;
}

int mtr_h5_check_vlen_dset(hid_t dset, uint64_t n, const char *name, const char *file)
{
    h5raw r;
    int rc = raw_open(&r, dset, file);
    if (rc <= 0 || n == 0) return rc < 0 ? rc : 0;
    char what[160];
    snprintf(what, sizeof what, "/%s", name);
    haddr_t off = H5Dget_offset(dset);
    if (off != HADDR_UNDEF) rc = check_ids_at(&r, off, n, what);
    else if ((rc = check_chunked_ids(&r, dset, n, what)) > 0) rc = 0; /* compact or filtered: HDF5's own checks */
    raw_close(&r);
    return rc;
}

/* ---- before H5Fopen ---------------------------------------------------------------------------------------- */

/* H5Fopen loads the root group's object header, allocating the size its first chunk declares: the superblock
 * (version 0-3, 8-byte addresses and lengths, at offset 0) is read here to find that header, whose declared size
 * must lie inside the file. Anything else (a user block, other address sizes) is left to HDF5. */
int mtr_h5_check_file(const char *path)
{
    static const uint8_t sig[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
    h5raw r;
    struct stat st;
    uint8_t sb[96], oh[32];
    int rc = 0;
    memset(&r, 0, sizeof r);
    r.file = path;
    r.sa = r.sl = 8;
    if ((r.fd = open(path, O_RDONLY)) < 0) return mtr_fail(MTR_ENOTFOUND, "%s: %s", path, strerror(errno));
    if (fstat(r.fd, &st) != 0) {
        rc = mtr_fail(MTR_EIO, "%s: %s", path, strerror(errno));
        goto done;
    }
    r.eof = (uint64_t)st.st_size;
    if (r.eof < 48 || (rc = read_at(&r, sb, r.eof < sizeof sb ? r.eof : sizeof sb, 0, "the superblock")))
        goto done;
    if (memcmp(sb, sig, 8) != 0) goto done; /* not at offset 0: a user block, or not HDF5 (the caller says) */
    uint64_t base = 0, root = 0;
    unsigned ver = sb[8];
    if (ver <= 1) {
        if (sb[13] != 8 || sb[14] != 8) goto done;
        const size_t a = ver == 0 ? 24 : 28; /* base, free-space, end-of-file and driver addresses, then the root
                                                 group's symbol table entry: name offset, header address */
        if (r.eof < a + 4 * 8 + 16) goto done;
        base = get_le(sb + a, 8);
        root = get_le(sb + a + 4 * 8 + 8, 8);
    } else if (ver <= 3) {
        if (sb[9] != 8 || sb[10] != 8) goto done;
        base = get_le(sb + 12, 8);
        root = get_le(sb + 36, 8);
    } else {
        goto done; /* a version HDF5 1.10 refuses itself */
    }
    if (base > r.eof || root > r.eof - base) {
        rc = mtr_fail(MTR_ECORRUPT, "%s: the superblock puts the root group at byte %llu, past the end of the file "
                      "(%llu bytes): truncated or damaged", path, (unsigned long long)(base + root), (unsigned long long)r.eof);
        goto done;
    }
    const uint64_t at = base + root;
    if ((rc = read_at(&r, oh, r.eof - at < sizeof oh ? r.eof - at : sizeof oh, at, "the root group's header")))
        goto done;
    uint64_t prefix = 0, size = 0;
    if (memcmp(oh, "OHDR", 4) == 0) {
        unsigned flags = oh[5];
        prefix = 6 + (flags & 0x20 ? 16 : 0) + (flags & 0x10 ? 4 : 0);
        size_t w = (size_t)1 << (flags & 3);
        size = prefix + w <= sizeof oh ? get_le(oh + prefix, w) : 0;
        prefix += w;
    } else if (oh[0] == 1) {
        prefix = 16;
        size = get_le(oh + 8, 4);
    } else {
        rc = mtr_fail(MTR_ECORRUPT, "%s: the root group's header at byte %llu is damaged", path,
                      (unsigned long long)at);
        goto done;
    }
    if (size > r.eof - at || prefix > r.eof - at - size) {
        rc = mtr_fail(MTR_ECORRUPT, "%s: the root group's header at byte %llu declares %llu bytes, past the end of "
                      "the file (%llu bytes): truncated or damaged", path, (unsigned long long)at, (unsigned long long)size,
                      (unsigned long long)r.eof);
        goto done;
    }
    /* its continuation chunks, attribute messages and local heap, as mtr_h5_check_attrs does after the open */
    r.base = base;
    rc = walk_header(&r, at, NULL, NULL, NULL);
    raw_close(&r);
done:
    close(r.fd);
    return rc;
}
