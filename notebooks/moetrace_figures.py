"""The paper's figures from moetrace outputs: loaders for the moetrace-reduce tables (reduce/SUMMARIES.md) and the
moetrace-stats outputs (band.txt, correlate.json, experts.tsv, overlap.tsv, steering JSON, effects/*.json), and one
function per figure that returns a matplotlib Figure. The notebooks in this directory call these; tests compare the
plotted numbers with the TSVs. Layers are shown 1-based, as in the TSVs; experts 0-based. Headless: the Agg
backend, no pyplot.

One band for every figure: the middle band comes from one place (MOETRACE_BAND, else the band file band.txt or
band.json that `moetrace-stats band` wrote into the results directory, else correlate.json, else the model
profile). Figures of moetrace-stats outputs computed with a band (correlate.json, experts.tsv, overlap.tsv, the
steering files) check that it is that band and refuse to draw otherwise (BandMismatch): run those steps with
`--band RESULTS/band.txt`.

Results directory layout (what `make demo` writes; every file optional, a figure whose input is missing is
skipped):
  tables/                 moetrace-reduce tables (div_from_en.tsv, div_pairwise.tsv, entropy.tsv, ...)
  band.txt | band.json    moetrace-stats band (the one band)
  correlate.json          moetrace-stats correlate --json --band band.txt
  experts.tsv             moetrace-stats experts --band band.txt
  overlap.tsv             moetrace-stats overlap --band band.txt (TSV, or overlap.json from --json)
  steer/NAME.json         moetrace-stats steer --band band.txt --out steer (task, outside_band, multilingual, ...)
  run/accuracy.tsv        accuracies (or the file correlate.json names; MOETRACE_ACCURACY overrides)
  effects/NAME.json       moetrace-stats effect --json --baseline BASE --steered STEERED --steer steer/NAME.h5,
                          one per steering file (NAME = its intervention: task, outside_band, multilingual,
                          random, deactivate); the steered accuracies behind them may live anywhere

Command line (no Jupyter needed):
  moetrace_figures.py draw RESULTS [FIGURES]      draw every figure
  moetrace_figures.py check-clean NOTEBOOK...     exit 1 if a notebook holds outputs or execution counts
  moetrace_figures.py strip NOTEBOOK...           remove outputs and execution counts in place
"""
import json
import math
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless whatever the kernel asks for; figures are Figure objects, never pyplot windows
import numpy as np  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

HERE = Path(__file__).resolve().parent
ENGLISH = "eng_Latn"

# figure name -> (function name, what it shows); the notebooks and `draw` use these names for the files
FIGURES = {
    "fig1_divergence": ("fig_divergence", "routing divergence from English per layer (U-shape), middle band shaded"),
    "fig2_pairwise": ("fig_pairwise", "pairwise language divergence at an early, a middle and a late layer"),
    "fig3_entropy_jaccard": ("fig_profiles", "routing entropy and token-to-token Jaccard consistency per layer"),
    "fig4_alignment_accuracy": ("fig_alignment_accuracy", "middle-band divergence from English vs task accuracy"),
    "fig5_task_experts": ("fig_task_experts", "task-expert Delta (layers x experts), selected experts marked"),
    "fig6_specialisation": ("fig_specialisation", "language specialisation of experts: top-language share by layer"),
    "fig7_steering": ("fig_steering", "coefficient matrix of the steering file"),
    "fig8_divergence_accuracy": ("fig_divergence_accuracy",
                                 "divergence from English per layer, each curve coloured by its language's accuracy"),
    "fig9_layer_correlation": ("fig_layer_correlation", "per-layer Pearson r of divergence vs accuracy, with its CI"),
    "fig10_overlap": ("fig_overlap", "task and multilingual experts and their overlap as a function of tau"),
    "fig11_effects": ("fig_effects", "intervention effects per language: the selection and every control"),
}

# the order of interventions in the effects figure: the selection, then the controls `moetrace-stats steer` writes
INTERVENTIONS = ("task", "outside_band", "multilingual", "random", "deactivate")


class MissingInput(Exception):
    """A figure's input file is not in the results directory (the figure is skipped, not an error)."""


class BandMismatch(ValueError):
    """A moetrace-stats output was computed with another band than the one every figure uses (an error)."""


# ---- reading -------------------------------------------------------------------------------------------------

def _value(s):
    for conv in (int, float):
        try:
            return conv(s)
        except ValueError:
            pass
    return s


class Table:
    """A moetrace TSV: `meta` holds the '#' provenance lines (without '#'), `header` the column names (from the
    '#'-prefixed header line, or the first line when it has no '#'), `rows` one dict per line with numbers parsed."""

    def __init__(self, path):
        self.path = Path(path)
        self.meta, self.header, self.rows = [], None, []
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                if line.startswith("#"):
                    if "\t" in line and not self.rows:
                        self.header = line[1:].split("\t")
                    else:
                        self.meta.append(line[1:].strip())
                    continue
                fields = line.split("\t")
                if self.header is None:
                    self.header = fields
                    continue
                self.rows.append(dict(zip(self.header, map(_value, fields))))
        if self.header is None:
            raise ValueError(f"{path}: no header line")

    def meta_value(self, key):
        """The text after 'key:' in the first provenance line that starts with it, else None."""
        for m in self.meta:
            if m.startswith(key + ":"):
                return m[len(key) + 1:].strip()
        return None

    def __len__(self):
        return len(self.rows)


def _band_from_text(text):
    """'5-20 (1-based, inclusive): detected from the U-curve: ...' -> (5, 20, 'detected from the U-curve')."""
    span, _, rest = text.partition(" ")
    a, _, b = span.partition("-")
    source = rest.split("):", 1)[1] if "):" in rest else rest
    source = source.strip().split(":")[0].strip()
    return Band(int(a), int(b), source)


class Band(tuple):
    """Middle band, 1-based inclusive, with where it came from."""

    def __new__(cls, first, last, source):
        return tuple.__new__(cls, (int(first), int(last), str(source)))

    first = property(lambda s: s[0])
    last = property(lambda s: s[1])
    source = property(lambda s: s[2])

    def label(self):
        return f"middle band {self.first}-{self.last} ({self.source})"


