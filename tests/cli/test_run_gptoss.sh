# gpt_oss end to end on the committed tiny checkpoints (tests/models/tiny/gpt_oss*, MXFP4 experts): a capture of
# the bundled UDHR corpus records score_fn topk_softmax with the router bias, its logits equal the PyTorch
# reference's, moetrace-reduce computes the paper's full-softmax tables and the model's own top-k-softmax ones
# (which differ), moetrace-stats band reads them; a checkpoint whose MXFP4 tensors are damaged is refused.
. "$TESTS/cli/lib.sh"
export HDF5_PLUGIN_PATH="$LIB/plugin"
CAP="$BIN/moetrace-capture"
M="$TESTS/models/tiny"
G="$M/gpt_oss"
GB="$M/gpt_oss_bf16"
CORPUS="$TESTS/data/udhr-mini.jsonl"
LANGS=eng_Latn,fra_Latn,zho_Hans,rus_Cyrl

# the published form: bf16, no torch_dtype in config.json (the dtype is the stored tensors')
expect_exit 0 "gpt_oss capture (bf16, 4 languages)" "$CAP" run --model "$GB" --corpus "$CORPUS" --langs "$LANGS" \
    --limit 24 --out "$WORK/rb" --no-sync --json
expect_out "capture: 24 items" '"items_written": ?24'
expect_exit 0 "gpt_oss run is valid (info --deep)" "$BIN/moetrace-info" --deep "$WORK/rb"
expect_exit 0 "gpt_oss run json" "$BIN/moetrace-info" --json "$WORK/rb"
expect_out "run records model_type gpt_oss" '"model_type": "gpt_oss"'
expect_out "run records score_fn topk_softmax" '"score_fn": "topk_softmax"'
expect_out "run records the router bias" '"router_bias": (true|1)'
expect_out "run stores bf16 logits (the model dtype)" '"dtype": "bf16"'

# the f32 checkpoint: stored logits against the reference on the same ids, and the model's own top-k
expect_exit 0 "gpt_oss capture (f32)" "$CAP" run --model "$G" --corpus "$CORPUS" --langs eng_Latn,fra_Latn --limit 6 \
    --out "$WORK/rf" --dtype f32 --no-sync --quiet
if $PY -c 'import torch, h5py' 2>/dev/null; then
    out=$($PY - "$WORK/rf" "$G" "$TESTS/models" <<'EOF' 2>&1
import glob, sys, h5py, numpy as np, torch
sys.path.insert(0, sys.argv[3])
from ref_moe import MoeModel
m = MoeModel(sys.argv[2])
worst, n, sel_ok = 0.0, 0, True
for shard in sorted(glob.glob(sys.argv[1] + "/shard-*.h5")):
    with h5py.File(shard, "r") as f:
        ids, z = f["tok/token_id"][:], f["router/logits"][:]
        off, cnt = f["seq/token_offset"][:], f["seq/n_tokens"][:]
        for o, c in zip(off, cnt):
            out = m.forward_full([int(t) for t in ids[o:o + c]])
            ref = torch.stack([r["router"].float() for r in out["moe"]], 1).numpy()
            worst = max(worst, float(np.abs(z[o:o + c] - ref).max() / max(np.abs(ref).max(), 1e-30)))
            # the model's own selection: top-k of the logits (bias included), not of a softmax
            got = np.sort(np.argsort(-z[o:o + c], axis=-1, kind="stable")[..., :m.cfg.top_k], -1)
            want = np.sort(torch.stack([r["selected"] for r in out["moe"]], 1).numpy(), -1)
            sel_ok &= bool((got == want).all())
            n += 1
print(n, worst, sel_ok)
EOF
)
    set -- $out
    if [ "${1:-0}" -eq 6 ] && $PY -c "import sys; sys.exit(0 if float('${2:-1}') <= 1e-4 else 1)" 2>/dev/null; then
        ok "gpt_oss captured router logits equal the reference (max rel err $2)"
    else not_ok "gpt_oss captured router logits equal the reference" "$out"; fi
    if [ "${3:-}" = "True" ]; then ok "gpt_oss top-k of the stored logits is the reference's selection"
    else not_ok "gpt_oss selection" "$out"; fi
