/* cmd_ingest.c — `moetrace-capture ingest`: read a framed router-logit stream (traces/INGEST.md) from stdin, a
 * file or FIFO, or one connection on a Unix socket, and write it as a run (capture/mtr_ingest.h does the work). */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "cli.h"
#include "mtr_ingest.h"

void ingest_help(void)
{
    printf("Usage: %s ingest --out RUN [--input PATH | --listen SOCKET] [options]\n"
           "\n"
           "Write router logits produced by another engine (PyTorch hooks in capture/python, vLLM, llama.cpp) as a\n"
           "moetrace run. The input is an ingest stream (traces/INGEST.md): a header with the model description and\n"
           "router semantics, then one frame per sequence, then an end frame. Shards, manifest, resume and crash\n"
           "rules are those of every moetrace writer. Memory is bounded by --buffer: when the producer is faster\n"
           "than the disk, ingest stops reading and the producer blocks; nothing is dropped.\n"
           "\n"
           "Input (default: standard input):\n"
           "  --input PATH           read the stream from a file or FIFO ('-' = standard input)\n"
           "  --listen SOCKET        create a Unix socket at SOCKET, accept one producer, read its stream\n"
           "\n"
           "Output:\n"
           "  --out RUN              run directory to create (required)\n"
           "  --resume               continue the run in RUN: sequences already stored are skipped\n"
           "  --dtype bf16|f16|f32   stored logits dtype (default: the stream's logits_dtype, else bf16)\n"
           "  --store logits|topk|both  what to store (default logits)\n"
           "  --shard-bytes BYTES    start a new shard after this many stored bytes (K/M/G suffixes; default 1G)\n"
           "  --model-id ID          record this model id instead of the stream's\n"
           "  --corpus-id ID         corpus id (default: the stream's)\n"
           "  --run-id ID            run id (default: generated)\n"
           "  --threads N            compression threads (default: OpenMP default)\n"
           "  --no-sync              do not fsync shards and manifest (tests, scratch runs)\n"
           "\n"
           "Memory:\n"
           "  --buffer BYTES         frame buffer budget (default 256M, at least 64K); a frame larger than it is\n"
           "                         refused as bad data\n"
           "  --max-frames N         frames buffered at most (default 8)\n"
           "\n"
           "Messages:\n"
           "  --quiet                no summary line (and no progress unless --progress)\n"
           "  --progress, --no-progress  force the progress line on stderr on or off (default: on if a terminal)\n"
           "  --json                 print a JSON summary on stdout (also after bad data)\n"
           "  -h, --help             this help\n"
           "  --version              print the version\n"
           "\n"
           "A malformed or truncated frame (or a stream without its end frame) stops ingest: every earlier sequence\n"
           "is kept and the run closed cleanly, the frame is reported with its byte offset, and the exit status is 2.\n"
           "\n"
           "%s",
           PROG, exit_status_text);
}

enum {
    I_OUT, I_INPUT, I_LISTEN, I_RESUME, I_DTYPE, I_STORE, I_SHARD_BYTES, I_MODEL_ID, I_CORPUS_ID, I_RUN_ID, I_THREADS,
    I_NO_SYNC, I_BUFFER, I_MAX_FRAMES, I_QUIET, I_PROGRESS, I_NO_PROGRESS, I_JSON, I_HELP, I_VERSION
};

static const cli_option cli_options[] = {
    {"out", I_OUT, true},           {"input", I_INPUT, true},         {"listen", I_LISTEN, true},
    {"resume", I_RESUME, false},    {"dtype", I_DTYPE, true},         {"store", I_STORE, true},
    {"shard-bytes", I_SHARD_BYTES, true}, {"model-id", I_MODEL_ID, true}, {"corpus-id", I_CORPUS_ID, true},
    {"run-id", I_RUN_ID, true},     {"threads", I_THREADS, true},     {"no-sync", I_NO_SYNC, false},
    {"buffer", I_BUFFER, true},     {"max-frames", I_MAX_FRAMES, true}, {"quiet", I_QUIET, false},
    {"progress", I_PROGRESS, false}, {"no-progress", I_NO_PROGRESS, false}, {"json", I_JSON, false},
    {"help", I_HELP, false},        {"version", I_VERSION, false},
};

typedef struct {
    double t0, last;
    bool shown;
} ingest_progress_state;

