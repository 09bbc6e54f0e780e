#!/usr/bin/env python3
"""Cross-check a split ONNX model against the whole model with onnxruntime.

    python3 corpus/check_ort.py MODEL.onnx PLAN_DIR [PLAN_DIR...] [--inputs DIR]
    python3 corpus/check_ort.py --self-test [MODEL.onnx ...] [--stages N]

Each PLAN_DIR holds a ``plan.json``::

    {"stages": [{"index": 0, "tier": "device", "file": "stage0.onnx",
                 "inputs": ["gpu_0/data_0"], "outputs": ["r60"]}, ...]}

``file`` is relative to PLAN_DIR; other keys are ignored.  The script

1. loads the model inputs from ``--inputs DIR`` (``<name>.npy``, or the name
   with characters outside ``[A-Za-z0-9_.-]`` replaced by ``_``, as
   ``corpus/fetch.py`` writes them; default: ``MODEL.inputs/`` next to MODEL);
2. runs the whole model with onnxruntime (CPUExecutionProvider, graph
   optimisations disabled by default, deterministic compute), also capturing
   every tensor that crosses a stage boundary;
3. for every plan: checks each stage file with ``onnx.checker.check_model``
   (``full_check=True`` unless ``--no-full-check``), checks that the plan's
   ``inputs``/``outputs`` match the stage file's graph, then runs the stages in
   ``index`` order, feeding each from a dict of tensors (model inputs + earlier
   stages' outputs);
4. compares every model output, and every boundary tensor, with the whole-model
   value: same shape and dtype, and |a - b| <= tol * (1 + |b|) elementwise
   (tol = 1e-4) for floats, equality otherwise.

It prints ``ok <model> <plan-dir>: N stages, max err E`` per plan, or
``FAIL <model> <plan-dir>: <reason>``, and exits 1 if any plan failed (2 for
usage errors).

``--self-test`` splits models (default: ``corpus/models/multi_io.onnx``) into
``--stages`` parts (default 2) with ``onnx.utils.extract_model``, writes a
plan in a temporary folder and checks it; it also checks that a tampered
stage and a miswired plan are caught.  This tests the script itself.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile

import numpy as np
import onnx
from onnx import helper

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_TOL = 1e-4
MAX_PROTO = 2_000_000_000


class CheckError(Exception):
    """A mismatch or malformed plan; the message names the culprit."""


# --------------------------------------------------------------------------- helpers

def safe_file_name(tensor_name: str) -> str:
    """Same mapping as corpus/fetch.py uses for the sample-input files."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", tensor_name)


def real_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are not initializers (IR < 4 lists every initializer as an input)."""
    inits = {i.name for i in graph.initializer}
    return [i for i in graph.input if i.name not in inits]


def session(model, opt: str, threads: int):
    """onnxruntime CPU session from a path or serialized bytes."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    }[opt]
    so.use_deterministic_compute = True
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def load_inputs(model: onnx.ModelProto, model_path: str, inputs_dir: str | None) -> dict[str, np.ndarray]:
    """Read one .npy per real model input and check it against the declared type/shape."""
    if inputs_dir is None:
        inputs_dir = os.path.splitext(model_path)[0] + ".inputs"
    feeds = {}
    for vi in real_inputs(model.graph):
        cands = [os.path.join(inputs_dir, vi.name + ".npy"), os.path.join(inputs_dir, safe_file_name(vi.name) + ".npy")]
        path = next((c for c in cands if os.path.isfile(c)), None)
        if path is None:
            raise CheckError(f"no sample input for model input {vi.name!r}: looked for {' or '.join(cands)}")
        arr = np.load(path, allow_pickle=False)
        want = np.dtype(helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
        if arr.dtype != want:
            raise CheckError(f"{path}: dtype {arr.dtype}, model input {vi.name!r} wants {want}")
        dims = vi.type.tensor_type.shape.dim
        fixed = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]
        if len(fixed) != arr.ndim or any(f is not None and f != s for f, s in zip(fixed, arr.shape)):
            raise CheckError(f"{path}: shape {list(arr.shape)} does not fit model input {vi.name!r} "
                             f"declared {[f if f is not None else '?' for f in fixed]}")
        feeds[vi.name] = arr
    return feeds


