"""The codec as an HTTP service on Ray Serve: encode audio to tokens, decode tokens to audio.

    python codec/serve.py --codec CKPT [--port 8000] [--host 127.0.0.1] [--replicas 1] [--device auto]
    serve run codec.serve:build_app codec=CKPT [device=cpu] [replicas=2] [max_audio_seconds=60]
    ray job submit --working-dir . -- python codec/serve.py --codec /shared/CKPT --address auto --no-block

Endpoints (one deployment per codec checkpoint; see docs/serve.md):

    POST /encode   audio (raw body or multipart file) -> tokens (JSON, or .tokens.npz with Accept)
    POST /decode   tokens (JSON or .tokens.npz + X-Codec-Id) -> 24 kHz WAV (or FLAC with Accept)
    GET  /health   {"status": "ok", ...}
    GET  /info     codec id, config, device, limits, versions

Concurrent requests are batched by ``@serve.batch`` and, inside a batch, length-bucketed and
encoded by the tokenize job's own ``TokenEncoder`` (``codec/service.py`` holds the logic, this
file only the Ray wiring). The model runs in one thread of the replica so that its event loop
keeps receiving (and decoding) requests while a batch computes.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from codec.service import (
    CodecRuntime,
    EncodeFailed,
    PayloadTooLarge,
    RequestTimeout,
    ServiceConfig,
    ServiceError,
    audio_bytes,
    extract_upload,
    read_audio,
    read_tokens,
    tokens_json,
    tokens_npz,
    wants,
)

log = logging.getLogger("codec.serve")

ENCODE_FORMATS = {"application/json": "json", "application/x-npz": "npz", "application/npz": "npz",
                  "application/octet-stream": "npz"}
DECODE_FORMATS = {"audio/wav": "WAV", "audio/x-wav": "WAV", "audio/wave": "WAV", "audio/flac": "FLAC",
                  "audio/x-flac": "FLAC"}
MEDIA = {"WAV": "audio/wav", "FLAC": "audio/flac"}


@serve.deployment
class CodecDeployment:
    """One codec checkpoint on one device per replica; routes by the last path component."""

    def __init__(self, config: dict):
        self.config = ServiceConfig(**config)
        self.runtime = CodecRuntime(self.config)
        # One model thread: batches run one at a time, in order; the event loop stays free.
        self._model = ThreadPoolExecutor(1, thread_name_prefix="codec-model")
        # Audio decoding / token parsing / response encoding, beside the model.
        self._io = ThreadPoolExecutor(2, thread_name_prefix="codec-io")
        for fn in (self._encode_batch, self._decode_batch):
            fn.set_max_batch_size(self.config.max_batch_requests)
            fn.set_batch_wait_timeout_s(self.config.batch_wait_s)
        self.stats = {"served": 0, "encode_batches": 0, "decode_batches": 0, "largest_batch": 0}
        log.info("codec service ready: %s on %s (%s)", self.runtime.codec_id, self.runtime.encoder.device,
                 self.runtime.encoder.precision)

    # -- batched model calls ------------------------------------------------------------

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _encode_batch(self, pcm: list) -> list:
        self._count("encode_batches", len(pcm))
        return await asyncio.get_running_loop().run_in_executor(self._model, self.runtime.encode_many, pcm)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _decode_batch(self, tokens: list) -> list:
        self._count("decode_batches", len(tokens))
        return await asyncio.get_running_loop().run_in_executor(self._model, self.runtime.decode_many, tokens)

    def _count(self, kind: str, size: int) -> None:
        self.stats[kind] += 1
        self.stats["largest_batch"] = max(self.stats["largest_batch"], size)

    # -- HTTP ---------------------------------------------------------------------------

    async def __call__(self, request: Request) -> Response:
        try:
            return await asyncio.wait_for(self._route(request), timeout=self.config.request_timeout_s)
        except ServiceError as e:
            return _error(e.status, e.message)
        except TimeoutError:
            e = RequestTimeout(f"the request took longer than request_timeout_s = {self.config.request_timeout_s:g} s")
            return _error(e.status, e.message)
        except Exception as e:  # a bug, not bad input: say so, keep the replica up
            log.exception("codec service: unexpected error on %s", request.url.path)
            return _error(500, f"internal error: {type(e).__name__}: {str(e)[:300]}")

    async def _route(self, request: Request) -> Response:
        route = request.url.path.rstrip("/").rsplit("/", 1)[-1]
        method = request.method
        endpoints = {"encode": "POST", "decode": "POST", "health": "GET", "info": "GET"}
        if route not in endpoints:
            return _error(404, f"no endpoint {request.url.path!r}: POST /encode, POST /decode, GET /health, GET /info")
        if method != endpoints[route] and not (method == "HEAD" and endpoints[route] == "GET"):
            return _error(405, f"{route} takes {endpoints[route]}, not {method}")
        if route == "health":
            return JSONResponse({"status": "ok", "codec_id": self.runtime.codec_id, **self.stats})
        if route == "info":
            return JSONResponse(self.runtime.info())
        loop = asyncio.get_running_loop()
        if route == "encode":
            fmt = wants(request.headers.get("accept"), ENCODE_FORMATS, "json")
            body = await self._body(request)
            data = await extract_upload(body, request.headers.get("content-type", ""))
            pcm = await loop.run_in_executor(self._io, read_audio, data, self.config.max_audio_seconds,
                                             self.runtime.sample_rate)
            res = await self._encode_batch(pcm)
            if isinstance(res, str):
                raise EncodeFailed(f"the codec failed on this audio: {res}")
            sem, ac = res
            self.stats["served"] += 1
            rt = self.runtime
            headers = {"X-Codec-Id": rt.codec_id, "X-Frame-Rate": f"{rt.frame_rate:g}", "X-N-Frames": str(len(sem)),
                       "X-Duration": f"{len(pcm) / rt.sample_rate:.6f}"}
            if fmt == "npz":
                data = await loop.run_in_executor(self._io, tokens_npz, sem, ac)
                return Response(data, media_type="application/x-npz", headers=headers)
            return JSONResponse(tokens_json(sem, ac, rt.codec_id, rt.frame_rate, len(pcm), rt.sample_rate),
                                headers=headers)
        # decode
        fmt = wants(request.headers.get("accept"), DECODE_FORMATS, "WAV")
        body = await self._body(request)
        rt = self.runtime
        sem, ac = await loop.run_in_executor(
            self._io, lambda: read_tokens(body, request.headers.get("content-type", ""),
                                          request.headers.get("x-codec-id"), codec_id=rt.codec_id,
                                          max_frames=rt.max_frames, max_bytes=self.config.max_body_bytes))
        wav = await self._decode_batch((sem, ac))
        data = await loop.run_in_executor(self._io, audio_bytes, wav, rt.sample_rate, fmt)
        self.stats["served"] += 1
        return Response(data, media_type=MEDIA[fmt],
                        headers={"X-Codec-Id": rt.codec_id, "X-Sample-Rate": str(rt.sample_rate)})

    async def _body(self, request: Request) -> bytes:
        """The body, refused (413) as soon as it passes ``max_body_mb``, declared or streamed."""
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"body is {int(declared)} bytes, the limit is {limit} (max_body_mb = "
                                  f"{self.config.max_body_mb:g})")
        buf = bytearray()
        async for chunk in request.stream():
            buf += chunk
            if len(buf) > limit:
                raise PayloadTooLarge(f"body is over the limit of {limit} bytes (max_body_mb = "
                                      f"{self.config.max_body_mb:g})")
        return bytes(buf)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


# --------------------------------------------------------------------------------------
# Building and running applications


def build_codec_app(config: ServiceConfig, replicas: int = 1, num_cpus: float = 1.0,
                    num_gpus: float | None = None, access_log: bool = False):
    """A Serve application of one codec. ``num_gpus`` None: 1 when the device is CUDA, else 0.

    ``access_log`` off by default: a log line per request, streamed to the driver, costs the
    replica and the driver CPU time on every request.
    """
    if num_gpus is None:
        num_gpus = 1.0 if config.device.startswith("cuda") else 0.0
    if config.device == "auto" and num_gpus == 0:
        # a replica without a GPU reserved must not grab one it happens to see
        config = dataclasses.replace(config, device="cpu")
    return CodecDeployment.options(
        name=f"codec-{Path(config.codec_dir).name}"[:60],
        num_replicas=replicas,
        # Enough in flight per replica to fill a batch while the previous one computes.
        max_ongoing_requests=max(8, 4 * config.max_batch_requests),
        ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus},
        logging_config={"enable_access_log": access_log},
    ).bind(config.to_dict())


def build_app(args: dict):
    """``serve run codec.serve:build_app codec=CKPT [replicas=N] [device=...] [<ServiceConfig field>=...]``."""
    args = dict(args)
    codec_dir = args.pop("codec", None) or args.pop("codec_dir", None)
    if not codec_dir:
        raise ValueError("serve run codec.serve:build_app needs codec=CKPT_DIR")
    replicas = int(args.pop("replicas", 1))
    num_cpus = float(args.pop("num_cpus", 1))
    num_gpus = args.pop("num_gpus", None)
    access_log = str(args.pop("access_log", "false")).lower() in ("1", "true", "yes")
    fields = ServiceConfig.__dataclass_fields__
    kw = {}
    for k, v in args.items():
        if k not in fields:
            raise ValueError(f"unknown argument {k}={v}: use codec, replicas, num_cpus, num_gpus or one of {sorted(fields)}")
        t = fields[k].type  # a string: this module uses postponed annotations
        kw[k] = int(v) if t.startswith("int") else float(v) if t == "float" else str(v)
    cfg = ServiceConfig(codec_dir=str(codec_dir), **kw)
    return build_codec_app(cfg, replicas, num_cpus, float(num_gpus) if num_gpus is not None else None, access_log)


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join ``address``, or start a local Ray whose workers import this checkout."""
    from manifests.run_record import start_ray

    start_ray(address, num_cpus=num_cpus)


