"""The model behind a gRPC microservice: ``python -m strategies.grpc.server``.

Started by the grpc strategies for each cell, and runnable by hand on another machine:

    python -m strategies.grpc.server --model mlp --host 0.0.0.0 --port 50051
    python -m bench run --strategies grpc,grpc-naive --models mlp --grpc-target thathost:50051

Binds 127.0.0.1 unless told otherwise (a free port with --port 0), reports readiness through the
standard gRPC health service, sets explicit message-size limits, checks every request against the
model (INVALID_ARGUMENT naming the mismatch; oversized requests get RESOURCE_EXHAUSTED from gRPC
itself), sends its own decode/compute/encode times as trailing metadata, and shuts down
gracefully on SIGTERM or SIGINT. Started by hand it is grpc.aio's server: the event loop receives
each request whole (a client that stalls mid-message holds no worker). ``--server sync`` is grpcio's
threaded server, which the cells' own servers run (faster; the harness is their only client). Either
way admitted requests run on a pool of ``--workers`` threads, and beyond ``--max-calls`` requests or
``--max-inflight-mib`` of request bytes in service a call gets RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import argparse
import contextlib
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


class Refused(Exception):
    """A request the server answers with a status other than OK."""

    def __init__(self, code, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class InferenceServicer:
    def __init__(self, model, spec, content_hash: str, max_bytes: int, pool=None, max_calls: int = 64,
                 max_inflight_bytes: int = 1024 * 2**20) -> None:
        import grpc
        import torch

        from fixtures.loading import outputs_to_dict
        from strategies.grpc import codec, stubs

        self.grpc, self.torch, self.codec = grpc, torch, codec
        self.pb2, _ = stubs.load()
        self.model, self.spec, self.content_hash, self.max_bytes = model, spec, content_hash, max_bytes
        self.pool, self.max_calls, self.max_inflight_bytes = pool, max_calls, max_inflight_bytes
        self._admit_lock = threading.Lock()
        self._calls = self._inflight = 0
        self.check = codec.InputCheck(spec.inputs, tuple((k, lo, hi) for k, (lo, hi, _) in spec.dims.items()))
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
            inputs=[meta(name=t.name, datatype=codec.TO_DATATYPE[t.dtype], shape=[-1 if isinstance(d, str) else d for d in t.shape])
                    for t in self.spec.inputs],
            outputs=[meta(name=n) for n in self.spec.outputs],
            content_hash=self.content_hash, max_message_bytes=self.max_bytes,
        )

    def infer(self, data: bytes) -> tuple[bytes, str]:
        """Bytes in, bytes out: the request's tensors are read where gRPC put them (no copy) and the
        response's are written once into the wire buffer (codec.Layouts). Returns the response and
        the timing metadata; a request the server refuses raises Refused with its status code."""
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
                    raise Refused(grpc.StatusCode.NOT_FOUND,
                                  f"model {request.model_name!r} is not served here (serving {self.spec.name!r})")
                encoding = codec.request_encoding(request)
                arrays = codec.decode(request.inputs, raw, encoding)
                self.check.check(arrays)
                request_id = request.id
                if encoding == codec.RAW:
                    self.layouts.learn(meta, arrays, request_id)
        except codec.BadRequest as e:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        t1 = clock()
        torch = self.torch
        if not torch.is_inference_mode_enabled():
            self._inference_mode_for_this_thread()
        try:
            out = self.to_dict(self.model(*[torch.from_numpy(arrays[n]) for n in self.order]), self.spec.outputs)
            outputs = {k: v.numpy() for k, v in out.items()}
        except Exception as e:  # the model itself failed: the caller learns why, the server goes on
            raise Refused(grpc.StatusCode.INTERNAL, f"model raised {type(e).__name__}: {e}") from None
        t2 = clock()
        if encoding == codec.RAW:
            response = self.layouts.writer(outputs, self._raw_response_header, request_id).write(outputs.values())
        else:
            response = codec.response_message(self.pb2, outputs, encoding, self.spec.name, request_id).SerializeToString()
        t3 = clock()
        return response, f"{t1 - t0},{t2 - t1},{t3 - t2}"

    def ModelInfer(self, data: bytes, context) -> bytes:
        """The synchronous server's handler (``--server sync``): a worker thread per call, from the
        moment the call arrives (a client that stalls mid-message holds one)."""
        try:
            with self.admitted(len(data)):
                response, timing = self.infer(data)
        except Refused as e:
            context.abort(e.code, e.details)
        context.set_trailing_metadata(((TIMING_KEY, timing),))
        return response

    async def ModelInferAsync(self, data: bytes, context) -> bytes:
        """The asyncio server's handler (the default): the event loop receives each request whole, so a
        client that stalls mid-message holds no worker; admitted requests then run on the worker pool."""
        import asyncio

        n = len(data)
        try:
            self._admit(n)
            work = self.pool.submit(self.infer, data)
            # the slot is free when the model call ends, not when the caller gives up on it (a cancelled
            # or timed-out call leaves its work running on the pool)
            work.add_done_callback(lambda _: self._release(n))
            response, timing = await asyncio.wrap_future(work)
        except Refused as e:
            await context.abort(e.code, e.details)
        context.set_trailing_metadata(((TIMING_KEY, timing),))
        return response

    @contextlib.contextmanager
    def admitted(self, nbytes: int):
        """Admission (see ``_admit``) for as long as the block runs."""
        self._admit(nbytes)
        try:
            yield
        finally:
            self._release(nbytes)

    def _admit(self, nbytes: int) -> None:
        """At most ``max_calls`` requests and ``max_inflight_bytes`` of request bytes being served at
        once (a lone request is always admitted); beyond that RESOURCE_EXHAUSTED, so a few greedy
        callers cannot exhaust the server's memory and the rest are still served."""
        with self._admit_lock:
            busy = self._calls > 0
            if busy and (self._calls >= self.max_calls or self._inflight + nbytes > self.max_inflight_bytes):
                raise Refused(self.grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"server busy: {self._calls} calls and {self._inflight / 2**20:.1f} MiB in flight "
                              f"(caps {self.max_calls} calls, {self.max_inflight_bytes / 2**20:.0f} MiB); retry later")
            self._calls += 1
            self._inflight += nbytes

    def _release(self, nbytes: int) -> None:
        with self._admit_lock:
            self._calls -= 1
            self._inflight -= nbytes

    def _raw_response_header(self, outputs, request_id: str) -> bytes:
        return self.codec.response_message(self.pb2, outputs, self.codec.RAW, self.spec.name, request_id).SerializeToString()

    def _inference_mode_for_this_thread(self) -> None:
        """Requests run in inference mode, entered once per server thread and never left (the mode
        is thread-local): entering and leaving it per request costs more than the identity model."""
        mode = self.torch.inference_mode()
        mode.__enter__()
        self._held_modes.append(mode)  # kept referenced for the thread's lifetime