class Results:
    """A results directory: reduce tables in `tables/` (or in the directory itself) and the moetrace-stats
    outputs beside them (band.txt, correlate.json, experts.tsv, steer/, run/accuracy.tsv), as `make demo`
    writes them. Figures go to `figures` (default <results>/figures)."""

    def __init__(self, root, figures=None, config=None):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"{root}: no such results directory")
        t = self.root / "tables"
        self.tables = t if (t / "div_from_en.tsv").exists() else self.root
        self.figures = Path(figures).resolve() if figures else self.root / "figures"
        self.config = Path(config) if config else _config_dir()
        self._cache = {}

    @classmethod
    def from_env(cls):
        """Paths from MOETRACE_RESULTS (default ../demo, the `make demo` output seen from notebooks/),
        MOETRACE_FIGURES (default <results>/figures) and MOETRACE_CONFIG (default ../config)."""
        return cls(os.environ.get("MOETRACE_RESULTS") or HERE.parent / "demo",
                   os.environ.get("MOETRACE_FIGURES") or None, os.environ.get("MOETRACE_CONFIG") or None)

    def __repr__(self):
        return f"Results({str(self.root)!r}, tables={str(self.tables)!r}, figures={str(self.figures)!r})"

    def file(self, *candidates, what=None):
        """The first existing file among names relative to the results root (absolute names allowed)."""
        for c in candidates:
            if c is None:
                continue
            p = Path(c) if Path(c).is_absolute() else self.root / c
            if p.is_file():
                return p
        raise MissingInput(f"{self.root}: no {what or ' or '.join(str(c) for c in candidates if c)}")

    def table(self, name):
        """A reduce table by file name (div_from_en.tsv, ...), read once."""
        if name not in self._cache:
            p = self.tables / name
            if not p.is_file():
                raise MissingInput(f"{self.tables}: no {name}")
            self._cache[name] = Table(p)
        return self._cache[name]

    def model(self):
        """(model_id, n_layers, n_experts, top_k) from the tables' provenance ('# model: ID (L layers, E experts,
        top-K)'); numbers None when absent."""
        m = self.table("div_from_en.tsv").meta_value("model") or ""
        model_id, _, rest = m.partition(" (")
        nums = [None, None, None]
        for part in rest.split(")")[0].split(","):
            part = part.strip()
            if part.endswith(" layers"):
                nums[0] = int(part.split()[0])
            elif part.endswith(" experts"):
                nums[1] = int(part.split()[0])
            elif part.startswith("top-"):
                nums[2] = int(part[4:])
        return (model_id.strip() or None, *nums)

    def english(self):
        e = self.table("div_from_en.tsv").meta_value("english")
        return e.split(";")[0].strip() if e else ENGLISH

    def n_layers(self):
        L = self.model()[1]
        return L if L else max(r["layer"] for r in self.table("div_from_en.tsv").rows)

    def languages(self):
        """Every language of the tables (English included), sorted: the colour of a language is fixed by it."""
        langs = {r["lang"] for r in self.table("div_from_en.tsv").rows} | {self.english()}
        try:
            langs |= {r["lang"] for r in self.table("entropy.tsv").rows}
        except MissingInput:
            pass
        return sorted(langs)

    def correlate(self):
        if "correlate" not in self._cache:
            self._cache["correlate"] = json.loads(self.file("correlate.json").read_text(encoding="utf-8"))
        return self._cache["correlate"]


def _config_dir():
    for c in (HERE.parent / "config", Path("/usr/local/share/moetrace"), Path("/usr/share/moetrace")):
        if (c / "languages.tsv").is_file() or (c / "models").is_dir():
            return c
    return HERE.parent / "config"


def language_names(res):
    """FLORES code -> English name from languages.tsv (empty when the table is not there)."""
    p = res.config / "languages.tsv"
    if not p.is_file():
        return {}
    return {r["flores"]: r["name"] for r in Table(p).rows}


def _lang_aliases(res):
    """Any code of languages.tsv (FLORES, ISO 639-3, BCP-47, name) -> FLORES code; the first row wins."""
    out = {}
    p = res.config / "languages.tsv"
    if p.is_file():
        for r in Table(p).rows:
            for k in ("flores", "iso639_3", "bcp47", "name"):
                out.setdefault(str(r.get(k, "")).lower(), r["flores"])
    return out


def middle_band(res):
    """The one middle band of every figure: MOETRACE_BAND (A-B), else band.txt or band.json (moetrace-stats band),
    else the band of correlate.json, else the model profile in config/models whose model_id is the tables' model;
    else None."""
    env = os.environ.get("MOETRACE_BAND")
    if env:
        a, _, b = env.partition("-")
        return Band(a, b, "MOETRACE_BAND")
    p = res.root / "band.txt"
    if p.is_file():
        for line in p.read_text(encoding="utf-8").splitlines():
            if line.startswith("# band: "):
                return _band_from_text(line[len("# band: "):])
        raise ValueError(f"{p}: no '# band: A-B' line (write it with moetrace-stats band)")
    p = res.root / "band.json"
    if p.is_file():
        b = json.loads(p.read_text(encoding="utf-8"))["band"]
        return Band(b["first"], b["last"], b.get("source", "band.json"))
    if (res.root / "correlate.json").is_file():
        b = res.correlate().get("band")
        if b:
            return Band(b["first"], b["last"], b.get("source", "correlate.json"))
    return profile_band(res)


def band_origin(res):
    """Where middle_band takes the band from, for messages."""
    if os.environ.get("MOETRACE_BAND"):
        return "MOETRACE_BAND"
    for n in ("band.txt", "band.json", "correlate.json"):
        if (res.root / n).is_file():
            return str(res.root / n)
    return "the model profile"


def same_band(res, other, what):
    """The middle band, after checking that `other` (the band a moetrace-stats output was computed with, a Band or
    (first, last); None: nothing to check) is the same. BandMismatch otherwise."""
    band = middle_band(res)
    if band is not None and other is not None and (int(other[0]), int(other[1])) != (band.first, band.last):
        raise BandMismatch(f"{what} was computed with band {int(other[0])}-{int(other[1])}, but the figures use "
                           f"{band.first}-{band.last} ({band_origin(res)}): rerun it with --band "
                           f"{res.root / 'band.txt'} so every figure shows one band")
    return band


def profile_band(res):
    model_id = res.model()[0]
    for p in sorted((res.config / "models").glob("*.json")):
        try:
            prof = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if prof.get("model_id") == model_id and prof.get("middle_band"):
            b = prof["middle_band"]
            return Band(b["first"], b["last"], f"profile {prof.get('name', p.stem)}")
    return None


# ---- the numbers behind each figure -----------------------------------------------------------------------------

def _series(table, col, key="lang"):
    """{key value: (layers, values)} sorted by layer, keys sorted."""
    acc = {}
    for r in table.rows:
        acc.setdefault(r[key], []).append((r["layer"], float(r[col])))
    out = {}
    for k in sorted(acc):
        pts = sorted(acc[k])
        out[k] = (np.array([p[0] for p in pts]), np.array([p[1] for p in pts]))
    return out


def divergence_series(res):
    """{lang: (layers 1-based, Div[lang, layer])} from div_from_en.tsv (English itself is not a row)."""
    return {k: v for k, v in _series(res.table("div_from_en.tsv"), "div").items() if k != res.english()}


def profile_series(res, which):
    """{lang: (layers, values)}: which = 'entropy' (entropy.tsv), 'token_entropy' or 'jaccard' (jaccard.tsv)."""
    name = "jaccard.tsv" if which == "jaccard" else "entropy.tsv"
    return _series(res.table(name), which)


def pairwise_matrix(res, layer):
    """(langs, matrix) for a 1-based layer from div_pairwise.tsv: symmetric, 0 on the diagonal, NaN when a pair
    has no units."""
    rows = [r for r in res.table("div_pairwise.tsv").rows if r["layer"] == layer]
    if not rows:
        raise MissingInput(f"div_pairwise.tsv: no rows for layer {layer}")
    langs = sorted({r["lang_a"] for r in rows} | {r["lang_b"] for r in rows})
    idx = {g: i for i, g in enumerate(langs)}
    m = np.full((len(langs), len(langs)), np.nan)
    np.fill_diagonal(m, 0.0)
    for r in rows:
        i, j = idx[r["lang_a"]], idx[r["lang_b"]]
        m[i, j] = m[j, i] = float(r["div"])
    return langs, m


