"""The model behind a gRPC microservice: ``python -m strategies.grpc.server``.

Started by the grpc strategies for each cell, and runnable by hand on another machine:

    python -m strategies.grpc.server --model mlp --host 0.0.0.0 --port 50051
    python -m bench run --strategies grpc,grpc-naive --models mlp --grpc-target thathost:50051

Binds 127.0.0.1 unless told otherwise (a free port with --port 0), reports readiness through the
standard gRPC health service, sets explicit message-size limits, checks every request against the
model (INVALID_ARGUMENT naming the mismatch; oversized requests get RESOURCE_EXHAUSTED from gRPC
itself), sends its own decode/compute/encode times as trailing metadata, and shuts down
gracefully on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import warnings
from concurrent import futures
from pathlib import Path

DEFAULT_MAX_MESSAGE_BYTES = 512 * 1024 * 1024  # 64 MiB x several inputs fits; gRPC's default 4 MiB does not
SERVICE = "interop.inference.v2.GRPCInferenceService"
TIMING_KEY = "x-server-timing-ns"  # trailing metadata: "decode,compute,encode" in ns
CACHE_ENTRIES = 64


def message_options(max_bytes: int) -> list[tuple[str, int]]:
    return [("grpc.max_send_message_length", max_bytes), ("grpc.max_receive_message_length", max_bytes)]


class InferenceServicer:
    def __init__(self, model, spec, content_hash: str, max_bytes: int) -> None:
        import grpc
        import torch

        from fixtures.loading import outputs_to_dict
        from strategies.grpc import codec, stubs

        self.grpc, self.torch, self.codec = grpc, torch, codec
        self.pb2, _ = stubs.load()
        self.model, self.spec, self.content_hash, self.max_bytes = model, spec, content_hash, max_bytes
        self.check = codec.InputCheck(spec.inputs)
        self.order = [t.name for t in spec.inputs]
        self.to_dict = outputs_to_dict
        self._held_modes: list = []
        # Request layouts that already passed validation (with their request id), and response
        # headers by output signature: a client sending the same shapes again skips the work.
        self.layouts = codec.Layouts(codec.REQUEST_RAW_FIELD, codec.RESPONSE_RAW_FIELD, CACHE_ENTRIES)
        # frombuffer arrays over the request bytes are read-only; the model never writes its inputs
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

    def ModelMetadata(self, request, context):
        pb2, codec = self.pb2, self.codec
        meta = pb2.ModelMetadataResponse.TensorMetadata
        return pb2.ModelMetadataResponse(
            name=self.spec.name, versions=["1"], platform=f"pytorch_{self.torch.__version__}",
            inputs=[meta(name=t.name, datatype=codec.TO_DATATYPE[t.dtype], shape=[-1 if d == "batch" else d for d in t.shape])
                    for t in self.spec.inputs],
            outputs=[meta(name=n) for n in self.spec.outputs],
            content_hash=self.content_hash, max_message_bytes=self.max_bytes,
        )

    def ModelInfer(self, data: bytes, context) -> bytes:
        """Bytes in, bytes out: the request's tensors are read where gRPC put them (no copy) and the
        response's are written once into the wire buffer (codec.Layouts)."""
        clock = time.perf_counter_ns
        t0 = clock()
        codec, grpc = self.codec, self.grpc
        try:
            layout, arrays, (meta, raw) = self.layouts.read(data)
            if layout is not None:  # same metadata as an earlier valid request: only the data is new
                request_id, encoding = layout.extra, codec.RAW
            else:
                request = codec.parse_message(self.pb2.ModelInferRequest, meta)
                if request.model_name and request.model_name != self.spec.name:
                    context.abort(grpc.StatusCode.NOT_FOUND,
                                  f"model {request.model_name!r} is not served here (serving {self.spec.name!r})")
                encoding = codec.request_encoding(request)
                arrays = codec.decode(request.inputs, raw, encoding)
                self.check.check(arrays)
                request_id = request.id
                if encoding == codec.RAW:
                    self.layouts.learn(meta, arrays, request_id)
        except codec.BadRequest as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        t1 = clock()
        torch = self.torch
        if not torch.is_inference_mode_enabled():
            self._inference_mode_for_this_thread()
        try:
            out = self.to_dict(self.model(*[torch.from_numpy(arrays[n]) for n in self.order]), self.spec.outputs)
            outputs = {k: v.numpy() for k, v in out.items()}
        except Exception as e:  # the model itself failed: the caller learns why, the server goes on
            context.abort(grpc.StatusCode.INTERNAL, f"model raised {type(e).__name__}: {e}")
        t2 = clock()
        if encoding == codec.RAW:
            response = self.layouts.writer(outputs, self._raw_response_header, request_id).write(outputs.values())
        else:
            response = codec.response_message(self.pb2, outputs, encoding, self.spec.name, request_id).SerializeToString()
        t3 = clock()
        context.set_trailing_metadata(((TIMING_KEY, f"{t1 - t0},{t2 - t1},{t3 - t2}"),))
        return response

    def _raw_response_header(self, outputs, request_id: str) -> bytes:
        return self.codec.response_message(self.pb2, outputs, self.codec.RAW, self.spec.name, request_id).SerializeToString()

    def _inference_mode_for_this_thread(self) -> None:
        """Requests run in inference mode, entered once per server thread and never left (the mode
        is thread-local): entering and leaving it per request costs more than the identity model."""
        mode = self.torch.inference_mode()
        mode.__enter__()
        self._held_modes.append(mode)  # kept referenced for the thread's lifetime


