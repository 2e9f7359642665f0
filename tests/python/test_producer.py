"""test_producer.py — the PyTorch producer and steering hook (capture/python/moetrace) against small models with
the Hugging Face module names: traces written through `moetrace-capture ingest` hold exactly the logits the
model computed, with the right metadata; the steering hook steers exactly as libmoetrace's mtr_steer_apply.
Prints "ok NAME" / "not ok NAME: why". Environment: BIN, LIB (build directories). Run with /usr/bin/python3."""
import ctypes
import glob
import json
import os
import sys
import tempfile
import traceback

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "capture", "python"))
sys.path.insert(0, HERE)
BIN = os.environ.get("BIN", os.path.join(ROOT, "bin"))
LIB = os.environ.get("LIB", os.path.join(ROOT, "lib"))
os.environ["HDF5_PLUGIN_PATH"] = os.path.join(LIB, "plugin")
os.environ["MOETRACE_CAPTURE"] = os.path.join(BIN, "moetrace-capture")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import moetrace  # noqa: E402
import tiny_moe  # noqa: E402

torch.set_num_threads(1)
WORK = tempfile.mkdtemp(prefix="mtr-py-")
failures = 0


def case(name):
    def wrap(fn):
        global failures
        try:
            fn()
            print(f"ok {name}")
        except Exception as e:  # a failing case must not stop the others
            failures += 1
            tb = traceback.extract_tb(e.__traceback__)[-1]
            print(f"not ok {name}: {type(e).__name__}: {e} (line {tb.lineno})".replace("\n", " "))
        return fn
    return wrap


def read_run(run):
    """{seq_id: dict(meta, token_id, position, role, logits f32 or u16)} and the root attributes."""
    seqs, attrs = {}, None
    for path in sorted(glob.glob(os.path.join(run, "shard-*.h5"))):
        with h5py.File(path, "r") as f:
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
            lg = f["router/logits"]
            raw = lg[()]
            dt = lg.attrs["dtype"]
            dt = dt.decode() if isinstance(dt, bytes) else dt
            for i, sid in enumerate(f["seq/seq_id"][()]):
                o, n = int(f["seq/token_offset"][i]), int(f["seq/n_tokens"][i])
                s = lambda k: f[k][i].decode() if isinstance(f[k][i], bytes) else f[k][i]  # noqa: E731
                seqs[int(sid)] = dict(unit_id=s("seq/unit_id"), lang=s("seq/lang"), dataset=s("seq/dataset"),
                                      flags=int(f["seq/flags"][i]), token_id=f["tok/token_id"][o:o + n],
                                      position=f["tok/position"][o:o + n], role=f["tok/role"][o:o + n],
                                      logits=raw[o:o + n], dtype=dt)
    return seqs, attrs


def as_stored(t, dtype):
    """Reference tensor -> what the trace stores (f32 values, or bf16 bit patterns)."""
    if dtype == "bf16":
        return t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    return t.to(torch.float32).numpy()


ARCHS = ["qwen2_moe", "qwen3_moe", "olmoe", "mixtral", "phimoe", "gpt_oss"]


def capture_some(model, run, n=3, extra_args=(), **kw):
    """Capture n sequences of different lengths; returns {seq_id: (reference logits, token ids)}."""
    ref = {}
    g = torch.Generator().manual_seed(7)
    with moetrace.Capture(model, out=run, ingest_args=("--no-sync", *extra_args), **kw) as cap:
        for s in range(n):
            ids = torch.randint(0, 97, (5 + 3 * s,), generator=g)
            tiny_moe.clear(model)
            cap.run(ids, seq_id=100 + s, unit_id=f"u{s}", lang=["eng_Latn", "fra_Latn", "zho_Hans"][s % 3],
                    dataset="flores", roles=["template"] + ["prompt"] * (len(ids) - 1))
            ref[100 + s] = (tiny_moe.reference_logits(model), ids)
    return ref