def pairwise_layers(res):
    """Early, middle and late layer (1-based): the first, the centre of the middle band (else of the depth) and
    the last; MOETRACE_PAIRWISE_LAYERS=a,b,c overrides."""
    env = os.environ.get("MOETRACE_PAIRWISE_LAYERS")
    if env:
        return [int(x) for x in env.split(",")]
    L = res.n_layers()
    b = middle_band(res)
    mid = (b.first + b.last) // 2 if b else (L + 1) // 2
    return [1, mid, L]


def read_accuracy(res, path):
    """[(flores code, task, metric, value)] in file order from a moetrace accuracy TSV, a moetrace accuracy JSON
    (a list, or {"accuracy": [...]}), or lm-evaluation-harness results ({"results": {"<task>_<code>": {...}}})."""
    aliases = _lang_aliases(res)
    norm = lambda code: aliases.get(str(code).lower(), code)  # noqa: E731
    text = Path(path).read_text(encoding="utf-8")
    out = []
    if text.lstrip()[:1] in ("{", "["):
        root = json.loads(text)
        results = root.get("results") if isinstance(root, dict) else None
        rows = root if isinstance(root, list) else (root.get("accuracy") if isinstance(root, dict) else None)
        if isinstance(results, dict):
            for task, entry in results.items():
                base, _, code = task.rpartition("_")
                if not base or not isinstance(entry, dict):
                    continue
                if "_" in base and str(code).lower() not in aliases:  # belebele_fra_Latn
                    base, _, c1 = base.rpartition("_")
                    code = c1 + "_" + code
                if str(code).lower() not in aliases:
                    continue
                for metric in ("acc,none", "exact_match,flexible-extract", "acc_norm,none", "exact_match,strict-match"):
                    if isinstance(entry.get(metric), (int, float)):
                        out.append((norm(code), base, metric, float(entry[metric])))
                        break
        elif isinstance(rows, list):
            for r in rows:
                out.append((norm(r["lang"]), r["task"], r.get("metric", "accuracy"), float(r["value"])))
    else:
        for r in Table(path).rows:
            out.append((norm(r["lang"]), str(r["task"]), str(r["metric"]), float(r["value"])))
    return out


def accuracy_file(res):
    """MOETRACE_ACCURACY, else the file correlate.json names if it still exists, else run/accuracy.tsv."""
    named = None
    try:
        named = res.correlate().get("accuracy")
    except MissingInput:
        pass
    return res.file(os.environ.get("MOETRACE_ACCURACY"), named, "run/accuracy.tsv", "accuracy.tsv", "accuracy.json",
                    what="accuracy file (run/accuracy.tsv)")


def accuracies(res, task=None):
    """{lang: accuracy} for a task (default: the first task in the file); the first row of a language wins, as
    moetrace-stats correlate reads it."""
    rows = read_accuracy(res, accuracy_file(res))
    if task is None and rows:
        task = rows[0][1]
    out = {}
    for lang, t, _metric, v in rows:
        if t == task and lang not in out:
            out[lang] = v
    return out


def alignment_points(res):
    """Per task of correlate.json: dict(task, band, langs, x = mean over the band's layers of div_from_en (NaN
    layers left out, as moetrace-stats does), y = accuracy, pearson, spearman (from correlate.json), r_points =
    Pearson r of the plotted points)."""
    c = res.correlate()
    band = Band(c["band"]["first"], c["band"]["last"], c["band"].get("source", ""))
    same_band(res, band, "correlate.json")
    div = divergence_series(res)
    out = []
    for t in c["results"]:
        acc = accuracies(res, t["task"])
        langs, xs, ys = [], [], []
        for g in t["languages"]:
            if g not in div or g not in acc:
                continue
            layers, v = div[g]
            sel = v[(layers >= band.first) & (layers <= band.last) & ~np.isnan(v)]
            langs.append(g)
            xs.append(float(np.mean(sel)) if len(sel) else math.nan)
            ys.append(acc[g])
        if not langs:
            raise MissingInput(f"{accuracy_file(res)}: no accuracy of task {t['task']} for the languages of "
                               "correlate.json (MOETRACE_ACCURACY names the file moetrace-stats correlate read)")
        x, y = np.array(xs), np.array(ys)
        ok = ~np.isnan(x)
        r = float(np.corrcoef(x[ok], y[ok])[0, 1]) if ok.sum() >= 3 else math.nan
        out.append(dict(task=t["task"], band=band, langs=langs, x=x, y=y, r_points=r,
                        pearson=t["band_mean"]["pearson"], spearman=t["band_mean"]["spearman"]))
    return out


def experts_file(res):
    """(task dataset, tau, band, {set name: [(layer 1-based, expert)]}) from experts.tsv."""
    t = Table(res.file("experts.tsv", what="experts.tsv (moetrace-stats experts)"))
    sets = {}
    for r in t.rows:
        sets.setdefault(r["set"], []).append((int(r["layer"]), int(r["expert"])))
    dataset = tau = band = None
    for m in t.meta:
        if m.startswith("task experts: dataset "):
            dataset = m.split("dataset ", 1)[1].split(",")[0].strip()
            if "tau = " in m:
                tau = float(m.split("tau = ", 1)[1].split(",")[0])
        elif m.startswith("band: "):
            band = _band_from_text(m[len("band: "):])
    return dataset, tau, band, sets


def delta_matrix(res, dataset=None, lang=None):
    """(dataset, lang, matrix (n_layers, n_experts)) of Delta = f(dataset, lang) - f(base slice) from delta.tsv;
    row l-1 is layer l. Default slice: the task dataset of experts.tsv (else the first non-base dataset) in
    English."""
    t = res.table("delta.tsv")
    lang = lang or res.english()
    if dataset is None:
        try:
            dataset = experts_file(res)[0]
        except MissingInput:
            pass
    if dataset is None:
        base = (t.meta_value("english") or "").split("base dataset:")[-1].split(";")[0].strip()
        cands = [r["dataset"] for r in t.rows if r["lang"] == lang and r["dataset"] != base]
        if not cands:
            raise MissingInput(f"{t.path}: no task dataset in {lang} (only the base slice)")
        dataset = cands[0]
    rows = [r for r in t.rows if r["dataset"] == dataset and r["lang"] == lang]
    if not rows:
        raise MissingInput(f"{t.path}: no slice {dataset}:{lang}")
    L = max(r["layer"] for r in rows)
    E = max(r["expert"] for r in rows) + 1
    m = np.full((L, E), np.nan)
    for r in rows:
        m[r["layer"] - 1, r["expert"]] = float(r["delta"])
    return dataset, lang, m


def specialisation_by_layer(res, threshold=0.5):
    """From specialisation.tsv, over the scored experts of each layer: layers, mean / median / quartiles of the
    top-language share, the number of scored experts, and {lang: number of experts per layer whose top language
    it is with a share >= threshold}."""
    rows = [r for r in res.table("specialisation.tsv").rows if int(r["scored"]) == 1]
    if not rows:
        raise MissingInput("specialisation.tsv: no scored experts")
    layers = np.array(sorted({r["layer"] for r in rows}))
    by = {l: [float(r["top_share"]) for r in rows if r["layer"] == l] for l in layers}
    langs = sorted({r["top_lang"] for r in rows})
    counts = {g: np.array([sum(1 for r in rows if r["layer"] == l and r["top_lang"] == g
                               and float(r["top_share"]) >= threshold) for l in layers]) for g in langs}
    return dict(layers=layers, mean=np.array([np.mean(by[l]) for l in layers]),
                median=np.array([np.median(by[l]) for l in layers]),
                q25=np.array([np.percentile(by[l], 25) for l in layers]),
                q75=np.array([np.percentile(by[l], 75) for l in layers]),
                n=np.array([len(by[l]) for l in layers]), counts=counts, threshold=threshold)


