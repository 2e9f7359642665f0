#!/usr/bin/python3
"""report.py — a Markdown report of a moetrace results directory (as tests/demo_udhr.sh writes it): the
divergence-from-English curve per layer and its shape, the middle band, accuracy per language, the correlation of
band divergence with accuracy (with its CI and how each p was obtained), the task experts and the effect of every
steering file per language, with the figures notebooks/run.sh drew. Every number is read from the files; nothing
is computed here that the tools did not write, except means over the rows they wrote.

    /usr/bin/python3 notebooks/report.py RESULTS_DIR > RESULTS_DIR/report.md
"""
import glob
import json
import os
import sys


def read_tsv(path):
    """Rows of a moetrace TSV ('#' provenance lines, '#' header line) as dicts."""
    header, rows = None, []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("#"):
                header = line[1:].split("\t")
                continue
            if line and header:
                rows.append(dict(zip(header, line.split("\t"))))
    return rows


def fmt(x, nd=3):
    return "n/a" if x is None else f"{x:.{nd}f}"


def curve(results):
    """{lang: [div per layer 1..L]} and the language-mean curve from tables/div_from_en.tsv."""
    by = {}
    for r in read_tsv(os.path.join(results, "tables", "div_from_en.tsv")):
        try:
            v = float(r["div"])
        except ValueError:
            continue
        by.setdefault(r["lang"], {})[int(r["layer"])] = v
    layers = sorted({l for d in by.values() for l in d})
    mean = [sum(d[l] for d in by.values() if l in d) / max(1, sum(1 for d in by.values() if l in d)) for l in layers]
    return by, layers, mean


def main(argv):
    if len(argv) != 2 or not os.path.isdir(argv[1]):
        print("usage: report.py RESULTS_DIR", file=sys.stderr)
        return 1
    res = argv[1]
    out = []
    w = out.append
    by, layers, mean = curve(res)
    cor = json.load(open(os.path.join(res, "correlate.json"), encoding="utf-8"))
    band = cor["band"]
    results = cor["results"] if isinstance(cor["results"], list) else [cor["results"]]
    acc = [r for r in read_tsv(os.path.join(res, "eval", "base", "accuracy.tsv")) if r.get("metric") == "accuracy"]
    effects = []
    for p in sorted(glob.glob(os.path.join(res, "effects", "*.json"))):
        e = json.load(open(p, encoding="utf-8"))
        for row in e["rows"]:
            effects.append((e.get("intervention") or os.path.basename(p)[:-5], row))

    lo = min(range(len(mean)), key=lambda i: mean[i]) if mean else 0
    w("# moetrace report")
    w("")
    w(f"Results directory: `{os.path.abspath(res)}`. Model: `{cor.get('model', '?')}`. "
      f"Languages: {len(by)}. MoE layers: {len(layers)}.")
    w("")
    w("## Headline")
    w("")
    if mean:
        w(f"- Divergence from English (language mean, entropy-normalised JSD): layer 1 {fmt(mean[0])}, "
          f"minimum {fmt(mean[lo])} at layer {layers[lo]}, last layer {fmt(mean[-1])}.")
    w(f"- Middle band: layers {band['first']}-{band['last']} ({band.get('source', '')}).")
    for r in results:
        bm = r["band_mean"]
        pe, sp = bm["pearson"], bm["spearman"]
        w(f"- Band divergence vs accuracy ({r['task']}, {bm['n_langs']} non-English languages): Pearson r = "
          f"{fmt(pe['r'])} (95% CI {fmt(pe['ci'][0])} to {fmt(pe['ci'][1])}, p = {pe['p']:.3g} by {pe['p_method']}, "
          f"permutation p = {pe['p_perm']:.3g}); Spearman rho = {fmt(sp['r'])} (p = {sp['p']:.3g} by "
          f"{sp['p_method']}).")
    for name, row in effects:
        w(f"- Steering `{name}` ({row['op']}, {row['n_experts']} experts, layers {row['layers']}): mean accuracy over "
          f"non-English languages {fmt(row['baseline'])} -> {fmt(row['steered'])}, gain {fmt(row['gain'])} "
          f"(95% CI {fmt(row['gain_ci'][0])} to {fmt(row['gain_ci'][1])}; {row['n_up']} up, {row['n_down']} down, "
          f"sign-test p = {row['sign_p']:.3g}).")
    w("")
    w("## Divergence from English by layer")
    w("")
    w("| lang | " + " | ".join(str(l) for l in layers) + " |")
    w("|---|" + "---|" * len(layers))
    for lang in sorted(by):
        w(f"| {lang} | " + " | ".join(fmt(by[lang].get(l), 2) for l in layers) + " |")
    w("| **mean** | " + " | ".join(fmt(m, 2) for m in mean) + " |")
    w("")
    w("## Accuracy per language (baseline)")
    w("")
    w("| lang | task | accuracy | n |")
    w("|---|---|---|---|")
    for r in sorted(acc, key=lambda r: -float(r["value"])):
        w(f"| {r['lang']} | {r['task']} | {float(r['value']):.3f} | {r['n']} |")
    w("")
    w("## Correlation per layer")
    w("")
    for r in results:
        w(f"Task `{r['task']}`:")
        w("")
        w("| layer | Pearson r | 95% CI | p | Spearman rho | p |")
        w("|---|---|---|---|---|---|")
        for L in r["layers"]:
            pe, sp = L["pearson"], L["spearman"]
            w(f"| {L['layer']} | {fmt(pe['r'])} | {fmt(pe['ci'][0])} .. {fmt(pe['ci'][1])} | {pe['p']:.3g} | "
              f"{fmt(sp['r'])} | {sp['p']:.3g} |")
        w("")
    if effects:
        w("## Steering effects per language")
        w("")
        langs = sorted({p["lang"] for _, row in effects for p in row["per_lang"]})
        w("| intervention | " + " | ".join(langs) + " |")
        w("|---|" + "---|" * len(langs))
        for name, row in effects:
            g = {p["lang"]: p["gain"] for p in row["per_lang"]}
            w(f"| {name} | " + " | ".join(fmt(g.get(l), 3) for l in langs) + " |")
        w("")
    figs = sorted(glob.glob(os.path.join(res, "figures", "*.png")))
    if figs:
        w("## Figures")
        w("")
        for f in figs:
            w(f"![{os.path.basename(f)}](figures/{os.path.basename(f)})")
            w("")
    w("## Inputs")
    w("")
    for name in ("band.txt", "correlate.json", "experts.tsv", "overlap.tsv", "steer.tsv"):
        if os.path.exists(os.path.join(res, name)):
            w(f"- `{name}`")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
