#!/usr/bin/python3
"""oracle.py — an independent check of moetrace-stats against scipy/numpy (run with /usr/bin/python3).

  oracle.py correlate TABLES_DIR ACCURACY_TSV STATS_JSON [english]
      recompute every layer's and the band mean's Pearson r / p, Spearman rho / p (scipy.stats), the bootstrap CIs
      and permutation p-values (numpy's MT19937 with the legacy seeding GSL's mt19937 also uses, indices drawn as
      gsl_rng_uniform_int does, shuffles as gsl_ran_shuffle does) and compare with the JSON of `correlate --json`.
      Up to 10 languages the permutation p-values and Spearman's p are exact: a brute-force enumeration of all n!
      orderings (itertools, numpy), independent of the C walk; above, scipy's t-based p and the seeded shuffles.
  oracle.py effect BASE_TSV STEERED_TSV EFFECT_JSON [english]
      recompute the mean gain, its paired bootstrap CI and the sign test of `effect --json`.

Prints "ok" or one line per mismatch and exits 1.
"""
import itertools
import json
import math
import sys

import numpy as np
from scipy import stats

PERM_TOL = 1e-12
EXACT_MAX_N = 10


class Gsl:
    """gsl_rng_mt19937 seeded with seed mod 2^32, and the two GSL draws the C code uses."""

    def __init__(self, seed):
        self.bg = np.random.MT19937(0)
        self.bg._legacy_seeding(seed & 0xFFFFFFFF)
        self.buf = np.empty(0, dtype=np.uint64)
        self.pos = 0

    def raw(self):
        if self.pos == len(self.buf):
            self.buf = self.bg.random_raw(1 << 16)
            self.pos = 0
        v = int(self.buf[self.pos])
        self.pos += 1
        return v

    def uniform_int(self, n):
        scale = 0xFFFFFFFF // n
        while True:
            k = self.raw() // scale
            if k < n:
                return k

    def indices(self, n, count):
        """count draws of uniform_int(n), vectorised: rejections are skipped in order, as in the loop."""
        scale = 0xFFFFFFFF // n
        out = np.empty(0, dtype=np.int64)
        while len(out) < count:
            need = count - len(out)
            if self.pos == len(self.buf):
                self.buf = self.bg.random_raw(max(1 << 16, need + 64))
                self.pos = 0
            chunk = self.buf[self.pos:self.pos + need]
            self.pos += len(chunk)
            k = (chunk // scale).astype(np.int64)
            out = np.concatenate([out, k[k < n]])
        return out[:count]


def tsv(path):
    rows, cols = [], None
    with open(path) as f:
        lines = [l.rstrip("\n") for l in f if l.strip()]
    first = next(i for i, l in enumerate(lines) if not l.startswith("#"))
    cols = lines[first - 1][1:].split("\t")
    for l in lines[first:]:
        if not l.startswith("#"):
            rows.append(dict(zip(cols, l.split("\t"))))
    return rows


def pearson(x, y):
    if np.all(x == x[0]) or np.all(y == y[0]):
        return math.nan
    return float(np.clip(np.corrcoef(x, y)[0, 1], -1, 1))


def rank_rows(X):
    """Average ranks (1-based, ties averaged, as scipy.stats.rankdata) of each row, by pairwise comparison."""
    less = (X[:, None, :] < X[:, :, None]).sum(axis=2)
    equal = (X[:, None, :] == X[:, :, None]).sum(axis=2)
    return less + (equal + 1) / 2.0


def pearson_rows(X, Y):
    """Pearson r of each row pair; NaN where a row is constant (as the C code skips those resamples)."""
    const = np.all(X == X[:, :1], axis=1) | np.all(Y == Y[:, :1], axis=1)
    xm = X - X.mean(axis=1, keepdims=True)
    ym = Y - Y.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xm * ym).sum(axis=1) / np.sqrt((xm * xm).sum(axis=1) * (ym * ym).sum(axis=1))
    r = np.clip(r, -1, 1)
    r[const] = np.nan
    return r


def percentile_ci(v, level):
    if len(v) == 0:
        return math.nan, math.nan
    a = 0.5 * (1 - level)
    lo, hi = np.percentile(np.asarray(v), [100 * a, 100 * (1 - a)])
    return float(lo), float(hi)


def exact_perm_p(x, y):
    """Two-sided exact permutation p of Pearson r and Spearman rho: every one of the n! orderings of y, each r
    recomputed from scratch (numpy), |r_perm| >= |r| - 1e-12 counted; chunks of 50000 orderings."""
    n = len(x)
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    ap, asr = abs(pearson(x, y)) - PERM_TOL, abs(pearson(rx, ry)) - PERM_TOL
    hp = hs = total = 0
    it = itertools.permutations(range(n))
    while True:
        P = np.array(list(itertools.islice(it, 50000)), dtype=np.int64)
        if len(P) == 0:
            break
        hp += int((np.abs(pearson_rows(np.tile(x, (len(P), 1)), y[P])) >= ap).sum())
        hs += int((np.abs(pearson_rows(np.tile(rx, (len(P), 1)), ry[P])) >= asr).sum())
        total += len(P)
    assert total == math.factorial(n)
    return hp / total, hs / total, total