def load_spec(args: argparse.Namespace):
    from bench.config import make_custom_model
    from fixtures.builtin import BUILTIN_MODELS
    from fixtures.specs import ModelSpec, parse_input_spec

    if args.model_spec:
        return ModelSpec.from_json(json.loads(Path(args.model_spec).read_text()))
    if args.model_factory:
        return make_custom_model(args.model or "custom", args.model_factory, parse_input_spec(args.model_inputs or ""))
    if args.model not in BUILTIN_MODELS:
        raise SystemExit(f"error: unknown model {args.model!r}; built-in: {', '.join(BUILTIN_MODELS)}")
    return BUILTIN_MODELS[args.model]


def serve(args: argparse.Namespace) -> int:
    import grpc
    import torch
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from fixtures.loading import build_model, model_content_hash, outputs_to_dict, to_torch_inputs
    from fixtures.specs import make_inputs
    from strategies.grpc import stubs

    if args.die_with_parent:
        from bench.processes import die_with_parent

        die_with_parent()
    torch.set_num_threads(args.threads)
    spec = load_spec(args)
    model = build_model(spec, args.seed)
    if not spec.outputs:  # name the outputs the way the harness's probe does
        with torch.inference_mode():
            names = tuple(outputs_to_dict(model(*to_torch_inputs(spec, make_inputs(spec, 2, args.seed))), ()))
        spec = spec.with_outputs(names)
    content_hash = model_content_hash(model, spec, args.seed)

    pb2, _ = stubs.load()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers), options=message_options(args.max_message_bytes))
    servicer = InferenceServicer(model, spec, content_hash, args.max_message_bytes)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
        "ModelInfer": grpc.unary_unary_rpc_method_handler(servicer.ModelInfer),  # raw bytes both ways
        "ModelMetadata": grpc.unary_unary_rpc_method_handler(
            servicer.ModelMetadata, request_deserializer=pb2.ModelMetadataRequest.FromString,
            response_serializer=pb2.ModelMetadataResponse.SerializeToString),
    }),))
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"unix:{args.uds}" if args.uds else f"{args.host}:{args.port}"
    port = server.add_insecure_port(address)
    if not args.uds and port == 0:
        raise SystemExit(f"error: cannot bind {address}")
    server.start()
    bound = f"unix:{args.uds}" if args.uds else f"{args.host}:{port}"
    for service in ("", SERVICE):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)

    done = threading.Event()

    def shutdown(signum, frame) -> None:
        for service in ("", SERVICE):
            health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        server.stop(grace=2.0).wait()
        done.set()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    if args.port_file:
        from bench.results import atomic_write_json

        atomic_write_json(Path(args.port_file), {"address": bound, "pid": os.getpid(), "content_hash": content_hash})
    print(f"serving {spec.name} on {bound} (content hash {content_hash}, {args.threads} intra-op thread(s), "
          f"{args.workers} workers, max message {args.max_message_bytes // 2**20} MiB)", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.uds:
        print(f"warning: listening on {args.host}, beyond loopback; the protocol has no authentication", flush=True)
    done.wait()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m strategies.grpc.server", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="mlp", help="built-in model name (or the name of --model-factory's model)")
    ap.add_argument("--model-factory", help="package.module:callable returning a torch.nn.Module")
    ap.add_argument("--model-inputs", help="input spec for --model-factory, e.g. 'x:float32[batch,16]'")
    ap.add_argument("--model-spec", help=argparse.SUPPRESS)  # JSON ModelSpec written by the strategy
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--uds", help="serve on this Unix domain socket path instead of TCP")
    ap.add_argument("--workers", type=int, default=8, help="server threads")
    ap.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES)
    ap.add_argument("--port-file", help="write {address, pid, content_hash} as JSON here once serving")
    ap.add_argument("--die-with-parent", action="store_true", help="exit when the starting process dies")
    args = ap.parse_args(argv)
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
