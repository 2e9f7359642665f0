"""kill_harness.py — crash safety of the trace writers (traces/FORMAT.md §1): moetrace-capture run (native engine
on a tiny checkpoint) and moetrace-capture ingest (a stream from tests/python/make_stream.py), each killed with
SIGKILL at random points drawn from a seeded generator. After every kill:
  - every finished shard reads back bit-exact: each of its sequences equals, by seq_id, the sequence of an
    uninterrupted reference run (metadata, tokens, positions, roles, flags and the stored logit bits);
  - the manifest is consistent: it lists only finished shards, each with its true counts and seq_id range, no
    seq_id twice, the run not marked complete, at most one finished shard left out of it (the one a writer
    killed between rename and manifest update leaves, adopted by --resume); moetrace info --deep passes;
  - --resume (itself killed once at a random point on every other round, then resumed again) finishes the run
    with exactly the reference's sequences: none missing, none twice, all bit-exact, the manifest complete.
Then a reducer run while a capture is writing sees only finished shards: the sequences it summarised are whole
shards, and its tables equal those of a reduce of exactly those shards.
Prints "ok ..." / "not ok ...: why" lines and the kill points tried (time after start, in seconds).
Usage: kill_harness.py --bin BIN --tests TESTS --work DIR [--points N] [--seed S]"""
import argparse
import glob
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import h5py

ap = argparse.ArgumentParser()
ap.add_argument("--bin", required=True)
ap.add_argument("--tests", required=True)
ap.add_argument("--work", required=True)
ap.add_argument("--points", type=int, default=20, help="kill points in all, split between native and ingest")
ap.add_argument("--seed", type=int, default=15)
a = ap.parse_args()
CAP = os.path.join(a.bin, "moetrace-capture")
INFO = os.path.join(a.bin, "moetrace-info")
RED = os.path.join(a.bin, "moetrace-reduce")
PY = sys.executable
MODEL = os.path.join(a.tests, "models", "tiny", "qwen3_moe")
STREAM = os.path.join(a.tests, "python", "make_stream.py")
rng = random.Random(a.seed)
failures = 0


def ok(name):
    print("ok " + name, flush=True)


def not_ok(name, why):
    global failures
    failures += 1
    print("not ok %s: %s" % (name, str(why).replace("\n", " | ")[:600]), flush=True)


def s(x):
    return x.decode() if isinstance(x, bytes) else str(x)


def read_shard(path):
    """{seq_id: record} of one finished shard; a record holds everything stored for the sequence."""
    out = {}
    with h5py.File(path, "r") as f:
        seq = f["seq"]
        ids, off, cnt = seq["seq_id"][()], seq["token_offset"][()], seq["n_tokens"][()]
        unit, lang, ds, flags = seq["unit_id"][()], seq["lang"][()], seq["dataset"][()], seq["flags"][()]
        tok, pos, role = f["tok/token_id"][()], f["tok/position"][()], f["tok/role"][()]
        z = f["router/logits"][()]
        for i, sid in enumerate(ids):
            o, c = int(off[i]), int(cnt[i])
            out[int(sid)] = (s(unit[i]), s(lang[i]), s(ds[i]), int(flags[i]), tok[o:o + c].tobytes(),
                             pos[o:o + c].tobytes(), role[o:o + c].tobytes(), z[o:o + c].tobytes())
    return out


def read_run(run):
    """(records by seq_id, shard file -> its seq_ids, duplicated seq_ids) of the finished shards of a run."""
    recs, by_shard, dups = {}, {}, []
    for p in sorted(glob.glob(os.path.join(run, "shard-*.h5"))):
        r = read_shard(p)
        by_shard[os.path.basename(p)] = sorted(r)
        for k, v in r.items():
            if k in recs:
                dups.append(k)
            recs[k] = v
    return recs, by_shard, dups