def steering_file(res):
    """The steering file's JSON twin: MOETRACE_STEER, else steer/task.json."""
    return res.file(os.environ.get("MOETRACE_STEER"), "steer/task.json", what="steer/task.json (moetrace-stats steer)")


def steering_matrix(path):
    """(meta dict, coef (n_layers, n_experts)) from a steering JSON (traces/STEERING.md); rows are 0-based MoE
    layers."""
    d = json.loads(Path(path).read_text(encoding="utf-8"))
    coef = np.array(d["coef"], dtype=float).reshape(d["n_layers"], d["n_experts"])
    return d, coef


def layer_correlations(res):
    """Per task of correlate.json: dict(task, layers (1-based), r, ci_lo, ci_hi, rho (Spearman), n (languages per
    layer), band_mean (its pearson dict), band (the correlation's band)); null values as NaN."""
    c = res.correlate()
    band = same_band(res, (c["band"]["first"], c["band"]["last"]), "correlate.json")
    num = lambda v: math.nan if v is None else float(v)  # noqa: E731
    out = []
    for t in c["results"]:
        rows = sorted(t["layers"], key=lambda r: r["layer"])
        ci = [r["pearson"].get("ci") or [None, None] for r in rows]
        out.append(dict(task=t["task"], layers=np.array([r["layer"] for r in rows]),
                        r=np.array([num(r["pearson"]["r"]) for r in rows]),
                        ci_lo=np.array([num(x[0]) for x in ci]), ci_hi=np.array([num(x[1]) for x in ci]),
                        rho=np.array([num(r["spearman"]["r"]) for r in rows]),
                        n=np.array([r["n_langs"] for r in rows]), band_mean=t["band_mean"]["pearson"],
                        band_spearman=t["band_mean"]["spearman"], band=band))
    return out


def overlap_table(res):
    """From overlap.tsv (or overlap.json), moetrace-stats overlap: dict(tau, n_task, n_multilingual, n_overlap as
    arrays sorted by tau, dataset, band)."""
    p = res.file("overlap.tsv", "overlap.json", what="overlap.tsv (moetrace-stats overlap)")
    if p.suffix == ".json":
        d = json.loads(p.read_text(encoding="utf-8"))
        rows, band, dataset = d["rows"], (d["band"]["first"], d["band"]["last"]), None
    else:
        t = Table(p)
        rows = t.rows
        bt = t.meta_value("band")
        band = _band_from_text(bt) if bt else None
        te = t.meta_value("task experts") or ""
        dataset = te.split("dataset ", 1)[1].split()[0] if "dataset " in te else None
    if not rows:
        raise MissingInput(f"{p}: no rows")
    band = same_band(res, band, p.name)
    rows = sorted(rows, key=lambda r: float(r["tau"]))
    col = lambda k: np.array([float(r[k]) for r in rows])  # noqa: E731
    return dict(tau=col("tau"), n_task=col("n_task"), n_multilingual=col("n_multilingual"),
                n_overlap=col("n_overlap"), dataset=dataset, band=band, path=p)


def effect_files(res):
    """{intervention: path} of effects/*.json (moetrace-stats effect --json, one per steering file), named by the
    intervention the JSON records (its steering file's name), else the file name; ordered as INTERVENTIONS, then
    the others by name."""
    d = res.root / "effects"
    found = {}
    for p in sorted(d.glob("*.json")) if d.is_dir() else []:
        name = json.loads(p.read_text(encoding="utf-8")).get("intervention") or p.stem
        if name in found:
            raise ValueError(f"{p}: a second effect file for intervention {name} ({found[name]})")
        found[name] = p
    if not found:
        raise MissingInput(f"{d}: no NAME.json (moetrace-stats effect --json, one per steering file)")
    order = [n for n in INTERVENTIONS if n in found] + sorted(n for n in found if n not in INTERVENTIONS)
    return {n: found[n] for n in order}


def intervention_effects(res, task=None):
    """Per intervention (effect_files order) for one task (default: the first task of the first file): dict(task,
    names, langs (non-English, in the order of the first file), gain[name] (per language, NaN where a language is
    missing), mean, ci_lo, ci_hi, sign_p, english_gain, layers, op, n_experts, n_langs)."""
    files = effect_files(res)
    eng = res.english()
    out = dict(names=list(files), gain={}, mean={}, ci_lo={}, ci_hi={}, sign_p={}, english_gain={}, layers={},
               op={}, n_experts={}, n_langs={}, task=task, langs=None)
    for name, p in files.items():
        rows = json.loads(p.read_text(encoding="utf-8"))["rows"]
        if out["task"] is None:
            out["task"] = rows[0]["task"]
        row = next((r for r in rows if r["task"] == out["task"]), None)
        if row is None:
            raise MissingInput(f"{p}: no task {out['task']}")
        per = {x["lang"]: float(x["gain"]) for x in row["per_lang"]}
        if out["langs"] is None:
            out["langs"] = [x["lang"] for x in row["per_lang"] if x["lang"] != eng]
        out["gain"][name] = np.array([per.get(g, math.nan) for g in out["langs"]])
        out["mean"][name], (out["ci_lo"][name], out["ci_hi"][name]) = float(row["gain"]), map(float, row["gain_ci"])
        out["sign_p"][name] = float(row["sign_p"])
        out["english_gain"][name] = math.nan if row.get("english_gain") is None else float(row["english_gain"])
        for k in ("layers", "op", "n_experts", "n_langs"):
            out[k][name] = row.get(k)
        if str(row.get("n_experts")) not in ("0", "-"):  # an empty file names the band's layers, steering none
            _check_effect_layers(res, name, row.get("layers"), p)
    return out


def _layer_set(text):
    """'3-6,9' -> {3, 4, 5, 6, 9}; '-' or '' -> set()."""
    out = set()
    for part in (text or "").split(","):
        a, _, b = part.strip().partition("-")
        if a.isdigit():
            out |= set(range(int(a), int(b if b.isdigit() else a) + 1))
    return out


def _check_effect_layers(res, name, layers, path):
    """The steering behind an effect file must sit where its intervention says, in the figures' band: the selection
    and the in-band controls inside it, outside_band outside it. BandMismatch otherwise."""
    band = middle_band(res)
    ls = _layer_set(layers)
    if band is None or not ls:
        return
    inside = {l for l in ls if band.first <= l <= band.last}
    if (name == "outside_band" and inside) or (name != "outside_band" and name in INTERVENTIONS and inside != ls):
        raise BandMismatch(f"{path}: intervention {name} steers layers {layers}, which does not fit the figures' band "
                           f"{band.first}-{band.last} ({band_origin(res)}): make the steering files with --band "
                           f"{res.root / 'band.txt'}")


# ---- drawing ------------------------------------------------------------------------------------------------------