for arch in ARCHS:
    @case(f"capture_{arch}_exact_logits_and_metadata")
    def _(arch=arch):
        model = tiny_moe.build(arch)
        run = os.path.join(WORK, f"run-{arch}")
        ref = capture_some(model, run)
        seqs, attrs = read_run(run)
        assert sorted(seqs) == sorted(ref), f"sequences {sorted(seqs)}"
        for sid, (z, ids) in ref.items():
            got = seqs[sid]
            assert got["dtype"] == "f32", got["dtype"]
            assert np.array_equal(got["logits"], as_stored(z, "f32")), f"seq {sid}: logits differ"
            assert np.array_equal(got["token_id"], ids.numpy()), "token ids"
            assert np.array_equal(got["position"], np.arange(len(ids))), "positions"
            assert got["role"][0] == 0 and np.all(got["role"][1:] == 1), "roles"
            assert got["dataset"] == "flores" and got["unit_id"] == f"u{sid - 100}", "strings"
        blocks = model.moe_blocks()
        assert list(attrs["layer_index"]) == [i for i, _ in blocks], attrs["layer_index"]
        assert attrs["n_experts"] == 8 and attrs["top_k"] == 2 and attrs["model_type"] == arch
        assert attrs["router_bias"] == (arch == "gpt_oss"), "router_bias"
        want = {"gpt_oss": "topk_softmax", "phimoe": "sparsemixer"}.get(arch, "softmax")
        assert attrs["score_fn"] == want, attrs["score_fn"]
        if arch == "phimoe":  # PhimoeConfig's default router_jitter_noise (the tiny config does not set it)
            assert attrs["sparsemixer_eps"] == 0.01 and not attrs["renormalize"], dict(attrs)
        settings = json.loads(attrs["capture_settings"])
        assert settings["ingest"]["producer"] == "moetrace-python", settings


@case("capture_bf16_model_stores_bf16_bit_exact")
def _():
    model = tiny_moe.build("qwen3_moe", dtype=torch.bfloat16)
    run = os.path.join(WORK, "run-bf16")
    ref = capture_some(model, run, n=2)
    seqs, attrs = read_run(run)
    assert attrs["stored_dtype"] == "bf16"
    for sid, (z, _) in ref.items():
        assert z.dtype == torch.bfloat16
        assert np.array_equal(seqs[sid]["logits"], as_stored(z, "bf16")), f"seq {sid}"


@case("capture_generation_steps_and_padded_batch")
def _():
    model = tiny_moe.build("mixtral")
    run = os.path.join(WORK, "run-gen")
    with torch.no_grad(), moetrace.Capture(model, out=run, ingest_args=("--no-sync",)) as cap:
        tiny_moe.clear(model)
        ids = torch.tensor([[5, 6, 7, 8]])
        with cap.sequence(1, "g", "eng_Latn", "mgsm", roles=["prompt"] * 4 + ["generated"] * 3):
            x = ids
            model(input_ids=x)
            for _ in range(3):  # greedy steps, one token each
                model(input_ids=torch.tensor([[int(_ + 1)]]))
        ref_gen = tiny_moe.reference_logits(model)
        tiny_moe.clear(model)
        batch = torch.tensor([[1, 2, 3, 4, 5], [9, 9, 8, 0, 0]])
        mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
        with cap.batch([dict(seq_id=2, unit_id="b0", token_ids=batch[0]), dict(seq_id=3, unit_id="b1", token_ids=batch[1])],
                       mask):
            model(input_ids=batch)
        ref_b = tiny_moe.reference_logits(model).reshape(2, 5, -1, 8)
    seqs, _ = read_run(run)
    assert seqs[1]["logits"].shape[0] == 7 and np.array_equal(seqs[1]["logits"], ref_gen.numpy())
    assert list(seqs[1]["role"]) == [1] * 4 + [3] * 3
    assert np.array_equal(seqs[2]["logits"], ref_b[0].numpy())
    assert np.array_equal(seqs[3]["logits"], ref_b[1, :3].numpy()) and list(seqs[3]["token_id"]) == [9, 9, 8]


