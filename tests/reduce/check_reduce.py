"""Independent checks of moetrace-reduce (run with Debian's /usr/bin/python3, HDF5_PLUGIN_PATH set).

    check_reduce.py numpy RUN SUMMARIES.h5 TABLES_DIR   NumPy reference of phase 1 and of the main tables
    check_reduce.py same A.h5 B.h5 [--tol]             two summaries files agree (bitwise, or to --tol)
    check_reduce.py planted RUN TABLES_DIR             the tables recover the synthetic run's planted truth

Each prints one line per check ("ok ..." or "not ok ...: why") and exits 1 if any check failed.
"""
import json
import math
import os
import sys

import h5py
import numpy as np

FAILED = []


def check(name, cond, why=""):
    if cond:
        print(f"ok {name}")
    else:
        print(f"not ok {name}: {why}")
        FAILED.append(name)


def text(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def read_tsv(path):
    rows, header = [], None
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("#"):
                header = line[1:].split("\t")
                continue
            rows.append(dict(zip(header, line.split("\t"))))
    return rows


def load_run(run):
    """Every sequence of a run: metadata, roles and f64 logits (n_tokens, L, E)."""
    with open(os.path.join(run, "run.json")) as f:
        man = json.load(f)
    seqs = []
    for sh in man["shards"]:
        with h5py.File(os.path.join(run, sh["file"]), "r") as h:
            lg = h["router/logits"]
            dt = text(lg.attrs["dtype"])
            raw = lg[...]
            if dt == "bf16":
                z = (raw.astype(np.uint32) << 16).view(np.float32)
            elif dt == "f16":
                z = raw.view(np.float16).astype(np.float32)
            else:
                z = raw.astype(np.float32)
            roles = h["tok/role"][...]
            s = h["seq"]
            for i in range(len(s["seq_id"])):
                o, n = int(s["token_offset"][i]), int(s["n_tokens"][i])
                seqs.append(dict(seq_id=int(s["seq_id"][i]), unit=text(s["unit_id"][i]), lang=text(s["lang"][i]),
                                 dataset=text(s["dataset"][i]), z=z[o:o + n].astype(np.float64),
                                 roles=roles[o:o + n]))
            top_k = int(h.attrs["top_k"])
    return seqs, top_k


def entropy(p):
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def summarise(seq, k):
    z = seq["z"]
    finite = np.isfinite(z).reshape(len(z), -1).all(axis=1)
    z = z[finite]
    T, L, E = z.shape
    p = np.exp(z - z.max(axis=2, keepdims=True))
    p /= p.sum(axis=2, keepdims=True)
    q = p.mean(axis=0)
    logp = np.where(p > 0, np.log(np.where(p > 0, p, 1)), 0)
    tent = (-(p * logp).sum(axis=2)).mean(axis=0)
    order = np.argsort(-z, axis=2, kind="stable")[:, :, :k]  # ties: lower index first
    counts = np.zeros((L, E), np.int64)
    for l in range(L):
        np.add.at(counts[l], order[:, l, :].ravel(), 1)
    jac = np.full(L, np.nan)
    if T > 1:
        for l in range(L):
            sets = np.zeros((T, E), bool)
            sets[np.arange(T)[:, None], order[:, l, :]] = True
            inter = sets.astype(np.int64) @ sets.T.astype(np.int64)
            iu = np.triu_indices(T, 1)
            jac[l] = (inter[iu] / (2 * k - inter[iu])).mean()
    return dict(q=q, counts=counts, ent=np.array([entropy(q[l]) for l in range(L)]), tent=tent, jac=jac,
                n_used=T, n_bad=int((~finite).sum()))


def jsd_norm(p, q):
    m = 0.5 * (p + q)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log(p / m), 0).sum()
        kl_q = np.where(q > 0, q * np.log(q / m), 0).sum()
    jsd = 0.5 * kl_p + 0.5 * kl_q
    return jsd / max(math.log(len(p)) - 0.5 * (entropy(p) + entropy(q)), 1e-6)