static void ingest_progress(void *ctx, uint64_t n_seq, uint64_t n_tok, uint64_t bytes)
{
    ingest_progress_state *p = ctx;
    double t = now_seconds();
    if (t - p->last < 0.25) return;
    p->last = t;
    char b[32];
    format_bytes(b, sizeof b, bytes);
    fprintf(stderr, "\r%s ingest: %llu sequences, %llu tokens, %s read   ", PROG, (unsigned long long)n_seq,
            (unsigned long long)n_tok, b);
    fflush(stderr);
    p->shown = true;
}

/* a Unix socket at path, listening; accept one connection. -1 with an error printed. */
static int listen_once(const char *path)
{
    struct sockaddr_un a;
    memset(&a, 0, sizeof a);
    a.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof a.sun_path) {
        errorf("ingest", "%s: socket path longer than %zu bytes", path, sizeof a.sun_path - 1);
        return -1;
    }
    memcpy(a.sun_path, path, strlen(path) + 1);
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) {
        errorf("ingest", "%s: socket: %s", path, strerror(errno));
        return -1;
    }
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 1)) {
        errorf("ingest", "%s: %s", path, strerror(errno));
        close(s);
        return -1;
    }
    int c;
    while ((c = accept(s, NULL, NULL)) < 0 && errno == EINTR) {
    }
    int e = errno;
    close(s);
    unlink(path);
    if (c < 0) errorf("ingest", "%s: accept: %s", path, strerror(e));
    return c;
}