def compare(what: str, got: np.ndarray, ref: np.ndarray, tol: float) -> float:
    """Raise CheckError unless ``got`` matches ``ref``; return the max absolute error."""
    if got.dtype != ref.dtype:
        raise CheckError(f"{what}: dtype {got.dtype}, whole model gives {ref.dtype}")
    if got.shape != ref.shape:
        raise CheckError(f"{what}: shape {list(got.shape)}, whole model gives {list(ref.shape)}")
    if got.size == 0:
        return 0.0
    if not np.issubdtype(ref.dtype, np.floating):
        bad = got != ref
        if np.any(bad):
            i = np.unravel_index(np.argmax(bad), bad.shape)
            raise CheckError(f"{what}: {int(bad.sum())} of {bad.size} values differ, e.g. at {[int(k) for k in i]}: "
                             f"{got[i]} vs {ref[i]}")
        return 0.0
    a, b = got.astype(np.float64), ref.astype(np.float64)
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    if np.any(nan_a != nan_b):
        raise CheckError(f"{what}: NaN in {int(nan_a.sum())} values, whole model has {int(nan_b.sum())}")
    ok = ~nan_b
    err = np.abs(a - b)
    err[~ok] = 0.0
    err[np.isinf(b) & (a == b)] = 0.0
    limit = tol * (1.0 + np.abs(b))
    bad = ok & ~(err <= limit)
    if np.any(bad):
        i = np.unravel_index(np.argmax(np.where(bad, err / np.where(np.isinf(limit), 1, limit), 0)), bad.shape)
        raise CheckError(f"{what}: {int(bad.sum())} of {bad.size} values off by more than "
                         f"{tol:g}*(1+|ref|), worst at {[int(k) for k in i]}: {a[i]:.7g} vs {b[i]:.7g}")
    return float(err.max())


# --------------------------------------------------------------------------- reference

class Reference:
    """Whole-model run; computes requested intermediate tensors on demand (one run per request set)."""

    def __init__(self, model_path: str, feeds: dict, opt: str, threads: int):
        self.model_path, self.feeds, self.opt, self.threads = model_path, feeds, opt, threads
        self.model = onnx.load(model_path)
        sess = session(model_path, opt, threads)
        names = [o.name for o in sess.get_outputs()]
        self.values = dict(zip(names, sess.run(names, feeds)))
        self.outputs = names
        for name, v in self.values.items():
            if np.issubdtype(v.dtype, np.floating) and not np.all(np.isfinite(v)):
                raise CheckError(f"whole model output {name!r} has non-finite values; nothing to compare")
        self._types = None
        self.untyped: set[str] = set()

    def _tensor_types(self) -> dict[str, int]:
        if self._types is None:
            m = self.model
            try:
                m = onnx.shape_inference.infer_shapes(m)
            except Exception:  # noqa: BLE001 - fall back to whatever the model declares
                pass
            g = m.graph
            self._types = {v.name: v.type.tensor_type.elem_type
                           for v in list(g.value_info) + list(g.output) + list(g.input)
                           if v.type.tensor_type.elem_type}
        return self._types

    def fetch(self, names) -> None:
        """Make sure ``values`` holds every name (intermediate tensors are added as extra outputs)."""
        want = [n for n in dict.fromkeys(names) if n not in self.values and n not in self.untyped]
        want = [n for n in want if n not in self.feeds]
        if not want:
            return
        if self.model.ByteSize() > MAX_PROTO:
            self.untyped.update(want)
            return
        types = self._tensor_types()
        for n in want:
            if n not in types:
                self.untyped.add(n)
        want = [n for n in want if n in types]
        if not want:
            return
        m = onnx.ModelProto()
        m.CopyFrom(self.model)
        m.graph.output.extend(helper.make_tensor_value_info(n, types[n], None) for n in want)
        sess = session(m.SerializeToString(), self.opt, self.threads)
        self.values.update(zip(want, sess.run(want, self.feeds)))