def lang_colors(langs):
    """A fixed colour per language (sorted order, tab10/tab20), English black."""
    others = sorted(g for g in set(langs) if g != ENGLISH)
    cmap = colormaps["tab10" if len(others) <= 10 else "tab20"]
    out = {g: cmap(i % cmap.N) for i, g in enumerate(others)}
    out[ENGLISH] = (0, 0, 0, 1)
    return out


def _label(g, names):
    return f"{names[g]} ({g})" if g in names else g


def _shade_band(ax, band, label=True):
    if band:
        span = ax.axvspan(band.first - 0.5, band.last + 0.5, color="0.85", zorder=0,
                          label=band.label() if label else None)
        span.set_gid("band")


def _layer_axis(ax, L):
    ax.set_xlim(0.5, L + 0.5)
    step = max(1, round(L / 12))
    ax.set_xticks([1] + list(range(step, L + 1, step)) if step > 1 else range(1, L + 1))
    ax.set_xlabel("layer (1-based)")


def _title(fig, text, res):
    model = res.model()[0]
    fig.suptitle(f"{text}\n{model}" if model else text, fontsize=11)


def fig_divergence(res):
    """Figure 1: Div[lang, layer] from div_from_en.tsv, one line per language (gid = language code), middle band
    shaded; accuracies in the legend when an accuracy file is there."""
    series = divergence_series(res)
    band = middle_band(res)
    names = language_names(res)
    colors = lang_colors(res.languages())
    try:
        acc = accuracies(res)
    except (MissingInput, KeyError, ValueError):
        acc = {}
    fig = Figure(figsize=(10.5, 5), layout="constrained")
    ax = fig.add_subplot()
    _shade_band(ax, band)
    order = sorted(series, key=lambda g: -acc.get(g, -1)) if acc else sorted(series)
    for g in order:
        layers, v = series[g]
        lab = _label(g, names) + (f", accuracy {acc[g]:.2f}" if g in acc else "")
        line, = ax.plot(layers, v, marker="o", ms=3, lw=1.6, color=colors[g], label=lab)
        line.set_gid(g)
    _layer_axis(ax, res.n_layers())
    ax.set_ylabel("routing divergence from English\n(entropy-normalised JSD)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="language", title_fontsize=8)
    _title(fig, "Routing divergence from English per layer", res)
    return fig


def fig_pairwise(res, layers=None):
    """Figure 2: language x language divergence at an early, a middle and a late layer (div_pairwise.tsv); one
    image per layer (gid 'layer-N'), one colour scale."""
    layers = layers or pairwise_layers(res)
    mats = [pairwise_matrix(res, l) for l in layers]
    vmax = max(np.nanmax(m) for _, m in mats) or 1.0
    names = ("early", "middle", "late") if len(layers) == 3 else [""] * len(layers)
    n = len(mats[0][0])
    fig = Figure(figsize=(4.6 * len(layers) + 1.2, 5.4 + 0.12 * n), layout="constrained")
    axes = fig.subplots(1, len(layers), squeeze=False)[0]
    for ax, l, kind, (langs, m) in zip(axes, layers, names, mats):
        im = ax.imshow(m, cmap="viridis", vmin=0, vmax=vmax)
        im.set_gid(f"layer-{l}")
        ax.set_xticks(range(len(langs)), langs, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(langs)), langs, fontsize=8)
        ax.set_title(f"layer {l}" + (f" ({kind})" if kind else ""))
        if len(langs) <= 10:
            for i in range(len(langs)):
                for j in range(len(langs)):
                    if not np.isnan(m[i, j]):
                        ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7,
                                color="white" if m[i, j] < 0.6 * vmax else "black")
    fig.colorbar(im, ax=list(axes), label="routing divergence (entropy-normalised JSD)", shrink=0.85)
    _title(fig, "Pairwise routing divergence between languages", res)
    return fig


def _random_jaccard(E, K):
    """Expected Jaccard of two independent uniformly random top-K sets of E experts."""
    if not E or not K or K > E:
        return None
    tot = math.comb(E, K)
    return sum(math.comb(K, j) * math.comb(E - K, K - j) / tot * j / (2 * K - j) for j in range(K + 1))


def fig_profiles(res):
    """Figure 3: entropy of the mean routing distribution (entropy.tsv) and token-to-token Jaccard consistency
    of the top-k sets (jaccard.tsv) per layer and language; lines carry gid 'entropy:LANG' / 'jaccard:LANG'."""
    ent, jac = profile_series(res, "entropy"), profile_series(res, "jaccard")
    band = middle_band(res)
    names = language_names(res)
    colors = lang_colors(res.languages())
    _, L, E, K = res.model()
    L = L or res.n_layers()
    fig = Figure(figsize=(14, 4.8), layout="constrained")
    a1, a2 = fig.subplots(1, 2)
    for ax, series, key in ((a1, ent, "entropy"), (a2, jac, "jaccard")):
        _shade_band(ax, band, label=ax is a1)
        for g in sorted(series, key=lambda g: (g != res.english(), g)):
            layers, v = series[g]
            line, = ax.plot(layers, v, marker="o", ms=2.5, lw=2.2 if g == res.english() else 1.4,
                            color=colors[g], label=_label(g, names))
            line.set_gid(f"{key}:{g}")
        _layer_axis(ax, L)
        ax.grid(alpha=0.3)
    if E:
        a1.axhline(math.log(E), ls=":", color="0.4", label=f"uniform over {E} experts (ln {E})")
    rj = _random_jaccard(E, K)
    if rj is not None:
        a2.axhline(rj, ls=":", color="0.4", label=f"random top-{K} of {E}")
    a1.set_ylabel("entropy of mean routing weights (nats)")
    a1.set_title("Routing entropy")
    a2.set_ylabel("mean Jaccard of top-k sets, token pairs")
    a2.set_title("Token-to-token routing consistency")
    a2.set_ylim(0, None)
    handles, labels = [], []
    for ax in (a1, a2):  # one legend for both panels, beside them
        for h, l in zip(*ax.get_legend_handles_labels()):
            if l not in labels:
                handles.append(h)
                labels.append(l)
    a2.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _title(fig, "Entropy and consistency profiles per language", res)
    return fig


