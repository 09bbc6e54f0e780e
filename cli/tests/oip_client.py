"""A v2 client for cli/tests/oip.rs: tritonclient.grpc, unchanged, against Strata agents.

Runs the steps of a JSON plan (argv[1]) and writes what it saw to a JSON report (argv[2]); the Rust test
asserts on the report, so this script judges nothing itself except numbers: each inference's outputs are
compared with onnxruntime's run of the whole model (the report carries the largest difference, scaled as the
cluster's tolerance is: |a - b| / (1 + |b|)) and saved as .npy for the test to compare with tract's.

Steps (each names an agent of the plan's "agents": url, TLS server name, and the client's credentials):
  server    ServerLive, ServerReady, ServerMetadata
  metadata  ModelReady and ModelMetadata of "model"
  infer     ModelInfer of "model" with "inputs" (name -> .npy), "mode" raw (tritonclient's own InferInput:
            raw_input_contents) or typed (the same client's generated stub, typed contents); "mutate" breaks
            the request: "dtype" (first INT64 input sent as INT32), "shape" (first input with a doubled batch),
            "count" (typed contents one element short); inputs go in name order
Credentials: "cert"/"key" of the step or of its agent; "no_cert" connects with the CA only.
"""

import json
import os
import sys

import grpc
import numpy as np
import onnxruntime as ort
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, np_to_triton_dtype, triton_to_np_dtype

# The typed field of each datatype (FP16 has none).
FIELDS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


def read(path):
    with open(path, "rb") as f:
        return f.read()


def credentials(agent, step):
    """The ssl=True options of tritonclient: file paths (it reads them itself)."""
    if step.get("no_cert"):
        return {"root_certificates": agent["ca"]}
    return {
        "root_certificates": agent["ca"],
        "private_key": step.get("key", agent["key"]),
        "certificate_chain": step.get("cert", agent["cert"]),
    }


def options(agent):
    # The agent's certificate names its identity (NAME.TIER.id.strata), not 127.0.0.1.
    return [("grpc.ssl_target_name_override", agent["server_name"])]


def client(agent, step):
    return triton.InferenceServerClient(
        url=agent["url"], ssl=True, channel_args=options(agent), **credentials(agent, step)
    )


def stub(agent, step):
    c = credentials(agent, step)
    creds = grpc.ssl_channel_credentials(
        root_certificates=read(c["root_certificates"]),
        private_key=read(c["private_key"]) if "private_key" in c else None,
        certificate_chain=read(c["certificate_chain"]) if "certificate_chain" in c else None,
    )
    channel = grpc.secure_channel(agent["url"], creds, options=options(agent))
    return service_pb2_grpc.GRPCInferenceServiceStub(channel)


def failure(e):
    """An error as (code name, message), from tritonclient or a raw stub."""
    if isinstance(e, InferenceServerException):
        code = str(e.status() or "")
        return code.replace("StatusCode.", ""), e.message()
    if isinstance(e, grpc.RpcError):
        return e.code().name, e.details()
    return type(e).__name__, str(e)