def cmd_numpy(run, summaries, tables):
    seqs, k = load_run(run)
    ref = {s["seq_id"]: summarise(s, k) for s in seqs}
    meta = {s["seq_id"]: s for s in seqs}
    with h5py.File(summaries, "r") as h:
        ids = h["seq/seq_id"][...]
        q, a = h["importance"][...], h["counts"][...]
        ent, tent, jac = h["entropy"][...], h["token_entropy"][...], h["jaccard"][...]
        used, bad = h["seq/n_used"][...], h["seq/n_nonfinite"][...]
    check("numpy: same sequences", sorted(ids.tolist()) == sorted(ref), f"{len(ids)} vs {len(ref)}")
    worst = dict(q=0.0, ent=0.0, tent=0.0, jac=0.0)
    counts_ok = used_ok = True
    for i, sid in enumerate(ids):
        r = ref[int(sid)]
        counts_ok &= bool((a[i] == r["counts"]).all())
        used_ok &= int(used[i]) == r["n_used"] and int(bad[i]) == r["n_bad"]
        worst["q"] = max(worst["q"], float(np.max(np.abs(q[i] - r["q"]) / (np.abs(r["q"]) + 1e-12))))
        worst["ent"] = max(worst["ent"], float(np.max(np.abs(ent[i] - r["ent"]))))
        worst["tent"] = max(worst["tent"], float(np.max(np.abs(tent[i] - r["tent"]))))
        if r["n_used"] > 1:
            worst["jac"] = max(worst["jac"], float(np.max(np.abs(jac[i] - r["jac"]))))
    check("numpy: top-k activation counts identical", counts_ok)
    check("numpy: tokens used / non-finite identical", used_ok)
    check("numpy: importance q within 1e-5 relative", worst["q"] < 1e-5, f"worst {worst['q']:.3g}")
    check("numpy: entropy of q within 1e-6", worst["ent"] < 1e-6, f"worst {worst['ent']:.3g}")
    check("numpy: token entropy within 1e-5", worst["tent"] < 1e-5, f"worst {worst['tent']:.3g}")
    check("numpy: Jaccard (all pairs) within 1e-12", worst["jac"] < 1e-12, f"worst {worst['jac']:.3g}")

    # tables over the generic dataset: divergence from English, entropy profile, frequencies
    base = "flores"
    by = {}
    for sid, s in meta.items():
        if s["dataset"] == base and ref[sid]["n_used"] > 0:
            by[(s["lang"], s["unit"])] = ref[sid]
    langs = sorted({l for l, _ in by})
    L = next(iter(ref.values()))["q"].shape[0]
    div_rows = read_tsv(os.path.join(tables, "div_from_en.tsv"))
    ours = {(r["lang"], int(r["layer"])): (float(r["div"]), int(r["n_pairs"])) for r in div_rows}
    worst_div, pairs_ok = 0.0, True
    for lang in langs:
        if lang == "eng_Latn":
            continue
        units = [u for (l, u) in by if l == lang and ("eng_Latn", u) in by]
        for l in range(L):
            d = np.mean([jsd_norm(by[("eng_Latn", u)]["q"][l], by[(lang, u)]["q"][l]) for u in units])
            got, n = ours[(lang, l + 1)]
            worst_div = max(worst_div, abs(got - d))
            pairs_ok &= n == len(units)
    check("numpy: div_from_en within 1e-6", worst_div < 1e-6, f"worst {worst_div:.3g}")
    check("numpy: div_from_en pair counts", pairs_ok)
    ent_rows = {(r["lang"], int(r["layer"])): float(r["entropy"]) for r in read_tsv(os.path.join(tables, "entropy.tsv"))}
    worst_e = max(abs(ent_rows[(lang, l + 1)] - np.mean([v["ent"][l] for (lg, _), v in by.items() if lg == lang]))
                  for lang in langs for l in range(L))
    check("numpy: entropy.tsv within 1e-6", worst_e < 1e-6, f"worst {worst_e:.3g}")
    freq = {(r["dataset"], r["lang"], int(r["layer"]), int(r["expert"])): float(r["freq"])
            for r in read_tsv(os.path.join(tables, "freq.tsv"))}
    slices = {}
    for sid, s in meta.items():
        if ref[sid]["n_used"] > 0:
            slices.setdefault((s["dataset"], s["lang"]), []).append(ref[sid]["counts"] / ref[sid]["n_used"])
    worst_f = 0.0
    for (d, lang), fs in slices.items():
        f = np.mean(fs, axis=0)
        for l in range(L):
            for e in range(f.shape[1]):
                worst_f = max(worst_f, abs(freq[(d, lang, l + 1, e)] - f[l, e]))
    check("numpy: freq.tsv within 1e-12", worst_f < 1e-12, f"worst {worst_f:.3g}")