def start(configs: list[ServiceConfig], *, host: str = "127.0.0.1", port: int = 8000, replicas: int = 1,
          num_cpus: float = 1.0, num_gpus: float | None = None, address: str | None = None,
          num_local_cpus: int | None = None, access_log: bool = False) -> list[str]:
    """Start (or join) Ray, start Serve's HTTP proxy on ``host:port`` and deploy one app per codec.

    Returns the base URLs. With one codec the routes are ``/encode`` etc.; with several, each codec
    is under ``/<codec_id>/``. A local Ray gets this checkout on its workers' path.
    """
    from codec.speech_codec import codec_info

    init_ray(address, num_local_cpus)
    timeout = max(c.request_timeout_s for c in configs) + 10  # the proxy's backstop after the replica's own
    serve.start(http_options={"host": host, "port": port, "request_timeout_s": timeout})
    urls = []
    for c in configs:
        cid = codec_info(c.codec_dir).codec_id
        prefix = "/" if len(configs) == 1 else f"/{cid}"
        serve.run(build_codec_app(c, replicas, num_cpus, num_gpus, access_log), name=cid, route_prefix=prefix)
        urls.append(f"http://{host}:{port}{prefix.rstrip('/')}")
    return urls


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Serve the codec over HTTP on Ray Serve (encode/decode/health/info).")
    p.add_argument("--codec", action="append", required=True,
                   help="codec checkpoint directory (Codec.save); repeat to serve several, each under /<codec_id>/")
    p.add_argument("--host", default="127.0.0.1",
                   help="address the HTTP proxy binds (default loopback; 0.0.0.0 exposes it, see README)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--replicas", type=int, default=1, help="replicas per codec (each loads the codec once)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (auto: cuda when Ray has GPUs)")
    p.add_argument("--precision", default="auto", help="auto (bf16 on cuda, fp32 on cpu) | bf16 | fp32")
    p.add_argument("--num-cpus", type=float, default=1.0, help="Ray CPUs per replica")
    p.add_argument("--num-gpus", type=float, default=None, help="Ray GPUs per replica (default 1 on cuda, else 0)")
    p.add_argument("--threads", type=int, default=None, help="torch threads of a CPU replica")
    p.add_argument("--max-audio-seconds", type=float, default=60.0)
    p.add_argument("--max-body-mb", type=float, default=32.0)
    p.add_argument("--request-timeout", type=float, default=60.0, help="seconds from arrival to answer")
    p.add_argument("--max-batch-requests", type=int, default=16, help="requests per batched model call at most")
    p.add_argument("--batch-wait", type=float, default=0.01, help="seconds a batch waits for more requests")
    p.add_argument("--batch-seconds", type=float, default=120.0, help="padded audio per encoder batch (as tokenize)")
    p.add_argument("--access-log", action="store_true", help="log every request (Serve's access log)")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help="Ray cluster (default: a local Ray)")
    p.add_argument("--no-block", action="store_true", help="deploy and exit, leaving the apps running (clusters)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    device = a.device
    if device == "auto":
        import ray

        init_ray(a.address)
        device = "cuda" if ray.cluster_resources().get("GPU", 0) > 0 else "cpu"
    try:
        configs = [ServiceConfig(codec_dir=c, device=device, precision=a.precision, threads=a.threads,
                                 max_audio_seconds=a.max_audio_seconds, max_body_mb=a.max_body_mb,
                                 request_timeout_s=a.request_timeout, max_batch_requests=a.max_batch_requests,
                                 batch_wait_s=a.batch_wait, batch_seconds=a.batch_seconds) for c in a.codec]
    except ValueError as e:
        p.error(str(e))
    urls = start(configs, host=a.host, port=a.port, replicas=a.replicas, num_cpus=a.num_cpus,
                 num_gpus=a.num_gpus, address=a.address, access_log=a.access_log)
    for u in urls:
        print(f"[serve] codec service at {u}/encode /decode /health /info", flush=True)
    if a.no_block:
        return 0
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        while not stop["now"]:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    serve.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