@case("capture_fifo_and_socket_sinks")
def _():
    import subprocess
    model = tiny_moe.build("olmoe")
    for kind in ("fifo", "socket"):
        run, path = os.path.join(WORK, f"run-{kind}"), os.path.join(WORK, f"{kind}.in")
        if kind == "fifo":
            os.mkfifo(path)
            proc = subprocess.Popen([os.environ["MOETRACE_CAPTURE"], "ingest", "--out", run, "--input", path,
                                     "--no-sync", "--quiet"])
            sink = moetrace.FileSink(path)
        else:
            proc = subprocess.Popen([os.environ["MOETRACE_CAPTURE"], "ingest", "--out", run, "--listen", path,
                                     "--no-sync", "--quiet"])
            try:
                sink = moetrace.SocketSink(path)
            except OSError:
                proc.kill()
                proc.wait()
                raise
        try:
            tiny_moe.clear(model)
            with moetrace.Capture(model, sink=sink) as cap:
                cap.run(torch.arange(6), seq_id=0, unit_id="x", lang="deu_Latn")
            assert proc.wait(timeout=60) == 0, f"{kind}: ingest exited {proc.returncode}"
        finally:
            if proc.poll() is None:  # never leave an ingest behind: it would hold the test runner's pipe open
                proc.kill()
                proc.wait()
        seqs, _ = read_run(run)
        assert np.array_equal(seqs[0]["logits"], tiny_moe.reference_logits(model).numpy()), kind


@case("capture_resume_skips_stored_sequences")
def _():
    model = tiny_moe.build("qwen3_moe")
    run = os.path.join(WORK, "run-resume")
    capture_some(model, run, n=2)
    ref = capture_some(model, run, n=3, extra_args=("--resume",))
    seqs, _ = read_run(run)
    assert sorted(seqs) == [100, 101, 102], sorted(seqs)
    assert np.array_equal(seqs[102]["logits"], ref[102][0].numpy())


@case("capture_ingest_failure_raises")
def _():
    model = tiny_moe.build("qwen3_moe")
    run = os.path.join(WORK, "run-resume")  # exists: ingest refuses without --resume
    try:
        with moetrace.Capture(model, out=run) as cap:
            cap.run(torch.arange(4), seq_id=0)
    except moetrace.IngestError as e:
        assert e.status == 1 and "ingest" in e.message, e.message
    else:
        raise AssertionError("no IngestError")


# ---- steering against the native implementation ------------------------------------------------------------

lib = ctypes.CDLL(os.path.join(LIB, "libmoetrace.so"))


class SteerStruct(ctypes.Structure):  # the leading fields of mtr_steer (traces/mtr_steer.h)
    _fields_ = [("name", ctypes.c_char * 64), ("model_id", ctypes.c_char * 256), ("n_layers", ctypes.c_uint32),
                ("n_experts", ctypes.c_uint32), ("top_k", ctypes.c_uint32), ("layer_index", ctypes.c_void_p),
                ("op", ctypes.c_int), ("lam", ctypes.c_double), ("eps_mode", ctypes.c_int), ("eps", ctypes.c_double),
                ("seed", ctypes.c_uint64)]


lib.mtr_steer_create.argtypes = [ctypes.POINTER(ctypes.POINTER(SteerStruct)), ctypes.c_char_p, ctypes.c_uint32,
                                 ctypes.c_uint32, ctypes.c_uint32, ctypes.c_int]
lib.mtr_steer_add.argtypes = [ctypes.POINTER(SteerStruct), ctypes.c_uint32, ctypes.c_uint32, ctypes.c_double,
                              ctypes.c_double]
lib.mtr_steer_write.argtypes = [ctypes.POINTER(SteerStruct), ctypes.c_char_p, ctypes.c_char_p]
lib.mtr_steer_load.argtypes = [ctypes.POINTER(ctypes.POINTER(SteerStruct)), ctypes.c_char_p]
lib.mtr_steer_apply.argtypes = [ctypes.POINTER(SteerStruct), ctypes.c_uint32, ctypes.POINTER(ctypes.c_float),
                                ctypes.POINTER(ctypes.c_uint64)]
lib.mtr_steer_destroy.argtypes = [ctypes.POINTER(SteerStruct)]
lib.mtr_errmsg.restype = ctypes.c_char_p
OPS = {"soft": 0, "hard": 1, "off": 2, "bias": 3}