def cmd_same(a, b, tol):
    with h5py.File(a, "r") as x, h5py.File(b, "r") as y:
        check("same n_sequences", int(x.attrs["n_sequences"]) == int(y.attrs["n_sequences"]) == len(x["seq/seq_id"]),
              f'{int(x.attrs["n_sequences"])} vs {int(y.attrs["n_sequences"])}')
        check("no row_offset (not a rank's part)", "row_offset" not in x.attrs and "row_offset" not in y.attrs)
        for name in ("seq/seq_id", "seq/n_tokens", "seq/n_used", "seq/n_nonfinite", "seq/jaccard_pairs", "counts"):
            check(f"same {name}", np.array_equal(x[name][...], y[name][...]))
        for name in ("seq/unit_id", "seq/lang", "seq/dataset"):
            check(f"same {name}", [text(v) for v in x[name][...]] == [text(v) for v in y[name][...]])
        for name in ("importance", "entropy", "token_entropy", "jaccard"):
            u, v = x[name][...], y[name][...]
            if tol == 0:
                ok = np.array_equal(u, v, equal_nan=True)
                check(f"same {name} (bitwise)", ok, f"max diff {np.nanmax(np.abs(u - v)) if u.shape == v.shape else 'shape'}")
            else:
                d = np.nanmax(np.abs(u - v) / (np.abs(v) + 1e-12)) if u.size else 0.0
                check(f"same {name} (rel {tol:g})", u.shape == v.shape and d <= tol and
                      np.array_equal(np.isnan(u), np.isnan(v)), f"max rel diff {d:.3g}")


def cmd_planted(run, tables):
    with open(os.path.join(run, "truth.json")) as f:
        t = json.load(f)
    L = t["params"]["layers"]
    lo, hi = t["band"]
    div = {}
    for r in read_tsv(os.path.join(tables, "div_from_en.tsv")):
        div.setdefault(r["lang"], [0.0] * L)[int(r["layer"]) - 1] = float(r["div"])
    order = t["expected_order"]["divergence_from_english_in_band"]
    band_mean = {l: np.mean(v[lo - 1:hi]) for l, v in div.items()}
    got = sorted(band_mean, key=band_mean.get)
    check("planted: languages ordered by alignment strength (band divergence)", got == order, f"{got} vs {order}")
    mean_curve = np.mean([div[l] for l in div], axis=0)
    ends = min(mean_curve[0], mean_curve[-1])
    check("planted: U-shape (both ends above the band)", ends > 1.5 * np.mean(mean_curve[lo - 1:hi]),
          f"ends {mean_curve[0]:.3f}/{mean_curve[-1]:.3f}, band {np.mean(mean_curve[lo-1:hi]):.3f}")
    # the band: the longest run of layers below min + 0.5 (max - min) of the language-mean curve
    thr = mean_curve.min() + 0.5 * (mean_curve.max() - mean_curve.min())
    best, run_start, b = (0, 0, 0), None, None
    for i, v in enumerate(list(mean_curve) + [math.inf]):
        if v < thr and run_start is None:
            run_start = i
        elif v >= thr and run_start is not None:
            if i - run_start > best[0]:
                best = (i - run_start, run_start + 1, i)
            run_start = None
    check("planted: detected band within 2 layers of the planted band",
          abs(best[1] - lo) <= 2 and abs(best[2] - hi) <= 2, f"detected {best[1]}-{best[2]}, planted {lo}-{hi}")
    # task experts: the largest Delta of math:English against flores:English in band layers are the planted ones
    delta = {}
    for r in read_tsv(os.path.join(tables, "delta.tsv")):
        if r["dataset"] == "math" and r["lang"] == "eng_Latn":
            delta[(int(r["layer"]), int(r["expert"]))] = float(r["delta"])
    planted = {tuple(p) for p in t["task_experts"]["math"]}
    per_layer = len(planted) // (hi - lo + 1)
    found = set()
    for l in range(lo, hi + 1):
        cand = sorted((e for (ll, e) in delta if ll == l), key=lambda e: (-delta[(l, e)], e))[:per_layer]
        found |= {(l, e) for e in cand}
    check("planted: task experts recovered from Delta (math vs flores, English)", found == planted,
          f"missed {sorted(planted - found)[:5]}")
    # language-specific experts at the first layer: each language's top-k frequent experts are its own set
    top = {}
    for r in read_tsv(os.path.join(tables, "top_experts.tsv")):
        if int(r["layer"]) == 1:
            top.setdefault(r["lang"], []).append(int(r["expert"]))
    k = t["params"]["top_k"]
    ok, why = True, ""
    for lang in t["languages"]:
        own = lang.get("own_experts") or lang.get("own")
        if own is None:
            continue
        own1 = set(own[0])
        got1 = set(top[lang["lang"]][:len(own1)])
        if own1 != got1:
            ok, why = False, f"{lang['lang']}: {sorted(got1)} vs planted {sorted(own1)}"
    check("planted: language-specific experts at layer 1", ok and k > 0, why)


def main(argv):
    if len(argv) >= 4 and argv[0] == "numpy":
        cmd_numpy(argv[1], argv[2], argv[3])
    elif len(argv) >= 3 and argv[0] == "same":
        tol = float(argv[argv.index("--tol") + 1]) if "--tol" in argv else 0.0
        cmd_same(argv[1], argv[2], tol)
    elif len(argv) >= 3 and argv[0] == "planted":
        cmd_planted(argv[1], argv[2])
    else:
        raise SystemExit(__doc__)
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main(sys.argv[1:])