static int print_json(const char *out, const mtr_ingest_result *r, int rc, double seconds)
{
    json_t *j = json_object();
    if (!j) return EXIT_IO;
    json_object_set_new(j, "out", json_string(out));
    json_object_set_new(j, "ok", json_boolean(rc == 0));
    json_object_set_new(j, "n_frames", json_integer((json_int_t)r->n_frames));
    json_object_set_new(j, "n_written", json_integer((json_int_t)r->n_written));
    json_object_set_new(j, "n_skipped", json_integer((json_int_t)r->n_skipped));
    json_object_set_new(j, "n_tokens", json_integer((json_int_t)r->n_tokens));
    json_object_set_new(j, "bytes_read", json_integer((json_int_t)r->bytes_read));
    json_object_set_new(j, "peak_buffered", json_integer((json_int_t)r->peak_buffered));
    json_object_set_new(j, "peak_frames", json_integer(r->peak_frames));
    json_object_set_new(j, "n_stalls", json_integer((json_int_t)r->n_stalls));
    json_object_set_new(j, "bad_frame", json_boolean(r->bad_frame));
    json_object_set_new(j, "bad_offset", r->bad_frame ? json_integer((json_int_t)r->bad_offset) : json_null());
    if (rc) json_object_set_new(j, "error", json_string(mtr_errmsg()));
    json_object_set_new(j, "seconds", json_real(seconds));
    char *text = json_dumps(j, JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
    json_decref(j);
    int ok = text && printf("%s\n", text) >= 0 && fflush(stdout) == 0;
    free(text);
    return ok ? EXIT_OK : EXIT_IO;
}

int cmd_ingest(int argc, char **argv)
{
    const char *cmd = "ingest";
    mtr_ingest_opts o = MTR_INGEST_OPTS_INIT;
    const char *out = NULL, *input = NULL, *sock = NULL;
    bool quiet = false, json = false;
    int progress = -1;
    o.writer.producer = PROG;

    for (int i = 1; i < argc; i++) {
        const cli_option *opt;
        const char *val;
        int r = cli_next_option(cmd, argc, argv, &i, cli_options, sizeof cli_options / sizeof cli_options[0], &opt, &val);
        if (r == CLI_HELP) {
            ingest_help();
            return EXIT_OK;
        }
        if (r) return r;

        int bad = 0;
        const char *want = "";
        switch (opt->id) {
        case I_OUT: out = val; break;
        case I_INPUT: input = val; break;
        case I_LISTEN: sock = val; break;
        case I_RESUME: o.writer.resume = true; break;
        case I_DTYPE:
            bad = mtr_dtype_parse(&o.writer.stored_dtype, val) != 0;
            o.stored_dtype_set = true;
            want = "bf16, f16 or f32";
            break;
        case I_STORE:
            want = "logits, topk or both";
            o.writer.store_logits = strcmp(val, "topk") != 0;
            o.writer.store_topk = strcmp(val, "logits") != 0;
            bad = strcmp(val, "logits") && strcmp(val, "topk") && strcmp(val, "both");
            break;
        case I_SHARD_BYTES:
            bad = parse_bytes(&o.writer.shard_bytes, val) || o.writer.shard_bytes == 0;
            want = "a positive byte count such as 512M";
            break;
        case I_MODEL_ID: o.model_id = val; break;
        case I_CORPUS_ID: o.writer.corpus_id = val; break;
        case I_RUN_ID: o.writer.run_id = val; break;
        case I_THREADS: {
            uint32_t n = 0;
            bad = parse_u32_in(&n, val, 0, 4096);
            o.writer.n_threads = (int)n;
            want = "an integer in 0..4096 (0 = default)";
            break;
        }
        case I_NO_SYNC: o.writer.sync = false; break;
        case I_BUFFER:
            bad = parse_bytes(&o.buffer_bytes, val) || o.buffer_bytes < MTR_INGEST_MIN_BUFFER ||
                  o.buffer_bytes > ((uint64_t)1 << 40);
            want = "a byte count of at least 64K";
            break;
        case I_MAX_FRAMES: bad = parse_u32_in(&o.max_frames, val, 1, 1u << 20); want = "an integer in 1..1048576"; break;
        case I_QUIET: quiet = true; break;
        case I_PROGRESS: progress = 1; break;
        case I_NO_PROGRESS: progress = 0; break;
        case I_JSON: json = true; break;
        case I_HELP: ingest_help(); return EXIT_OK;
        case I_VERSION: print_version(); return EXIT_OK;
        default: break;
        }
        if (bad) {
            errorf(cmd, "--%s: expected %s, got '%s'", opt->name, want, val);
            return EXIT_USAGE;
        }
    }
    if (!out) {
        errorf(cmd, "--out RUN is required (see --help)");
        return EXIT_USAGE;
    }
    if (input && sock) {
        errorf(cmd, "--input and --listen exclude each other");
        return EXIT_USAGE;
    }
    /* test hook: a slow disk, to exercise back-pressure (not a user option) */
    const char *thr = getenv("MTR_INGEST_THROTTLE_US");
    if (thr) parse_u32_in(&o.throttle_us, thr, 0, 10000000);

    const char *where = "stdin";
    int fd = STDIN_FILENO;
    if (sock) {
        where = sock;
        if ((fd = listen_once(sock)) < 0) return EXIT_IO;
    } else if (input && strcmp(input, "-") != 0) {
        where = input;
        fd = open(input, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            errorf(cmd, "%s: %s", input, strerror(errno));
            return errno == ENOENT ? EXIT_USAGE : EXIT_IO;
        }
    }
    struct stat st;
    /* a bigger pipe means fewer wake-ups of the reader per frame (best effort) */
    if (fstat(fd, &st) == 0 && S_ISFIFO(st.st_mode)) (void)fcntl(fd, F_SETPIPE_SZ, 1 << 20);

    ingest_progress_state ps = {now_seconds(), 0.0, false};
    if (progress < 0) progress = !quiet && isatty(STDERR_FILENO);
    if (progress) {
        o.progress = ingest_progress;
        o.progress_ctx = &ps;
    }
    mtr_ingest_result res;
    int rc = mtr_ingest_run(&res, fd, out, &o);
    double seconds = now_seconds() - ps.t0;
    if (fd != STDIN_FILENO) close(fd);
    if (ps.shown) fputc('\n', stderr);
    if (rc) {
        if (res.bad_frame)
            errorf(cmd, "%s: %s (%llu earlier sequences kept in %s)", where, mtr_errmsg(),
                   (unsigned long long)res.n_written, out);
        else
            mtr_cli_fail(cmd, rc, rc == MTR_EIO || rc == MTR_EHDF5 || rc == MTR_EEXIST || rc == MTR_EMISMATCH ? out : where);
    } else if (!quiet) {
        char b[32];
        format_bytes(b, sizeof b, res.bytes_read);
        fprintf(stderr, "%s ingest: wrote %llu sequences (%llu tokens) to %s from %s of %s, %llu skipped, %.2f s\n",
                PROG, (unsigned long long)res.n_written, (unsigned long long)res.n_tokens, out, b, where,
                (unsigned long long)res.n_skipped, seconds);
    }
    if (json && print_json(out, &res, rc, seconds) != EXIT_OK && !rc) return EXIT_IO;
    return exit_code_for(rc);
}