def manifest_problems(run, by_shard, closed, n_ref):
    """What is wrong with run.json against the finished shards (an empty list when nothing is)."""
    bad = []
    try:
        m = json.load(open(os.path.join(run, "run.json")))
    except (OSError, ValueError) as e:
        return ["run.json unreadable: %s" % e] if by_shard or closed else []
    listed = [x["file"] for x in m.get("shards", [])]
    if len(set(listed)) != len(listed):
        bad.append("a shard listed twice")
    for x in m.get("shards", []):
        f = x["file"]
        if f not in by_shard:
            bad.append("lists %s, which is not a finished shard" % f)
            continue
        ids = by_shard[f]
        if x["n_sequences"] != len(ids) or (ids and (x.get("seq_id_min") != ids[0] or x.get("seq_id_max") != ids[-1])):
            bad.append("%s: manifest says %s sequences %s..%s, the file holds %d %s..%s" % (
                f, x["n_sequences"], x.get("seq_id_min"), x.get("seq_id_max"), len(ids), ids[:1], ids[-1:]))
    if m.get("n_sequences") != sum(x["n_sequences"] for x in m.get("shards", [])):
        bad.append("n_sequences %s is not the sum over its shards" % m.get("n_sequences"))
    orphans = sorted(set(by_shard) - set(listed))
    if closed:
        if not m.get("complete"):
            bad.append("not marked complete after a normal close")
        if orphans:
            bad.append("finished shards not in the manifest after a normal close: %s" % orphans)
    else:
        if m.get("complete") and (orphans or m.get("n_sequences") != n_ref):
            # complete is fine only when the writer had closed the run and was killed on its way out
            bad.append("marked complete although the writer was killed with the run unfinished")
        if len(orphans) > 1 or (orphans and listed and orphans[0] < max(listed)):
            bad.append("finished shards left out of the manifest: %s (listed up to %s)" % (
                orphans, max(listed) if listed else "none"))
    return bad


def check_state(name, run, ref, closed):
    """Check a run after a kill (closed False) or after a normal end (closed True); returns the seq_ids kept.
    Every sequence, also those a resume wrote, must be bit-exact (a resumed capture equals an uninterrupted one)."""
    if not os.path.isdir(run):
        if closed:
            not_ok(name, "no run directory")
        return set()
    try:
        recs, by_shard, dups = read_run(run)
    except Exception as e:  # a finished shard that does not read back is the failure this harness looks for
        not_ok(name + ": finished shards read back", e)
        return set()
    wrong = [k for k, v in recs.items() if ref.get(k) != v]
    if dups:
        not_ok(name + ": no seq_id twice", "seq_ids %s in two finished shards" % dups[:5])
    if wrong:
        not_ok(name + ": finished shards bit-exact", "%d of %d sequences differ from the reference (seq_ids %s)" % (
            len(wrong), len(recs), sorted(wrong)[:8]))
    bad = manifest_problems(run, by_shard, closed, len(ref))
    if bad:
        not_ok(name + ": manifest consistent", "; ".join(bad))
    info = subprocess.run([INFO, "--deep", run], capture_output=True, text=True)
    try:
        listed = len(json.load(open(os.path.join(run, "run.json"))).get("shards", []))
    except (OSError, ValueError):
        listed = 0
    # a run whose manifest lists no shard yet is refused by info (exit 2, "no finished shard yet"), also when a
    # finished shard awaits adoption
    if info.returncode != 0 and (listed or closed):
        not_ok(name + ": info --deep", "exit %d: %s" % (info.returncode, info.stderr.strip()))
    if closed and set(recs) != set(ref):
        not_ok(name + ": exactly the reference's sequences", "missing %s, extra %s" % (
            sorted(set(ref) - set(recs))[:8], sorted(set(recs) - set(ref))[:8]))
    if closed and not dups and not wrong and not bad and set(recs) == set(ref) and info.returncode == 0:
        ok(name)
    return set(recs)


def killed_after(cmd, delay, stdin=None):
    """Start cmd, SIGKILL it after delay seconds; returns (True if the kill landed, exit code)."""
    p = subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        p.wait(timeout=delay)
        return False, p.returncode
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        p.wait()
        return True, p.returncode


def timed(cmd, **kw):
    t = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, **kw)
    return r, time.monotonic() - t


points = []  # (writer, round, phase, delay, landed, sequences kept)