# --------------------------------------------------------------------------- plans

def load_plan(plan_dir: str) -> list[dict]:
    path = os.path.join(plan_dir, "plan.json")
    try:
        with open(path) as f:
            plan = json.load(f)
    except FileNotFoundError:
        raise CheckError(f"{path} does not exist") from None
    except json.JSONDecodeError as e:
        raise CheckError(f"{path} is not valid JSON: {e}") from None
    stages = plan.get("stages") if isinstance(plan, dict) else None
    if not isinstance(stages, list) or not stages:
        raise CheckError(f"{path}: expected a non-empty \"stages\" list")
    for k, st in enumerate(stages):
        for key, typ in (("index", int), ("file", str), ("inputs", list), ("outputs", list)):
            if not isinstance(st.get(key), typ):
                raise CheckError(f"{path}: stage #{k} lacks {key!r} ({typ.__name__})")
    idx = [st["index"] for st in stages]
    if len(set(idx)) != len(idx):
        raise CheckError(f"{path}: duplicate stage indices {sorted(idx)}")
    return sorted(stages, key=lambda st: st["index"])


def stage_label(st: dict) -> str:
    return f"stage {st['index']} ({st.get('tier', '?')}, {st['file']})"


def check_plan(ref: Reference, plan_dir: str, tol: float, full_check: bool, boundaries: bool) -> tuple[int, float]:
    """Run one plan against the reference; return (number of stages, max abs error on model outputs)."""
    stages = load_plan(plan_dir)
    env = dict(ref.feeds)
    producer: dict[str, str] = {n: "model input" for n in env}
    crossing: list[tuple[str, str]] = []           # (tensor, producing stage) for boundary checks
    for st in stages:
        label = stage_label(st)
        path = os.path.join(plan_dir, st["file"])
        if not os.path.isfile(path):
            raise CheckError(f"{label}: file {path} does not exist")
        try:
            onnx.checker.check_model(path, full_check=full_check)
        except Exception as e:  # noqa: BLE001
            raise CheckError(f"{label}: onnx.checker.check_model(full_check={full_check}) failed: {e}") from None
        try:
            sess = session(path, ref.opt, ref.threads)
        except Exception as e:  # noqa: BLE001
            raise CheckError(f"{label}: onnxruntime cannot load it: {e}") from None
        sess_in = [i.name for i in sess.get_inputs()]
        sess_out = [o.name for o in sess.get_outputs()]
        missing = [n for n in sess_in if n not in st["inputs"]]
        extra = [n for n in st["inputs"] if n not in sess_in]
        if missing or extra:
            raise CheckError(f"{label}: plan inputs {st['inputs']} do not match the stage graph's inputs {sess_in}"
                             + (f"; graph needs {missing} not in plan" if missing else "")
                             + (f"; plan lists {extra} the graph does not take" if extra else ""))
        absent = [n for n in st["outputs"] if n not in sess_out]
        if absent:
            raise CheckError(f"{label}: plan outputs {absent} are not outputs of the stage graph {sess_out}")
        feeds = {}
        for n in sess_in:
            if n not in env:
                raise CheckError(f"{label}: needs tensor {n!r}, which no model input or earlier stage provides")
            feeds[n] = env[n]
        try:
            vals = sess.run(st["outputs"], feeds)
        except Exception as e:  # noqa: BLE001
            raise CheckError(f"{label}: onnxruntime failed: {e}") from None
        for n, v in zip(st["outputs"], vals):
            env[n] = v
            producer[n] = label
            crossing.append((n, label))

    max_err = 0.0
    for n in ref.outputs:
        if n not in env:
            raise CheckError(f"model output {n!r} is produced by no stage")
        max_err = max(max_err, compare(f"model output {n!r} (from {producer[n]})", env[n], ref.values[n], tol))
    if boundaries:
        ref.fetch([n for n, _ in crossing])
        for n, label in crossing:
            if n in ref.values:
                compare(f"boundary tensor {n!r} from {label}", env[n], ref.values[n], tol)
    return len(stages), max_err