def fig_alignment_accuracy(res):
    """Figure 4: per task, accuracy vs mean divergence from English over the correlation's band, one point per
    language (scatter gid 'points:TASK'), least-squares line, Pearson r with its bootstrap CI from correlate.json."""
    tasks = alignment_points(res)
    names = language_names(res)
    fig = Figure(figsize=(6.2 * len(tasks), 5.2), layout="constrained")
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    for ax, t in zip(axes, tasks):
        colors = lang_colors(res.languages())
        sc = ax.scatter(t["x"], t["y"], c=[colors[g] for g in t["langs"]], s=60, zorder=3, edgecolor="k", lw=0.5)
        sc.set_gid(f"points:{t['task']}")
        for g, x, y in zip(t["langs"], t["x"], t["y"]):
            ax.annotate(_label(g, names), (x, y), xytext=(5, 4), textcoords="offset points", fontsize=8)
        ok = ~np.isnan(t["x"])
        if ok.sum() >= 2 and np.ptp(t["x"][ok]) > 0:
            k, c0 = np.polyfit(t["x"][ok], t["y"][ok], 1)
            xx = np.linspace(t["x"][ok].min(), t["x"][ok].max(), 2)
            ax.plot(xx, k * xx + c0, color="0.3", lw=1, ls="--", label="least-squares fit")
        p, s = t["pearson"], t["spearman"]
        ci = p.get("ci") or [math.nan, math.nan]
        text = (f"Pearson r = {p['r']:.3f}  [95% CI {ci[0]:.3f}, {ci[1]:.3f}]\n"
                f"p = {p['p']:.2g}, permutation p = {p.get('p_perm', math.nan):.2g}\n"
                f"Spearman rho = {s['r']:.3f}; {len(t['langs'])} languages")
        if not math.isnan(t["r_points"]) and abs(t["r_points"] - p["r"]) > 1e-6:
            text += f"\n(plotted points give r = {t['r_points']:.3f}: another accuracy file?)"
        ax.text(0.02, 0.02, text, transform=ax.transAxes, fontsize=8, va="bottom",
                bbox=dict(boxstyle="round", fc="white", ec="0.7"))
        b = t["band"]
        ax.set_xlabel(f"mean divergence from English, layers {b.first}-{b.last}")
        ax.set_ylabel(f"accuracy ({t['task']})")
        ax.set_title(f"task {t['task']}: middle-band alignment vs accuracy")
        ax.grid(alpha=0.3)
        ax.margins(0.15)
    _title(fig, "Middle-band routing alignment with English vs task accuracy", res)
    return fig


def fig_task_experts(res):
    """Figure 5: Delta heatmap, layers (rows, 1-based) x experts, for the task slice in English against the base
    slice (image gid 'delta'), the selected task experts of experts.tsv circled (gid 'selected'), their band
    marked."""
    dataset, lang, m = delta_matrix(res)
    try:
        _, tau, eband, sets = experts_file(res)
    except MissingInput:
        tau, eband, sets = None, None, {}
    band = same_band(res, eband, "experts.tsv")
    sel = sets.get("task", [])
    L, E = m.shape
    fig = Figure(figsize=(max(8, min(16, 4 + 0.14 * E)), max(5, min(12, 2.5 + 0.22 * L))), layout="constrained")
    ax = fig.add_subplot()
    lim = np.nanmax(np.abs(m)) or 1.0
    im = ax.imshow(m, aspect="auto", cmap="RdBu_r", norm=TwoSlopeNorm(0, -lim, lim), origin="lower",
                   extent=(-0.5, E - 0.5, 0.5, L + 0.5), interpolation="nearest")
    im.set_gid("delta")
    if sel:
        s = ax.scatter([e for _, e in sel], [l for l, _ in sel], s=60, facecolor="none", edgecolor="k", lw=1.3,
                       label=f"selected task experts ({len(sel)}" + (f", Delta > {tau:g}" if tau is not None else "")
                       + ")")
        s.set_gid("selected")
    if band:
        for y in (band.first - 0.5, band.last + 0.5):
            ax.axhline(y, color="k", ls="--", lw=0.8)
        ax.plot([], [], color="k", ls="--", lw=0.8, label=f"band {band.first}-{band.last}")
    ax.set_xlabel("expert (0-based)")
    ax.set_ylabel("layer (1-based)")
    base = (res.table("delta.tsv").meta_value("english") or "").split("base slice:")[-1].split(";")[0].strip()
    ax.set_title(f"Delta = f({dataset}:{lang}) - f({base or 'base slice'}), f = activation frequency", fontsize=10)
    fig.colorbar(im, ax=ax, label="Delta activation frequency", shrink=0.9)
    if sel or band:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=8)
    _title(fig, "Task experts", res)
    return fig


def fig_specialisation(res, threshold=0.5):
    """Figure 6: top-language share of each scored expert, by layer (mean line gid 'mean', median, IQR), chance
    level 1/#languages; and per layer the experts whose top language takes >= threshold of their activations,
    stacked by that language (bars gid 'count:LANG')."""
    s = specialisation_by_layer(res, threshold)
    names = language_names(res)
    n_langs = len({r["lang"] for r in res.table("entropy.tsv").rows})
    colors = lang_colors(res.languages())
    L = res.n_layers()
    band = middle_band(res)
    fig = Figure(figsize=(13, 6), layout="constrained")
    a1, a2 = fig.subplots(1, 2)
    _shade_band(a1, band)
    a1.fill_between(s["layers"], s["q25"], s["q75"], color="tab:blue", alpha=0.2, label="interquartile range")
    a1.plot(s["layers"], s["mean"], color="tab:blue", marker="o", ms=3, label="mean", gid="mean")
    a1.plot(s["layers"], s["median"], color="tab:blue", ls="--", lw=1, label="median", gid="median")
    if n_langs:
        a1.axhline(1 / n_langs, ls=":", color="0.4", label=f"no specialisation (1/{n_langs} languages)")
    a1.set_ylim(0, 1.02)
    a1.set_ylabel("share of an expert's activations\ntaken by its top language")
    a1.set_title("Top-language share of experts")
    _layer_axis(a1, L)
    a1.grid(alpha=0.3)
    a1.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    _shade_band(a2, band, label=False)
    bottom = np.zeros(len(s["layers"]))
    for g in sorted(s["counts"], key=lambda g: (g != res.english(), g)):
        c = s["counts"][g]
        bars = a2.bar(s["layers"], c, bottom=bottom, color=colors[g], label=_label(g, names), width=0.8)
        for b in bars:
            b.set_gid(f"count:{g}")
        bottom += c
    a2.set_ylabel(f"experts with top-language share >= {threshold:g}")
    a2.set_title("Language-specialised experts by top language")
    _layer_axis(a2, L)
    a2.grid(alpha=0.3, axis="y")
    a2.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, title="top language",
              title_fontsize=8)
    _title(fig, "Language specialisation of experts", res)
    return fig


def fig_steering(res, path=None):
    """Figure 7: the coefficient matrix of a steering file (default steer/task.json), layers (rows, 1-based MoE
    layers) x experts (image gid 'coef'), target layers marked."""
    d, coef = steering_matrix(path or steering_file(res))
    pb = (d.get("provenance") or {}).get("band") or {}
    same_band(res, (pb["first"], pb["last"]) if "first" in pb else None, f"steering file {d.get('name', '?')}")
    L, E = coef.shape
    fig = Figure(figsize=(max(8, min(16, 4 + 0.14 * E)), max(5, min(12, 2.5 + 0.22 * L))), layout="constrained")
    ax = fig.add_subplot()
    lim = float(np.max(np.abs(coef))) or 1.0
    im = ax.imshow(coef, aspect="auto", cmap="RdBu_r", norm=TwoSlopeNorm(0, -lim, lim), origin="lower",
                   extent=(-0.5, E - 0.5, 0.5, L + 0.5), interpolation="nearest")
    im.set_gid("coef")
    tl = [l + 1 for l in d.get("target_layers", [])]
    if tl:
        ax.axhline(min(tl) - 0.5, color="k", ls="--", lw=0.8)
        ax.axhline(max(tl) + 0.5, color="k", ls="--", lw=0.8, label=f"target layers {min(tl)}-{max(tl)}")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), fontsize=8)
    op = d.get("op", "?")
    meaning = {"soft": "z_e += coef * std(z)", "hard": "+1 forced in, -1 forced out",
               "bias": "z_e += coef", "off": "forced out"}.get(op, op)
    lam = f", lambda = {d['lambda']:g}" if op == "soft" and d.get("lambda") is not None else ""
    prov = d.get("provenance") or {}
    rule = f"\nselection: {prov['selection_rule']}" if prov.get("selection_rule") else ""
    ax.set_title(f"steering file '{d.get('name', '?')}': op {op}{lam}, {len(d.get('experts', []))} experts{rule}",
                 fontsize=10)
    ax.set_xlabel("expert (0-based)")
    ax.set_ylabel("MoE layer (1-based)")
    fig.colorbar(im, ax=ax, label=f"coefficient ({meaning})", shrink=0.9)
    _title(fig, "Steering coefficients", res)
    return fig