def kill_rounds(kind, n, start, resume, ref, t_ref):
    """Rounds of: start killed at a random point, check; resume (killed too on odd rounds), check, finish; until
    n kills have landed on a running writer (at most 3n rounds)."""
    landed_total, i = 0, 0
    while landed_total < n and i < 3 * n:
        run = os.path.join(a.work, "%s-%d" % (kind, i))
        d = round(rng.uniform(0.02, 0.9) * t_ref, 3)
        landed, rc = start(run, d)
        landed_total += landed
        kept = check_state("%s kill %d at %.3f s" % (kind, i, d), run, ref, closed=not landed)
        points.append((kind, i, "run", d, landed, len(kept)))
        if not landed and rc != 0:
            not_ok("%s round %d" % (kind, i), "the writer exited %s before the kill" % rc)
        if i % 2 and landed and landed_total < n:
            d2 = round(rng.uniform(0.02, 0.9) * t_ref, 3)
            landed2, _ = resume(run, d2)
            landed_total += landed2
            kept2 = check_state("%s kill %d, resume killed at %.3f s" % (kind, i, d2), run, ref, closed=not landed2)
            points.append((kind, i, "resume", d2, landed2, len(kept2)))
        r = resume(run, None)
        if r[1] != 0:
            not_ok("%s round %d: resume" % (kind, i), "exit %s: %s" % (r[1], r[2] if len(r) > 2 else ""))
        else:
            check_state("%s round %d (kill at %.3f s): --resume ends with exactly the reference's %d sequences, "
                        "bit-exact" % (kind, i, d, len(ref)), run, ref, closed=True)
        i += 1
    if landed_total < n:
        not_ok("%s kill points" % kind, "only %d of %d kills landed on a running writer" % (landed_total, n))


# ---- native capture -----------------------------------------------------------------------------------------
n_native = (a.points + 1) // 2
n_ingest = a.points - n_native
os.makedirs(a.work, exist_ok=True)
corpus = os.path.join(a.work, "corpus.jsonl")
rows = [json.loads(x) for x in open(os.path.join(a.tests, "data", "udhr-mini.jsonl"), encoding="utf-8")]
with open(corpus, "w", encoding="utf-8") as f:
    for r in rows[:120]:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
RUN_ARGS = ["--model", MODEL, "--corpus", corpus, "--threads", "1", "--batch", "256", "--shard-bytes", "40K",
            "--quiet"]
r, t_ref = timed([CAP, "run", *RUN_ARGS, "--out", os.path.join(a.work, "native-ref")])
if r.returncode != 0:
    not_ok("native reference run", r.stderr.decode()[:300])
    sys.exit(1)
ref_native, ref_shards, _ = read_run(os.path.join(a.work, "native-ref"))
ok("native reference run: %d sequences in %d shards, %.2f s" % (len(ref_native), len(ref_shards), t_ref))


def native_start(run, d):
    return killed_after([CAP, "run", *RUN_ARGS, "--out", run], d)


def native_resume(run, d):
    cmd = [CAP, "run", *RUN_ARGS, "--out", run, "--resume"]
    if d is not None:
        return killed_after(cmd, d)
    r = subprocess.run(cmd, capture_output=True, text=True)
    return False, r.returncode, r.stderr.strip()[:300]


kill_rounds("native", n_native, native_start, native_resume, ref_native, t_ref)

# ---- ingest -------------------------------------------------------------------------------------------------
N_STREAM, SLOW = 150, 0.008
stream = os.path.join(a.work, "stream")
subprocess.run([PY, STREAM, str(N_STREAM), "--out", stream], check=True)
ING_ARGS = ["--shard-bytes", "20K", "--quiet"]
# the reference: the same paced producer piped in, uninterrupted (its duration scales the kill points)
prod = subprocess.Popen([PY, STREAM, str(N_STREAM), "--slow", str(SLOW)], stdout=subprocess.PIPE)
t0 = time.monotonic()
r = subprocess.run([CAP, "ingest", "--out", os.path.join(a.work, "ingest-ref"), *ING_ARGS], stdin=prod.stdout,
                   capture_output=True)
t_ingest = time.monotonic() - t0
prod.stdout.close()
prod.wait()
if r.returncode != 0:
    not_ok("ingest reference run", r.stderr.decode()[:300])
    sys.exit(1)
ref_ingest, ref_ishards, _ = read_run(os.path.join(a.work, "ingest-ref"))
ok("ingest reference run: %d sequences in %d shards, %.2f s" % (len(ref_ingest), len(ref_ishards), t_ingest))