# --------------------------------------------------------------------------- self-test

def split_model(model_path: str, n_stages: int, out_dir: str) -> dict:
    """Cut the node list into ``n_stages`` contiguous parts with onnx.utils.extract_model; write a plan."""
    model = onnx.load(model_path, load_external_data=False)
    g = model.graph
    # Constant nodes are treated like initializers: extract_model copies them into every stage that
    # needs them, so they never cross a boundary and never form a stage on their own.
    nodes = [nd for nd in g.node if nd.op_type != "Constant"]
    inits = {i.name for i in g.initializer} | {t for nd in g.node if nd.op_type == "Constant" for t in nd.output}
    model_in = [i.name for i in real_inputs(g)]
    model_out = [o.name for o in g.output]
    bounds = [round(k * len(nodes) / n_stages) for k in range(n_stages + 1)]
    produced_by = {t: k for k, nd in enumerate(nodes) for t in nd.output}
    tiers = ["device", "edge", "cloud"]
    os.makedirs(out_dir, exist_ok=True)
    stages = []
    for s in range(n_stages):
        lo, hi = bounds[s], bounds[s + 1]
        mine = nodes[lo:hi]
        used = [t for nd in mine for t in nd.input if t and t not in inits]
        ins = list(dict.fromkeys(t for t in used if t in model_in or produced_by.get(t, hi) < lo))
        later = {t for nd in nodes[hi:] for t in nd.input}
        outs = list(dict.fromkeys(t for nd in mine for t in nd.output if t in later or t in model_out))
        if not ins:
            raise CheckError(f"cannot split {model_path}: stage {s} (nodes {lo}..{hi}) has no inputs")
        if not outs:
            continue
        fname = f"stage{s}.onnx"
        path = os.path.join(out_dir, fname)
        onnx.utils.extract_model(model_path, path, ins, outs, check_model=False)
        if model.ir_version < 4:
            # IR < 4 requires every initializer to be listed as a graph input; extract_model forgets that.
            sm = onnx.load(path)
            listed = {i.name for i in sm.graph.input}
            sm.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                                  for t in sm.graph.initializer if t.name not in listed)
            onnx.save(sm, path)
        stages.append({"index": s, "tier": tiers[min(s, 2)], "file": fname, "inputs": ins, "outputs": outs})
    plan = {"model": os.path.basename(model_path), "stages": stages}
    with open(os.path.join(out_dir, "plan.json"), "w") as f:
        json.dump(plan, f, indent=2)
    return plan