def metadata(m):
    tensors = lambda ts: [
        {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in ts
    ]
    return {
        "name": m.name,
        "versions": list(m.versions),
        "platform": m.platform,
        "inputs": tensors(m.inputs),
        "outputs": tensors(m.outputs),
    }


def inputs_of(step):
    # In name order, so that "the first input" a mutation breaks is always the same one.
    arrays = {name: np.load(step["inputs"][name]) for name in sorted(step["inputs"])}
    mutate = step.get("mutate")
    declared = {name: (np_to_triton_dtype(a.dtype), list(a.shape)) for name, a in arrays.items()}
    if mutate == "dtype":
        name = next(n for n, a in arrays.items() if a.dtype == np.int64)
        arrays[name] = arrays[name].astype(np.int32)
        declared[name] = ("INT32", list(arrays[name].shape))
    if mutate == "shape":
        name = next(iter(arrays))
        arrays[name] = np.concatenate([arrays[name], arrays[name]])
        declared[name] = (declared[name][0], list(arrays[name].shape))
    return arrays, declared


def infer_raw(agent, step, arrays, declared):
    inputs = []
    for name, a in arrays.items():
        i = triton.InferInput(name, declared[name][1], declared[name][0])
        i.set_data_from_numpy(a)
        inputs.append(i)
    result = client(agent, step).infer(step["model"], inputs, request_id=step.get("id", ""))
    response = result.get_response()
    outputs = {o.name: result.as_numpy(o.name) for o in response.outputs}
    return outputs, {
        "raw_output_contents": len(response.raw_output_contents),
        "id": response.id,
        "model_version": response.model_version,
    }


def infer_typed(agent, step, arrays, declared):
    request = service_pb2.ModelInferRequest(model_name=step["model"], id=step.get("id", ""))
    for name, a in arrays.items():
        datatype, shape = declared[name]
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        values = a.flatten().tolist()
        if step.get("mutate") == "count":
            values = values[:-1]
        getattr(tensor.contents, FIELDS[datatype]).extend(values)
    response = stub(agent, step).ModelInfer(request, timeout=30)
    outputs = {}
    for o in response.outputs:
        values = getattr(o.contents, FIELDS[o.datatype])
        outputs[o.name] = np.array(values, dtype=triton_to_np_dtype(o.datatype)).reshape(list(o.shape))
    return outputs, {
        "raw_output_contents": len(response.raw_output_contents),
        "id": response.id,
        "model_version": response.model_version,
    }


def compare(step, arrays, outputs, out_dir):
    session = ort.InferenceSession(step["onnx"])
    names = [o.name for o in session.get_outputs()]
    reference = dict(zip(names, session.run(names, arrays)))
    diffs, saved = {}, {}
    for i, (name, want) in enumerate(reference.items()):
        got = outputs.get(name)
        if got is None:
            diffs[name] = None
            continue
        if got.shape != want.shape or got.dtype != want.dtype:
            diffs[name] = f"{got.dtype}{list(got.shape)} != {want.dtype}{list(want.shape)}"
            continue
        a, b = got.astype(np.float64), want.astype(np.float64)
        diffs[name] = float(np.max(np.abs(a - b) / (1.0 + np.abs(b)))) if a.size else 0.0
        saved[name] = os.path.join(out_dir, f"{step['tag']}.{i}.npy")
        np.save(saved[name], np.ascontiguousarray(got))
    tensors = {name: {"dtype": str(o.dtype), "shape": list(o.shape)} for name, o in outputs.items()}
    return diffs, tensors, saved


def run(step, plan):
    agent = plan["agents"][step["agent"]]
    op = step["op"]
    if op == "server":
        c = client(agent, step)
        m = c.get_server_metadata()
        return {
            "live": c.is_server_live(),
            "ready": c.is_server_ready(),
            "name": m.name,
            "version": m.version,
        }
    if op == "metadata":
        c = client(agent, step)
        return {
            "ready": c.is_model_ready(step["model"]),
            "metadata": metadata(c.get_model_metadata(step["model"])),
        }
    if op == "infer":
        arrays, declared = inputs_of(step)
        call = infer_raw if step["mode"] == "raw" else infer_typed
        outputs, response = call(agent, step, arrays, declared)
        diffs, tensors, saved = compare(step, arrays, outputs, plan["out"])
        return {"diffs": diffs, "outputs": tensors, "order": list(outputs), "saved": saved, **response}
    raise ValueError(f"unknown op {op}")


def main():
    plan = json.loads(read(sys.argv[1]))
    report = []
    for step in plan["steps"]:
        try:
            entry = {"ok": True, **run(step, plan)}
        except Exception as e:  # every failure is data for the test
            code, message = failure(e)
            entry = {"ok": False, "code": code, "message": message}
        report.append({"tag": step["tag"], **entry})
    with open(sys.argv[2], "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