def load_spec(args: argparse.Namespace):
    from fixtures.builtin import BUILTIN_MODELS
    from fixtures.custom import make_custom_model
    from fixtures.specs import ModelSpec, parse_input_spec

    if args.model_spec:
        return ModelSpec.from_json(json.loads(Path(args.model_spec).read_text()))
    if args.model_factory:
        return make_custom_model(args.model or "custom", args.model_factory, parse_input_spec(args.model_inputs or ""))
    if args.model not in BUILTIN_MODELS:
        raise SystemExit(f"error: unknown model {args.model!r}; built-in: {', '.join(BUILTIN_MODELS)}")
    return BUILTIN_MODELS[args.model]


def serve(args: argparse.Namespace) -> int:
    import torch

    from fixtures.loading import build_model, model_content_hash, outputs_to_dict, to_torch_inputs
    from fixtures.specs import make_inputs

    if args.die_with_parent:
        from plumbing.processes import die_with_parent

        die_with_parent()
    torch.set_num_threads(args.threads)
    spec = load_spec(args)
    model = build_model(spec, args.seed)
    if not spec.outputs:  # name the outputs the way the harness's probe does
        with torch.inference_mode():
            names = tuple(outputs_to_dict(model(*to_torch_inputs(spec, make_inputs(spec, 2, args.seed))), ()))
        spec = spec.with_outputs(names)
    content_hash = model_content_hash(model, spec, args.seed)

    pool = futures.ThreadPoolExecutor(max_workers=args.workers, thread_name_prefix="infer")
    servicer = InferenceServicer(model, spec, content_hash, args.max_message_bytes, pool, args.max_calls,
                                 args.max_inflight_mib * 2**20)
    address = f"unix:{args.uds}" if args.uds else f"{args.host}:{args.port}"
    if args.server == "sync":
        return _serve_sync(args, servicer, pool, address)
    import asyncio

    return asyncio.run(_serve_async(args, servicer, pool, address))