def self_test(models: list[str], n_stages: int, args) -> int:
    """Split each model, check the plan passes, and that a tampered/miswired copy fails."""
    failures = 0
    if not models:
        models = [os.path.join(HERE, "models", "multi_io.onnx")]
        if not os.path.isfile(models[0]):
            sys.path.insert(0, HERE)
            import fetch  # corpus/fetch.py; builds the model without the wheels
            tmp = tempfile.mkdtemp(prefix="strata-selftest-model-")
            m, _ = fetch.gen_multi_io()
            models = [os.path.join(tmp, "multi_io.onnx")]
            onnx.save(m, models[0])
    for model_path in models:
        name = os.path.splitext(os.path.basename(model_path))[0]
        with tempfile.TemporaryDirectory(prefix=f"strata-selftest-{name}-") as tmp:
            model = onnx.load(model_path)
            inputs_dir = args.inputs or os.path.splitext(model_path)[0] + ".inputs"
            if not os.path.isdir(inputs_dir):
                inputs_dir = os.path.join(tmp, "inputs")
                os.makedirs(inputs_dir)
                rng = np.random.default_rng(0)
                for vi in real_inputs(model.graph):
                    shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
                    dt = np.dtype(helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
                    arr = rng.random(shape).astype(dt) if dt.kind == "f" else np.zeros(shape, dt)
                    np.save(os.path.join(inputs_dir, safe_file_name(vi.name) + ".npy"), arr)
            ref = Reference(model_path, load_inputs(model, model_path, inputs_dir), args.opt, args.threads)
            good = os.path.join(tmp, "good")
            plan = split_model(model_path, n_stages, good)
            try:
                n, err = check_plan(ref, good, args.tol, not args.no_full_check, True)
                print(f"ok {name} self-test split: {n} stages, max err {err:.2g}")
            except CheckError as e:
                print(f"FAIL {name} self-test split: {e}")
                failures += 1
                continue
            if len(plan["stages"]) < 2:
                continue
            # Negative 1: perturb the largest float initializer of the last stage.
            bad = os.path.join(tmp, "tampered")
            split_model(model_path, n_stages, bad)
            last = os.path.join(bad, plan["stages"][-1]["file"])
            sm = onnx.load(last)
            floats = [t for t in sm.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
            if floats:
                t = max(floats, key=lambda t: np.prod(t.dims))
                arr = onnx.numpy_helper.to_array(t) * np.float32(1.01) + np.float32(0.01)
                t.CopyFrom(onnx.numpy_helper.from_array(arr, t.name))
                onnx.save(sm, last)
                failures += _expect_failure(ref, bad, args, f"{name} tampered initializer {t.name!r}")
            # Negative 2: drop one input from the plan of the last stage.
            wired = os.path.join(tmp, "miswired")
            p = split_model(model_path, n_stages, wired)
            p["stages"][-1]["inputs"] = p["stages"][-1]["inputs"][1:]
            with open(os.path.join(wired, "plan.json"), "w") as f:
                json.dump(p, f)
            failures += _expect_failure(ref, wired, args, f"{name} plan missing an input")
    print("self-test " + ("passed" if not failures else f"FAILED ({failures})"))
    return 1 if failures else 0


def _expect_failure(ref: Reference, plan_dir: str, args, what: str) -> int:
    try:
        check_plan(ref, plan_dir, args.tol, not args.no_full_check, True)
    except CheckError as e:
        print(f"ok self-test caught {what}: {str(e)[:150]}")
        return 0
    print(f"FAIL self-test did not catch {what}")
    return 1


# --------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("model", nargs="?", help="whole model (.onnx)")
    ap.add_argument("plans", nargs="*", help="plan folders, each with plan.json")
    ap.add_argument("--inputs", help="folder with one .npy per model input (default: MODEL.inputs/)")
    ap.add_argument("--tol", type=float, default=DEFAULT_TOL, help="relative tolerance (default 1e-4)")
    ap.add_argument("--opt", choices=["disable", "basic"], default="disable", help="onnxruntime graph optimisations")
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: default)")
    ap.add_argument("--no-full-check", action="store_true", help="check_model without full_check")
    ap.add_argument("--no-boundaries", action="store_true", help="compare model outputs only")
    ap.add_argument("--self-test", action="store_true", help="split models with extract_model and check them")
    ap.add_argument("--stages", type=int, default=2, help="stages per self-test split (default 2)")
    args = ap.parse_args(argv)

    if args.self_test:
        models = [m for m in [args.model] + args.plans if m]
        return self_test(models, args.stages, args)
    if not args.model or not args.plans:
        ap.error("need MODEL.onnx and at least one PLAN_DIR (or --self-test)")
    if not os.path.isfile(args.model):
        ap.error(f"model {args.model} does not exist")

    name = os.path.splitext(os.path.basename(args.model))[0]
    try:
        model = onnx.load(args.model)
        ref = Reference(args.model, load_inputs(model, args.model, args.inputs), args.opt, args.threads)
        del model
    except CheckError as e:
        print(f"FAIL {name}: {e}")
        return 1
    failed = 0
    for plan_dir in args.plans:
        try:
            n, err = check_plan(ref, plan_dir, args.tol, not args.no_full_check, not args.no_boundaries)
            note = f" ({len(ref.untyped)} boundary tensors without type info not compared)" if ref.untyped else ""
            print(f"ok {name} {plan_dir}: {n} stages, max err {err:.2g}{note}")
        except CheckError as e:
            print(f"FAIL {name} {plan_dir}: {e}")
            failed += 1
    if failed:
        print(f"check_ort: {failed} of {len(args.plans)} plans FAILED for {args.model}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