def ingest_killed(cmd, d):
    """A slow producer piped into ingest; ingest is killed after d seconds, then the producer is stopped."""
    prod = subprocess.Popen([PY, STREAM, str(N_STREAM), "--slow", str(SLOW)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    try:
        return killed_after(cmd, d, stdin=prod.stdout)
    finally:
        prod.stdout.close()
        prod.kill()
        prod.wait()


def ingest_start(run, d):
    return ingest_killed([CAP, "ingest", "--out", run, *ING_ARGS], d)


def ingest_resume(run, d):
    cmd = [CAP, "ingest", "--out", run, "--resume", *ING_ARGS]
    if d is not None:
        return ingest_killed(cmd, d)
    r = subprocess.run(cmd + ["--input", stream], capture_output=True, text=True)
    return False, r.returncode, r.stderr.strip()[:300]


kill_rounds("ingest", n_ingest, ingest_start, ingest_resume, ref_ingest, t_ingest)

# ---- a reducer beside a running capture ---------------------------------------------------------------------
run = os.path.join(a.work, "reduce-live")
cap = subprocess.Popen([CAP, "run", *RUN_ARGS, "--out", run], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
deadline = time.monotonic() + 60
while time.monotonic() < deadline and len(glob.glob(os.path.join(run, "shard-*.h5"))) < 2 and cap.poll() is None:
    time.sleep(0.02)
red = subprocess.run([RED, run, "-o", os.path.join(a.work, "reduce-live-out"), "--allow-partial", "--threads",
                      "1", "-q"], capture_output=True, text=True)
still_running = cap.poll() is None
cap.wait()
if red.returncode != 0:
    not_ok("reduce beside a running capture", "exit %d: %s" % (red.returncode, red.stderr.strip()))
else:
    with h5py.File(os.path.join(a.work, "reduce-live-out", "summaries.h5"), "r") as f:
        seen = set(int(x) for x in f["seq/seq_id"][()])
    _, final_shards, _ = read_run(run)
    whole = [sh for sh, ids in final_shards.items() if set(ids) <= seen]
    torn = [sh for sh, ids in final_shards.items() if set(ids) & seen and not set(ids) <= seen]
    covered = set(x for sh in whole for x in final_shards[sh])
    if torn or covered != seen:
        not_ok("reduce beside a running capture sees whole shards", "shards read in part: %s" % torn)
    else:
        # the same shards, alone, with a manifest listing only them: the tables must be identical
        snap = os.path.join(a.work, "reduce-snap")
        os.makedirs(snap)
        m = json.load(open(os.path.join(run, "run.json")))
        m["shards"] = [x for x in m["shards"] if x["file"] in whole]
        m["n_sequences"] = sum(x["n_sequences"] for x in m["shards"])
        m["n_tokens"] = sum(x["n_tokens"] for x in m["shards"])
        m["complete"] = False
        json.dump(m, open(os.path.join(snap, "run.json"), "w"))
        for sh in whole:
            os.link(os.path.join(run, sh), os.path.join(snap, sh))
        r2 = subprocess.run([RED, snap, "-o", os.path.join(a.work, "reduce-snap-out"), "--allow-partial",
                             "--threads", "1", "-q"], capture_output=True, text=True)
        differ = []
        for t in sorted(glob.glob(os.path.join(a.work, "reduce-live-out", "*.tsv"))):
            u = os.path.join(a.work, "reduce-snap-out", os.path.basename(t))
            body = [x for x in open(t) if not x.startswith("#")]
            if not os.path.exists(u) or body != [x for x in open(u) if not x.startswith("#")]:
                differ.append(os.path.basename(t))
        if r2.returncode != 0 or differ:
            not_ok("reduce beside a running capture equals a reduce of the shards it saw",
                   "exit %d %s; tables differ: %s" % (r2.returncode, r2.stderr.strip()[:200], differ))
        else:
            ok("reduce beside a running capture (%s) read %d whole finished shards (%d sequences), no partial; "
               "its tables equal a reduce of exactly those shards" % (
                   "still writing" if still_running else "finished meanwhile", len(whole), len(seen)))

print("kill points (seed %d): %s" % (a.seed, "; ".join(
    "%s#%d %s %.3fs %s kept %d" % (k, i, ph, d, "killed" if landed else "finished first", kept)
    for k, i, ph, d, landed, kept in points)))
landed = sum(1 for p in points if p[4])
print("kill points landed: %d of %d tried" % (landed, len(points)))
sys.exit(1 if failures else 0)