def _handlers(servicer: InferenceServicer, infer):
    import grpc

    from strategies.grpc import stubs

    pb2, _ = stubs.load()
    return grpc.method_handlers_generic_handler(SERVICE, {
        "ModelInfer": grpc.unary_unary_rpc_method_handler(infer),  # raw bytes both ways
        "ModelMetadata": grpc.unary_unary_rpc_method_handler(
            servicer.ModelMetadata, request_deserializer=pb2.ModelMetadataRequest.FromString,
            response_serializer=pb2.ModelMetadataResponse.SerializeToString),
    })


def _announce(args: argparse.Namespace, servicer: InferenceServicer, bound: str) -> None:
    if args.port_file:
        from plumbing.files import atomic_write_json

        atomic_write_json(Path(args.port_file), {"address": bound, "pid": os.getpid(), "content_hash": servicer.content_hash})
    print(f"serving {servicer.spec.name} on {bound} ({args.server} server, content hash {servicer.content_hash}, "
          f"{args.threads} intra-op thread(s), {args.workers} workers, at most {args.max_calls} calls and "
          f"{args.max_inflight_mib} MiB of requests in flight, max message {args.max_message_bytes // 2**20} MiB)", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.uds:
        print(f"warning: listening on {args.host}, beyond loopback; the protocol has no authentication", flush=True)


def _serve_sync(args: argparse.Namespace, servicer: InferenceServicer, pool, address: str) -> int:
    """grpcio's threaded server: a worker per call from its first byte (kept to compare with)."""
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.server(pool, options=message_options(args.max_message_bytes))
    server.add_generic_rpc_handlers((_handlers(servicer, servicer.ModelInfer),))
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(address)
    if not args.uds and port == 0:
        raise SystemExit(f"error: cannot bind {address}")
    server.start()
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
    _announce(args, servicer, f"unix:{args.uds}" if args.uds else f"{args.host}:{port}")
    done.wait()
    return 0


async def _serve_async(args: argparse.Namespace, servicer: InferenceServicer, pool, address: str) -> int:
    """grpc.aio's server: the event loop receives requests, so a client that stalls mid-message costs
    a coroutine, not a worker; the model runs on the worker pool, behind the admission caps."""
    import asyncio

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_health.v1._async import HealthServicer

    server = grpc.aio.server(migration_thread_pool=pool, options=message_options(args.max_message_bytes))
    server.add_generic_rpc_handlers((_handlers(servicer, servicer.ModelInferAsync),))
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(address)
    if not args.uds and port == 0:
        raise SystemExit(f"error: cannot bind {address}")
    await server.start()
    for service in ("", SERVICE):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _announce(args, servicer, f"unix:{args.uds}" if args.uds else f"{args.host}:{port}")
    await stop.wait()
    for service in ("", SERVICE):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.stop(grace=2.0)
    pool.shutdown(wait=False, cancel_futures=True)
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
    ap.add_argument("--workers", type=int, default=8, help="threads running the model")
    ap.add_argument("--server", choices=("asyncio", "sync"), default="asyncio",
                    help="asyncio (default: a stalled client holds no worker) or grpcio's threaded server")
    ap.add_argument("--max-calls", type=int, default=64, help="requests served at once; beyond: RESOURCE_EXHAUSTED")
    ap.add_argument("--max-inflight-mib", type=int, default=1024,
                    help="request bytes being served at once, in MiB (a lone request is always served)")
    ap.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES)
    ap.add_argument("--port-file", help="write {address, pid, content_hash} as JSON here once serving")
    ap.add_argument("--die-with-parent", action="store_true", help="exit when the starting process dies")
    args = ap.parse_args(argv)
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