def correlate(x, y, seed, n_boot, n_perm, level, perms):
    n = len(x)
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    out = {"pearson": {}, "spearman": {}}
    pr, sr = stats.pearsonr(x, y), stats.spearmanr(x, y)
    out["pearson"].update(r=float(pr.statistic), p=float(pr.pvalue), p_method="t")
    out["spearman"].update(r=float(sr.statistic), p=float(sr.pvalue), p_method="t")
    idx = Gsl(seed).indices(n, n_boot * n).reshape(n_boot, n)
    gx, gy = x[idx], y[idx]
    bp = pearson_rows(gx, gy)
    bs = pearson_rows(rank_rows(gx), rank_rows(gy))
    out["pearson"]["ci"] = percentile_ci(bp[~np.isnan(bp)], level)
    out["spearman"]["ci"] = percentile_ci(bs[~np.isnan(bs)], level)
    if n <= EXACT_MAX_N:
        pp, ps, total = exact_perm_p(x, y)
        out["pearson"].update(p_perm=pp, p_perm_method="exact", n_perm=total)
        out["spearman"].update(p=ps, p_method="exact", p_perm=ps, p_perm_method="exact", n_perm=total)
        return out
    ap = abs(pearson(x, y)) - PERM_TOL
    asr = abs(pearson(rx, ry)) - PERM_TOL
    P = np.array(perms)
    hp = int((np.abs(pearson_rows(np.tile(x, (len(P), 1)), y[P])) >= ap).sum())
    hs = int((np.abs(pearson_rows(np.tile(rx, (len(P), 1)), ry[P])) >= asr).sum())
    out["pearson"].update(p_perm=(hp + 1) / (n_perm + 1), p_perm_method="monte-carlo", n_perm=n_perm)
    out["spearman"].update(p_perm=(hs + 1) / (n_perm + 1), p_perm_method="monte-carlo", n_perm=n_perm)
    return out


def permutations(n, seed, count):
    g = Gsl(seed)
    perm = list(range(n))
    res = []
    for _ in range(count):
        for i in range(n - 1, 0, -1):
            j = g.uniform_int(i + 1)
            perm[i], perm[j] = perm[j], perm[i]
        res.append(np.array(perm))
    return res


def close(a, b, rel=1e-6, abs_=1e-9):
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= abs_ + rel * abs(b)


def check_correlate(tables, acc_path, out_path, english):
    res = json.load(open(out_path))
    s = res["settings"]
    seed, nb, npm, level = s["seed"], s["bootstrap"], s["permutations"], s["level"]
    band = res["band"]
    div = {}
    for r in tsv(tables + "/div_from_en.tsv"):
        div.setdefault(r["lang"], {})[int(r["layer"])] = float(r["div"])
    acc = {}
    for r in tsv(acc_path):
        acc[(r["lang"], r["task"])] = float(r["value"])
    bad = []
    for task in res["results"]:
        langs = task["languages"]
        y = np.array([acc[(g, task["task"])] for g in langs])
        perms = permutations(len(langs), seed + 1, npm) if len(langs) > EXACT_MAX_N else None
        layers = task["layers"] + [task["band_mean"]]
        for row in layers:
            if row["layer"] == "band":
                x = np.array([np.mean([div[g][l] for l in range(band["first"], band["last"] + 1)]) for g in langs])
            else:
                x = np.array([div[g][row["layer"]] for g in langs])
            want = correlate(x, y, seed, nb, npm, level, perms)
            for k in ("pearson", "spearman"):
                got = row[k]
                checks = [("r", got["r"], want[k]["r"]), ("p", got["p"], want[k]["p"]),
                          ("ci_lo", got["ci"][0], want[k]["ci"][0]), ("ci_hi", got["ci"][1], want[k]["ci"][1]),
                          ("p_perm", got["p_perm"], want[k]["p_perm"])]
                for name, g, w in checks:
                    if not close(g, w):
                        bad.append(f"{task['task']} layer {row['layer']} {k} {name}: got {g}, scipy/numpy {w}")
                for name in ("p_method", "p_perm_method", "n_perm"):
                    if got.get(name) != want[k][name]:
                        bad.append(f"{task['task']} layer {row['layer']} {k} {name}: got {got.get(name)}, "
                                   f"want {want[k][name]}")
    return bad


def check_effect(base, steered, out_path, english):
    res = json.load(open(out_path))
    seed, nb, level = res["bootstrap"]["seed"], res["bootstrap"]["resamples"], res["bootstrap"]["level"]
    b = {(r["lang"], r["task"]): float(r["value"]) for r in tsv(base)}
    s = {(r["lang"], r["task"]): float(r["value"]) for r in tsv(steered)}
    bad = []
    for row in res["rows"]:
        keys = [k for k in b if k[1] == row["task"] and k[0] != english]
        g = np.array([s[k] - b[k] for k in keys])
        idx = Gsl(seed).indices(len(g), nb * len(g)).reshape(nb, len(g))
        means = g[idx].mean(axis=1)
        lo, hi = percentile_ci(means, level)
        up, down = int((g > 0).sum()), int((g < 0).sum())
        sp = stats.binomtest(up, up + down, 0.5).pvalue if up + down else 1.0
        for name, got, want in [("gain", row["gain"], float(g.mean())), ("ci_lo", row["gain_ci"][0], lo),
                                ("ci_hi", row["gain_ci"][1], hi), ("sign_p", row["sign_p"], sp),
                                ("baseline", row["baseline"], float(np.mean([b[k] for k in keys]))),
                                ("steered", row["steered"], float(np.mean([s[k] for k in keys])))]:
            if not close(got, want):
                bad.append(f"{row['task']} {name}: got {got}, numpy/scipy {want}")
    return bad


def main():
    what = sys.argv[1]
    english = sys.argv[5] if len(sys.argv) > 5 else "eng_Latn"
    if what == "correlate":
        bad = check_correlate(sys.argv[2], sys.argv[3], sys.argv[4], english)
    elif what == "effect":
        bad = check_effect(sys.argv[2], sys.argv[3], sys.argv[4], english)
    else:
        sys.exit("usage: oracle.py correlate|effect ...")
    for b in bad[:20]:
        print(b)
    if bad:
        sys.exit(1)
    print("ok")


if __name__ == "__main__":
    main()