def accuracy_norm(values):
    """(colormap, Normalize) of the accuracy colour scale: red (low) -> yellow -> green (high), as the paper's
    colour bar, over the range of the plotted accuracies."""
    from matplotlib.colors import Normalize
    lo, hi = float(np.min(values)), float(np.max(values))
    if hi <= lo:
        lo, hi = lo - 0.05, hi + 0.05
    return colormaps["RdYlGn"], Normalize(lo, hi)


def fig_divergence_accuracy(res, task=None):
    """Figure 8 (the paper's Fig. 2): Div[lang, layer] from div_from_en.tsv, one line per language (gid = language
    code) coloured by the language's accuracy (red low, green high) with a colour bar; languages without an
    accuracy grey and dashed; the middle band shaded."""
    series = divergence_series(res)
    if task is None:
        try:
            task = res.correlate()["results"][0]["task"]
        except (MissingInput, KeyError, IndexError):
            task = None
    acc = accuracies(res, task)
    if task is None and acc:
        task = read_accuracy(res, accuracy_file(res))[0][1]
    have = [g for g in series if g in acc]
    if not have:
        raise MissingInput(f"{accuracy_file(res)}: no accuracy for the languages of div_from_en.tsv")
    cmap, norm = accuracy_norm([acc[g] for g in have])
    band = middle_band(res)
    names = language_names(res)
    fig = Figure(figsize=(10, 6.2 + 0.12 * len(series)), layout="constrained")
    ax = fig.add_subplot()
    _shade_band(ax, band)
    for g in sorted(series, key=lambda g: acc.get(g, -1.0)):  # the best-scoring languages drawn last, on top
        layers, v = series[g]
        if g in acc:
            line, = ax.plot(layers, v, marker="o", ms=3, lw=1.8, color=cmap(norm(acc[g])),
                            label=f"{_label(g, names)}: {acc[g]:.2f}")
        else:
            line, = ax.plot(layers, v, ls="--", lw=1.0, color="0.6", label=f"{_label(g, names)}: no accuracy")
        line.set_gid(g)
    from matplotlib.cm import ScalarMappable
    cb = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, shrink=0.9, pad=0.01)
    cb.set_label(f"accuracy ({task})")
    _layer_axis(ax, res.n_layers())
    ax.set_ylabel("routing divergence from English\n(entropy-normalised JSD)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    h, lab = ax.get_legend_handles_labels()
    ax.legend(h[::-1], lab[::-1], fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3,
              title="language: accuracy", title_fontsize=8)
    _title(fig, "Routing divergence from English, coloured by accuracy", res)
    return fig


def fig_layer_correlation(res):
    """Figure 9: per task, Pearson r across languages of divergence from English with accuracy, layer by layer
    (line gid 'r:TASK'), its percentile bootstrap CI as a band (lines gid 'ci_lo:TASK' / 'ci_hi:TASK', fill
    between), Spearman rho dotted (gid 'rho:TASK'), the band-mean r with its CI over the middle band (gid
    'band:TASK'), all from correlate.json."""
    tasks = layer_correlations(res)
    L = res.n_layers()
    fig = Figure(figsize=(10.5, 4.2 * len(tasks) + 0.6), layout="constrained")
    axes = fig.subplots(len(tasks), 1, squeeze=False)[:, 0]
    for ax, t in zip(axes, tasks):
        band = t["band"]
        _shade_band(ax, band)
        lev = res.correlate().get("settings", {}).get("level", 0.95)
        ax.fill_between(t["layers"], t["ci_lo"], t["ci_hi"], color="tab:blue", alpha=0.2,
                        label=f"{100 * lev:.0f}% bootstrap CI")
        ax.plot(t["layers"], t["ci_lo"], color="tab:blue", lw=0.6, alpha=0.6, gid=f"ci_lo:{t['task']}")
        ax.plot(t["layers"], t["ci_hi"], color="tab:blue", lw=0.6, alpha=0.6, gid=f"ci_hi:{t['task']}")
        ax.plot(t["layers"], t["r"], color="tab:blue", marker="o", ms=3, lw=1.6, label="Pearson r",
                gid=f"r:{t['task']}")
        ax.plot(t["layers"], t["rho"], color="tab:purple", ls=":", lw=1.2, label="Spearman rho",
                gid=f"rho:{t['task']}")
        bm = t["band_mean"]
        if band is not None and bm.get("r") is not None:
            ci = bm.get("ci") or [math.nan, math.nan]
            x = [band.first - 0.5, band.last + 0.5]
            ax.plot(x, [bm["r"]] * 2, color="k", lw=2, gid=f"band:{t['task']}",
                    label=f"band mean: r = {bm['r']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]")
            ax.fill_between(x, [ci[0]] * 2, [ci[1]] * 2, color="k", alpha=0.08)
            sp = t["band_spearman"]
            ax.text(0.0, -0.16, f"band mean: Pearson p = {bm['p']:.2g} (t), permutation p = {bm['p_perm']:.2g} "
                    f"({bm.get('p_perm_method', '?')}); Spearman rho = {sp['r']:.3f}, p = {sp['p']:.2g} "
                    f"({sp.get('p_method', '?')}); {int(np.max(t['n']))} languages",
                    transform=ax.transAxes, fontsize=8, va="top", bbox=dict(boxstyle="round", fc="white", ec="0.7"))
        ax.axhline(0, color="0.3", lw=0.8)
        ax.set_ylim(-1.08, 1.08)
        _layer_axis(ax, L)
        ax.set_ylabel("correlation across languages")
        ax.set_title(f"task {t['task']}: divergence from English vs accuracy, per layer")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _title(fig, "Per-layer correlation of routing alignment with accuracy", res)
    return fig


def fig_overlap(res):
    """Figure 10: from overlap.tsv, the numbers of task experts (gid 'n_task'), multilingual-specialised experts
    (gid 'n_multilingual') and experts in both (gid 'n_overlap') as functions of tau; the tau of experts.tsv
    marked; the paper finds no overlap at tau >= 0.3."""
    o = overlap_table(res)
    try:
        tau_sel = experts_file(res)[1]
    except MissingInput:
        tau_sel = None
    fig = Figure(figsize=(8.5, 5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(o["tau"], o["n_task"], marker="o", color="tab:orange", gid="n_task",
            label=f"task experts ({o['dataset'] or 'task'}, band layers)")
    ax.plot(o["tau"], o["n_multilingual"], marker="s", color="tab:green", gid="n_multilingual",
            label="multilingual-specialised experts")
    ax.plot(o["tau"], o["n_overlap"], marker="D", color="k", lw=2, gid="n_overlap", label="in both sets")
    for x, n in zip(o["tau"], o["n_overlap"]):
        ax.annotate(f"{int(n)}", (x, n), xytext=(0, 6), textcoords="offset points", ha="center", fontsize=8)
    if tau_sel is not None:
        ax.axvline(tau_sel, color="0.4", ls="--", lw=1, label=f"tau of the selection ({tau_sel:g})")
    ax.axvspan(0.3, max(0.3, float(o["tau"].max())) + 0.02, color="0.92", zorder=0,
               label="tau >= 0.3 (the paper: no overlap)")
    ax.set_xlabel("tau (Delta threshold)")
    ax.set_ylabel("number of experts")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    b = o["band"]
    ax.set_title("Task vs multilingual experts" + (f" (task experts in band {b.first}-{b.last})" if b else ""),
                 fontsize=10)
    _title(fig, "Overlap of task and multilingual experts", res)
    return fig


def intervention_colors(names):
    base = {"task": "tab:blue", "outside_band": "tab:orange", "multilingual": "tab:green", "random": "tab:gray",
            "deactivate": "tab:red"}
    extra = colormaps["tab10"]
    return {n: base.get(n, extra((i + 5) % 10)) for i, n in enumerate(names)}


def fig_effects(res, task=None):
    """Figure 11: per non-English language, the accuracy gain (steered - baseline) under the task-expert selection
    and under every control (bars gid 'gain:NAME', one bar per language), and per intervention the mean gain over
    the languages with its paired bootstrap CI (marker gid 'mean:NAME', error bar gid 'ci:NAME'), from
    effects/NAME.json."""
    e = intervention_effects(res, task)
    names, langs = e["names"], e["langs"]
    lnames = language_names(res)
    colors = intervention_colors(names)
    fig = Figure(figsize=(max(9, 3 + 0.55 * len(langs) * len(names) / 2) + 4.5, 7.2), layout="constrained")
    gs = fig.add_gridspec(2, 2, width_ratios=[max(2.0, 0.35 * len(langs) * len(names) / 2), 1.4],
                          height_ratios=[5, 1])
    a1, a2, lax = fig.add_subplot(gs[0, 0]), fig.add_subplot(gs[0, 1]), fig.add_subplot(gs[1, :])
    lax.axis("off")
    width = 0.8 / len(names)
    x = np.arange(len(langs))
    for i, n in enumerate(names):
        bars = a1.bar(x - 0.4 + width * (i + 0.5), e["gain"][n], width=width, color=colors[n],
                      label=f"{n} ({e['op'][n]}, {e['n_experts'][n]} experts, layers {e['layers'][n]})")
        for b in bars:
            b.set_gid(f"gain:{n}")
    a1.axhline(0, color="0.3", lw=0.8)
    a1.set_xticks(x, [_label(g, lnames) for g in langs], rotation=45, ha="right", fontsize=8)
    a1.set_ylabel(f"accuracy gain, steered - baseline ({e['task']})")
    a1.set_title("Per language")
    a1.grid(alpha=0.3, axis="y")
    lax.legend(*a1.get_legend_handles_labels(), fontsize=8, loc="center", ncol=2, frameon=False)
    for i, n in enumerate(names):
        m, lo, hi = e["mean"][n], e["ci_lo"][n], e["ci_hi"][n]
        eb = a2.errorbar([i], [m], yerr=[[m - lo], [hi - m]], fmt="o", ms=7, capsize=5, color=colors[n])
        eb[0].set_gid(f"mean:{n}")
        eb[2][0].set_gid(f"ci:{n}")
        a2.annotate(f"{m:+.3g}\nsign p={e['sign_p'][n]:.2g}", (i, hi), xytext=(0, 5), textcoords="offset points",
                    ha="center", fontsize=7)
    a2.axhline(0, color="0.3", lw=0.8)
    a2.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    a2.set_xlim(-0.6, len(names) - 0.4)
    a2.margins(y=0.25)
    a2.set_ylabel("mean gain over non-English languages")
    a2.set_title("Mean with paired bootstrap CI")
    a2.grid(alpha=0.3, axis="y")
    _title(fig, "Intervention effects: task-expert selection and controls", res)
    return fig


# ---- saving -------------------------------------------------------------------------------------------------------

def save(fig, res, name):
    """Write figures/NAME.png (150 dpi) and NAME.pdf; returns the two paths."""
    res.figures.mkdir(parents=True, exist_ok=True)
    png, pdf = res.figures / f"{name}.png", res.figures / f"{name}.pdf"
    fig.savefig(png, dpi=150, metadata={"Software": None})
    fig.savefig(pdf, metadata={"CreationDate": None, "Creator": None, "Producer": None})
    return png, pdf


def draw(res, name, show=True):
    """Draw figure NAME (a key of FIGURES) from the results, save PNG and PDF, show the PNG when running in a
    notebook. A figure whose input is missing is skipped with a message; returns the paths or None."""
    fn = globals()[FIGURES[name][0]]
    try:
        fig = fn(res)
    except MissingInput as e:
        print(f"skipped {name}: {e}")
        return None
    paths = save(fig, res, name)
    print(f"wrote {paths[0]} and {paths[1].name}")
    if show and "IPython" in sys.modules:
        from IPython import get_ipython
        if get_ipython() is not None:
            from IPython.display import Image, display
            display(Image(filename=str(paths[0])))
    return paths


def draw_all(res):
    return {name: draw(res, name, show=False) for name in FIGURES}


# ---- notebook hygiene ---------------------------------------------------------------------------------------------

def notebook_outputs(nb):
    """Problems that keep a notebook (parsed JSON) from being committed: outputs, execution counts."""
    bad = []
    for i, c in enumerate(nb.get("cells", [])):
        if c.get("cell_type") != "code":
            continue
        if c.get("outputs"):
            bad.append(f"cell {i}: {len(c['outputs'])} output(s)")
        if c.get("execution_count") is not None:
            bad.append(f"cell {i}: execution count {c['execution_count']}")
    return bad


def strip_notebook(path):
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    for c in nb.get("cells", []):
        if c.get("cell_type") == "code":
            c["outputs"], c["execution_count"] = [], None
        c.get("metadata", {}).pop("execution", None)
    Path(path).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def main(argv):
    usage = __doc__.split("Command line (no Jupyter needed):\n", 1)[1]
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        sys.stdout.write("usage:\n" + usage) if len(argv) >= 2 else sys.stderr.write("usage:\n" + usage)
        return 0 if len(argv) >= 2 else 1
    verb, args = argv[1], argv[2:]
    if verb == "draw" and 1 <= len(args) <= 2:
        try:
            res = Results(args[0], args[1] if len(args) > 1 else None)
        except FileNotFoundError as e:
            print(f"moetrace_figures: {e}", file=sys.stderr)
            return 2
        done = draw_all(res)
        return 0 if any(done.values()) else 2
    if verb == "check-clean" and args:
        rc = 0
        for p in args:
            bad = notebook_outputs(json.loads(Path(p).read_text(encoding="utf-8")))
            if bad:
                print(f"{p}: has outputs ({'; '.join(bad[:3])}): strip them (moetrace_figures.py strip)",
                      file=sys.stderr)
                rc = 1
        return rc
    if verb == "strip" and args:
        for p in args:
            strip_notebook(p)
        return 0
    sys.stderr.write("usage:\n" + usage)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