else
    echo "ok gpt_oss captured logits vs reference # skip: no torch"
fi

# reduce: the paper's full softmax (default) and the model's own weights (--weights topk)
expect_exit 0 "gpt_oss reduce (full softmax)" "$BIN/moetrace-reduce" "$WORK/rb" -o "$WORK/tf"
expect_exit 0 "gpt_oss reduce (--weights topk)" "$BIN/moetrace-reduce" "$WORK/rb" -o "$WORK/tk" --weights topk
n_div=$(grep -vc '^#' "$WORK/tf/div_from_en.tsv" 2>/dev/null)
if [ "$n_div" = 12 ]; then ok "gpt_oss div_from_en: 3 languages x 4 layers"; else not_ok "gpt_oss div_from_en rows" "$n_div"; fi
if [ -f "$WORK/tk/div_from_en.tsv" ] && ! cmp -s "$WORK/tf/div_from_en.tsv" "$WORK/tk/div_from_en.tsv"; then
    ok "gpt_oss top-k-softmax tables differ from the full-softmax ones"
else not_ok "gpt_oss topk tables" "identical or missing"; fi
if $PY -c 'import h5py' 2>/dev/null; then
    # importance under --weights topk: each token's weights are a softmax over its 4 experts (sum 1 per layer),
    # zero elsewhere, so every sequence's mean over experts sums to 1 and at most 4 experts get weight per token
    out=$($PY - "$WORK/tk" "$WORK/tf" <<'EOF' 2>&1
import glob, sys, h5py, numpy as np
def imp(d):
    f = sorted(glob.glob(d + "/*.h5"))
    with h5py.File(f[0], "r") as h:
        return h["importance"][:], h.attrs["score_fn"], h.attrs["weights"]
qk, sf, wk = imp(sys.argv[1])
qf, _, wf = imp(sys.argv[2])
sf = sf.decode() if isinstance(sf, bytes) else sf
print(sf, float(np.abs(qk.sum(-1) - 1).max()), float(np.abs(qf.sum(-1) - 1).max()), float(np.abs(qk - qf).max()))
EOF
)
    set -- $out
    if [ "${1:-}" = topk_softmax ] && $PY -c "import sys; a, b, c = map(float, sys.argv[1:4]); sys.exit(0 if a < 1e-5 and b < 1e-5 and c > 1e-3 else 1)" "${2:-1}" "${3:-1}" "${4:-0}" 2>/dev/null; then
        ok "gpt_oss importance sums to 1 under both weightings, and they differ"
    else not_ok "gpt_oss importance" "$out"; fi
fi

# stats: the U-curve and a detected middle band over the tiny model's 4 layers
expect_exit 0 "gpt_oss stats band" "$BIN/moetrace-stats" band --tables "$WORK/tf" --band detect
n_band=$(grep -c '^[1-4]	' "$WORK/out")
if [ "$n_band" = 4 ]; then ok "gpt_oss band: 4 layers"; else not_ok "gpt_oss band rows" "$(head -c 300 "$WORK/out")"; fi
expect_out "gpt_oss band: a detected band" '^# band: [1-4]-[1-4]'

# damaged MXFP4 tensors: a scales tensor of the wrong shape is named, exit 2
cp -r "$G" "$WORK/bad"
$PY - "$WORK/bad" "$TESTS/models" <<'EOF'
import glob, sys
sys.path.insert(0, sys.argv[2])
import safetensors_io as st
for f in sorted(glob.glob(sys.argv[1] + "/model-*.safetensors")):
    t, meta = st.load(f)
    k = "model.layers.1.mlp.experts.gate_up_proj_scales"
    if k in t:
        t[k] = t[k][:, :, :1].contiguous()
        st.save_file(t, f, metadata=meta)
EOF
expect_exit 2 "gpt_oss bad scales shape refused" "$CAP" run --model "$WORK/bad" --corpus "$CORPUS" --limit 1 --out "$WORK/x"
expect_err_line "gpt_oss bad scales: one line naming the tensor" "gate_up_proj_scales"