def write_steering(path, model_id, op, experts, L=4, E=8, K=2, lam=0.5, eps_mode=0, eps=1e-6, seed=42):
    s = ctypes.POINTER(SteerStruct)()
    assert lib.mtr_steer_create(ctypes.byref(s), model_id.encode(), L, E, K, OPS[op]) == 0
    s.contents.lam, s.contents.eps_mode, s.contents.eps, s.contents.seed = lam, eps_mode, eps, seed
    for layer, e, c in experts:
        assert lib.mtr_steer_add(s, layer, e, c, float("nan")) == 0, lib.mtr_errmsg()
    assert lib.mtr_steer_write(s, path.encode(), None) == 0, lib.mtr_errmsg()
    lib.mtr_steer_destroy(s)


def native_apply(path, z, layer, seed_state):
    """mtr_steer_apply over the rows of z (N, E) f32, the rng continuing across rows."""
    s = ctypes.POINTER(SteerStruct)()
    assert lib.mtr_steer_load(ctypes.byref(s), path.encode()) == 0, lib.mtr_errmsg()
    out = np.ascontiguousarray(z.numpy().astype(np.float32))
    rng = ctypes.c_uint64(seed_state)
    for r in range(out.shape[0]):
        lib.mtr_steer_apply(s, layer, out[r].ctypes.data_as(ctypes.POINTER(ctypes.c_float)), ctypes.byref(rng))
    lib.mtr_steer_destroy(s)
    return out


STEER_CASES = [
    ("soft", dict(experts=[(1, 2, float("nan")), (1, 5, float("nan")), (2, 0, float("nan"))], lam=0.5)),
    ("soft_negative", dict(experts=[(2, 3, -0.7)], lam=0.5)),
    ("hard_gaussian", dict(experts=[(1, 6, float("nan")), (1, 7, float("nan")), (2, 1, float("nan"))], eps=1e-3)),
    ("hard_fixed", dict(experts=[(0, 4, float("nan")), (3, 2, float("nan"))], eps_mode=1, eps=0.01)),
    ("off", dict(experts=[(1, 0, float("nan")), (2, 5, float("nan"))], eps=1e-3)),
    ("bias", dict(experts=[(1, 3, 1.25), (2, 4, -2.5)])),
]

for arch in ("qwen3_moe", "mixtral", "gpt_oss"):
    for name, kw in STEER_CASES:
        @case(f"steer_{arch}_{name}_equals_native")
        def _(arch=arch, name=name, kw=kw):
            op = name.split("_")[0]
            model = tiny_moe.build(arch)
            path = os.path.join(WORK, f"steer-{arch}-{name}.h5")
            write_steering(path, f"tiny/{arch}", op, **kw)
            ids = torch.arange(11).reshape(1, -1) % 97
            with torch.no_grad():
                plain = model(input_ids=ids)
            for fmt in ("h5", "json"):
                p = path if fmt == "h5" else path[:-3] + ".json"
                seen = {}
                with moetrace.SteeringHook(model, p) as hook:
                    routers = moetrace.registry.find_routers(model, hook.arch)
                    hooks = []
                    for pos, (_, _, mod) in enumerate(routers):
                        def obs(m, i, o, pos=pos):
                            seen[pos] = (i[0].reshape(-1, m.weight.shape[1]), o)
                        hooks.append(mod.register_forward_hook(obs))
                    with torch.no_grad():
                        steered = model(input_ids=ids)
                    for h in hooks:
                        h.remove()
                sf = moetrace.SteeringFile.load(p)
                changed = False
                for layer in range(4):
                    x, out = seen[layer]
                    mod = routers[layer][2]
                    with torch.no_grad():  # what this router computed before steering, in the steered run
                        z0 = torch.nn.functional.linear(x, mod.weight, getattr(mod, "bias", None))
                    want = native_apply(p, z0, layer, moetrace.steering.layer_seed(sf.seed, layer))
                    got, _ = sf.apply(z0, layer, moetrace.steering.layer_seed(sf.seed, layer))
                    assert np.array_equal(got.numpy(), want), f"{fmt} layer {layer}: apply differs from native"
                    if arch == "gpt_oss":  # the router returns routing scores: compare with routing the native logits
                        ref = moetrace.registry._gpt_oss_route(mod, torch.as_tensor(want))
                        assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1]), f"{fmt} layer {layer}: scores"
                    else:
                        assert np.array_equal(out.numpy(), want), f"{fmt} layer {layer}: hook output"
                    changed |= not np.array_equal(want, z0.numpy())
                assert changed, "steering changed nothing"
                if op == "hard":
                    assert not torch.equal(plain, steered), "model output unchanged"


@case("steer_hard_forces_experts_into_topk_and_trace_keeps_unsteered")
def _():
    model = tiny_moe.build("qwen3_moe")
    path = os.path.join(WORK, "steer-force.h5")
    write_steering(path, "tiny/qwen3_moe", "hard", [(1, 6, float("nan")), (1, 7, float("nan"))], eps_mode=1, eps=0.01)
    run = os.path.join(WORK, "run-steered")
    with moetrace.SteeringHook(model, path) as hook:
        tiny_moe.clear(model)
        with moetrace.Capture(model, out=run, ingest_args=("--no-sync",), steering=hook) as cap:
            cap.run(torch.arange(9), seq_id=5)
    seqs, attrs = read_run(run)
    steered_seen = tiny_moe.reference_logits(model)  # the blocks record the (steered) gate output they used
    z = torch.as_tensor(seqs[5]["logits"])
    sf = moetrace.SteeringFile.load(path)
    st, _ = sf.apply(z[:, 1, :], 1, moetrace.steering.layer_seed(sf.seed, 1))
    top = torch.topk(torch.softmax(st, -1), 2, -1).indices
    assert torch.all(torch.sort(top, -1).values == torch.tensor([6, 7])), "forced experts not selected"
    assert seqs[5]["flags"] & 2, "sequence not flagged as steered"
    assert json.loads(attrs["steering"])["op"] == "hard", attrs["steering"]
    # the block saw the steered logits; the trace holds the unsteered ones
    assert np.array_equal(steered_seen[:, 1, :].numpy(), st.numpy()), "block did not see the steered logits"
    assert np.array_equal(steered_seen[:, 0, :].numpy(), z[:, 0, :].numpy()), "untargeted layer changed"


@case("steer_hard_bf16_forced_expert_beats_the_maximum")
def _():
    # bf16 logits: max + eps (eps far below one bf16 step) must not round back into a tie with the maximum
    path = os.path.join(WORK, "steer-bf16.h5")
    write_steering(path, "tiny/qwen3_moe", "hard", [(1, 3, float("nan"))], eps_mode=1, eps=1e-6)
    sf = moetrace.SteeringFile.load(path)
    g = torch.Generator().manual_seed(7)
    z = (torch.randn(64, 8, generator=g) * 3).to(torch.bfloat16)
    z[:, 5] = z.float().amax(-1).to(torch.bfloat16)  # a tie at the top already
    st, _ = sf.apply(z, 1, None)
    assert st.dtype == torch.bfloat16
    mx = z.float().amax(-1)
    assert torch.all(st[:, 3].float() > mx), "forced expert tied with or below the maximum after bf16 rounding"
    assert torch.all(torch.topk(st.float(), 2, -1).indices[:, 0] == 3), "forced expert is not the first choice"
    others = [e for e in range(8) if e != 3]
    assert torch.equal(st[:, others], z[:, others]), "other experts changed"


@case("steer_refuses_other_model_shape")
def _():
    model = tiny_moe.build("olmoe", E=16)
    path = os.path.join(WORK, "steer-force.h5")
    try:
        moetrace.SteeringHook(model, path, model_type="olmoe")
    except ValueError as e:
        assert "experts" in str(e) or "model" in str(e)
    else:
        raise AssertionError("accepted a file for another model")


import shutil  # noqa: E402
shutil.rmtree(WORK, ignore_errors=True)
sys.exit(1 if failures else 0)
