"""The codec service (codec/serve.py): a real Ray Serve app on loopback, real HTTP, real speech.

One service for the module (Ray + Serve start once, ~15 s): round trips of real utterances,
tokens equal to the tokenize job's (its shard reader + TokenEncoder, fp32 on CPU), every bad
input answered with its status and message, and the service healthy afterwards.
"""

from __future__ import annotations

import io
import json
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from codec.client import CodecClient, ServiceHTTPError, Tokens, multipart_body
from codec.speech_codec import codec_info
from codec.token_encoder import EncoderConfig, TokenEncoder
from codec.tokenizing.bucketing import AudioShardReader, BatchingConfig
from tests.codec.conftest import write_audio_shards
from tests.conftest import REPO
from tests.tokenize.conftest import _save_tiny

# Real utterances in several containers and rates: wav 16 kHz, wav 16 kHz (LibriVox), flac, ogg/opus.
FILES = [
    "deepspeech/data/smoke_test/LDC93S1.wav",
    "pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0880.wav",
    "mfa/tests/data/wav/mfa_the.flac",
    "deepspeech/native_client/dotnet/DeepSpeechConsole/arctic_a0024.wav",
    "cuttledoc-fleurs/fleurs-de-004.ogg",
]
MAX_SECONDS = 20.0
MAX_BODY_MB = 1.5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return _save_tiny(tmp_path_factory.mktemp("serve_codec"), 0)


@pytest.fixture(scope="module")
def service(ckpt, speech_dir):
    """A running service (1 CPU replica, tight limits so the tests can pass them) and its client."""
    import ray
    from ray import serve

    from codec.serve import start
    from codec.service import ServiceConfig

    if ray.is_initialized():  # a Ray left by an earlier module would lack this runtime_env
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024 * 1024,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}})
    try:
        # batch_wait_s is long enough here that concurrent test requests reliably share a batch.
        cfg = ServiceConfig(codec_dir=str(ckpt), device="cpu", threads=1, max_audio_seconds=MAX_SECONDS,
                            max_body_mb=MAX_BODY_MB, request_timeout_s=120, batch_wait_s=0.2)
        port = _free_port()
        (url,) = start([cfg], port=port)
        assert url == f"http://127.0.0.1:{port}"
        yield CodecClient(url, timeout=180)
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def job_tokens(ckpt, speech_dir, tmp_path_factory) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Tokens of FILES the way the tokenize job makes them: the ingest's decoder to 24 kHz PCM16,
    an audio shard (DESIGN §4), the job's shard reader and TokenEncoder (fp32, CPU)."""
    from pipeline.decode import Decoder

    utts = [(f, Decoder()(str(speech_dir / f)).audio24) for f in FILES]
    shards = write_audio_shards(tmp_path_factory.mktemp("serve_shards"), utts, per_shard=len(utts))
    enc = TokenEncoder(EncoderConfig(codec_dir=str(ckpt), device="cpu", threads=1))
    reader = AudioShardReader(BatchingConfig())
    out = {}
    for path in shards:
        for tb in enc(list(reader.batches(path, path.stem))):
            assert not tb.failures
            for meta, s, a in zip(tb.metas, tb.semantic, tb.acoustic):
                out[json.loads(meta)["source_path"]] = (s, a)
    assert set(out) == set(FILES)
    return out


# --------------------------------------------------------------------------------------
# Working requests


def test_health_and_info(service, ckpt):
    cid = codec_info(ckpt).codec_id
    h = service.health()
    assert h["status"] == "ok" and h["codec_id"] == cid
    info = service.info()
    assert info["codec_id"] == cid and info["device"] == "cpu" and info["precision"] == "fp32"
    assert info["frame_rate"] == 12.5 and info["sample_rate"] == 24_000
    assert info["codec_config"]["name"] == "tiny"
    assert info["limits"]["max_audio_seconds"] == MAX_SECONDS
    assert info["version"]["ray"] and info["version"]["torch"]


def test_concurrent_encodes_equal_the_tokenize_job(service, speech_dir, job_tokens, ckpt):
    """Real speech sent by concurrent clients (so requests share batches) gives the job's tokens."""
    before = service.health()
    with ThreadPoolExecutor(len(FILES)) as pool:
        got = dict(zip(FILES, pool.map(lambda f: service.encode(speech_dir / f), FILES)))
    cid = codec_info(ckpt).codec_id
    for f in FILES:
        s, a = job_tokens[f]
        t = got[f]
        assert t.codec_id == cid and t.frame_rate == 12.5
        assert t.semantic.dtype == np.int16 and t.acoustic.dtype == np.uint8 and t.acoustic.shape == (len(s), 36)
        np.testing.assert_array_equal(t.semantic, s, err_msg=f)
        np.testing.assert_array_equal(t.acoustic, a, err_msg=f)
    after = service.health()
    batches = after["encode_batches"] - before["encode_batches"]
    assert after["largest_batch"] >= 2 and batches < len(FILES), f"requests were not batched: {after}"


def test_json_multipart_and_npz_answers_agree(service, speech_dir, job_tokens):
    f = FILES[2]
    data = (speech_dir / f).read_bytes()
    as_json = service.encode(data, npz=False)
    as_form = service.encode(data, multipart=True)
    s, a = job_tokens[f]
    for t in (as_json, as_form):
        np.testing.assert_array_equal(t.semantic, s)
        np.testing.assert_array_equal(t.acoustic, a)
    # the JSON answer carries the fields the issue names
    status, _, body = service.request("POST", "/encode", data, {"Accept": "application/json"})
    obj = json.loads(body)
    assert status == 200 and obj["n_frames"] == len(s) and obj["frame_rate"] == 12.5
    assert obj["codec_id"] == as_json.codec_id and len(obj["acoustic"][0]) == 36


def test_round_trip_decode(service, speech_dir, job_tokens, ckpt):
    """encode -> decode of real speech: 24 kHz audio of T * 1920 samples, equal to the codec's own decode."""
    from codec import Codec

    codec = Codec.load(ckpt).eval()
    toks = [service.encode(speech_dir / f) for f in FILES[:3]]
    with ThreadPoolExecutor(3) as pool:
        wavs = list(pool.map(service.decode_array, toks))
    for t, (x, sr) in zip(toks, wavs):
        assert sr == 24_000 and x.shape == (t.n_frames * 1920,)
        with torch.inference_mode():
            ref = codec.decode(torch.from_numpy(t.semantic.astype(np.int64))[None],
                               torch.from_numpy(t.acoustic.astype(np.int64))[None])[0, 0].numpy()
        # 16-bit WAV: one quantisation step of error, plus batched-vs-alone float noise
        np.testing.assert_allclose(x, np.clip(ref, -1, 1), atol=2.5 / 32768)
    # FLAC answer and JSON request give the same samples (to one 16-bit step: decoded alone now,
    # in a batch of three before)
    flac = service.decode(toks[0], flac=True, npz=False)
    assert flac[:4] == b"fLaC"
    y, sr = sf.read(io.BytesIO(flac), dtype="float32")
    np.testing.assert_allclose(y, wavs[0][0], atol=1.5 / 32768)


def test_a_client_path_is_never_opened(service, speech_dir, job_tokens):
    """A body or a multipart file name that names a server file is only bytes to the service."""
    f = FILES[0]
    target = str(speech_dir / f)
    status, _, body = service.request("POST", "/encode", target.encode(), {"Content-Type": "text/plain"})
    assert status == 400 and "not an audio file" in json.loads(body)["error"]
    form, ctype = multipart_body("audio", "/etc/passwd", (speech_dir / f).read_bytes())
    status, _, body = service.request("POST", "/encode", form, {"Content-Type": ctype})
    assert status == 200
    np.testing.assert_array_equal(np.asarray(json.loads(body)["semantic"], np.int16), job_tokens[f][0])


# --------------------------------------------------------------------------------------
# Bad inputs: status + message, and the service still healthy afterwards


def _long_flac(speech_dir, seconds: float) -> bytes:
    x, sr = sf.read(speech_dir / FILES[1], dtype="int16")
    reps = int(np.ceil(seconds * sr / len(x)))
    buf = io.BytesIO()
    sf.write(buf, np.tile(x, reps)[: int(seconds * sr)], sr, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _bad_requests(speech_dir, cid: str, other_id: str) -> list[tuple[str, str, str, bytes, dict, int, str]]:
    good_wav = (speech_dir / FILES[0]).read_bytes()
    t = 20
    sem = np.zeros(t, np.int16)
    ac = np.full((t, 36), 10, np.uint8)

    def js(**kw):
        return json.dumps({"codec_id": cid, "semantic": sem.tolist(), "acoustic": ac.tolist(), **kw}).encode()

    npz_h = {"Content-Type": "application/x-npz", "X-Codec-Id": cid}
    json_h = {"Content-Type": "application/json"}
    form, ctype = multipart_body("audio", "a.wav", good_wav)
    no_file = form.replace(b'; filename="a.wav"', b"")
    # (name, method, path, body, headers, status, message fragment)
    return [
        ("text body", "POST", "/encode", b"hello, not audio", {}, 400, "not an audio file"),
        ("empty body", "POST", "/encode", b"", {}, 400, "empty body"),
        ("hls playlist", "POST", "/encode", b"#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n", {}, 400, "not an audio file"),
        ("truncated wav", "POST", "/encode", good_wav[:44] + b"\x00" * 10, {}, 400, "undecodable audio"),
        ("corrupt flac", "POST", "/encode", b"fLaC" + bytes(range(256)) * 8, {}, 400, "undecodable audio"),
        ("audio too long", "POST", "/encode", _long_flac(speech_dir, MAX_SECONDS + 5), {}, 413, "too long"),
        ("body too big", "POST", "/encode", b"RIFF" + b"\x00" * int(MAX_BODY_MB * 1024 * 1024 + 10), {}, 413, "limit"),
        ("streamed body too big", "POST", "/encode", (b"RIFF" + b"\x00" * 65532 for _ in range(30)), {}, 413, "limit"),
        ("form without file", "POST", "/encode", no_file, {"Content-Type": ctype}, 400, "without a file part"),
        ("encode accept", "POST", "/encode", good_wav, {"Accept": "text/html"}, 406, "answers"),
        ("acoustic 35 dims", "POST", "/decode", js(acoustic=np.zeros((t, 35), int).tolist()), json_h, 400, "acoustic"),
        ("semantic 2-d", "POST", "/decode", js(semantic=[[1, 2]] * t), json_h, 400, "semantic: must be [T]"),
        ("frames differ", "POST", "/decode", js(semantic=sem[:5].tolist()), json_h, 400, "frames"),
        ("semantic range", "POST", "/decode", js(semantic=[9000] * t), json_h, 400, "0..8191"),
        ("acoustic range", "POST", "/decode", js(acoustic=np.full((t, 36), 21).tolist()), json_h, 400, "0..20"),
        ("negative", "POST", "/decode", js(acoustic=np.full((t, 36), -1).tolist()), json_h, 400, "0..20"),
        ("float tokens", "POST", "/decode", js(semantic=[0.5] * t), json_h, 400, "integers"),
        ("ragged", "POST", "/decode", js(acoustic=[[1] * 36, [1] * 3] * 10), json_h, 400, "acoustic"),
        ("no frames", "POST", "/decode", js(semantic=[], acoustic=[]), json_h, 400, "acoustic"),
        ("too many frames", "POST", "/decode",
         _npz(semantic=np.zeros(400, np.int16), acoustic=np.zeros((400, 36), np.uint8)), npz_h, 413, "too many frames"),
        ("not json", "POST", "/decode", b"{nope", json_h, 400, "not valid JSON"),
        ("deep json", "POST", "/decode", b'{"semantic": ' + b"[" * 100_000, json_h, 400, "not valid JSON"),
        ("npz dtype", "POST", "/decode", _npz(semantic=sem.astype(np.int64), acoustic=ac), npz_h, 400, "dtypes"),
        ("npz pickle", "POST", "/decode", _npz(semantic=np.array([{"x": 1}], dtype=object), acoustic=ac), npz_h,
         400, "not a readable"),
        ("npz members", "POST", "/decode", _npz(tokens=sem), npz_h, 400, "'semantic' and 'acoustic'"),
        ("not npz", "POST", "/decode", b"PK\x03\x04garbage", npz_h, 400, "not a readable"),
        ("codec mismatch json", "POST", "/decode", js(codec_id=other_id), json_h, 409, other_id),
        ("codec mismatch npz", "POST", "/decode", _npz(semantic=sem, acoustic=ac),
         {**npz_h, "X-Codec-Id": other_id}, 409, "this service decodes"),
        ("no codec id", "POST", "/decode", _npz(semantic=sem, acoustic=ac), {"Content-Type": "application/x-npz"},
         400, "X-Codec-Id"),
        ("decode content type", "POST", "/decode", js(), {"Content-Type": "text/plain"}, 400, "Content-Type"),
        ("decode accept", "POST", "/decode", js(), {**json_h, "Accept": "audio/mpeg"}, 406, "answers"),
        ("unknown path", "GET", "/etc/passwd", None, {}, 404, "no endpoint"),
        ("wrong method", "GET", "/encode", None, {}, 405, "POST"),
    ]


def test_bad_inputs_get_status_and_message(service, speech_dir, ckpt, tmp_path):
    cid = codec_info(ckpt).codec_id
    other_id = codec_info(_save_tiny(tmp_path / "other", 1)).codec_id
    assert other_id != cid
    failures = []
    for name, method, path, body, headers, status, fragment in _bad_requests(speech_dir, cid, other_id):
        try:
            got, _, data = service.request(method, path, body, headers)
        except OSError as e:  # e.g. the connection reset while sending: also a failure here
            failures.append(f"{name}: {type(e).__name__}: {e}")
            continue
        try:
            msg = json.loads(data)["error"]
        except (ValueError, KeyError):
            msg = data[:200]
        if got != status or fragment not in str(msg):
            failures.append(f"{name}: got {got} {msg!r}, expected {status} with {fragment!r}")
    assert not failures, "\n".join(failures)
    # still healthy, and still right
    assert service.health()["status"] == "ok"
    t = service.encode(speech_dir / FILES[0])
    x, sr = service.decode_array(t)
    assert sr == 24_000 and len(x) == t.n_frames * 1920


def test_client_raises_with_the_message(service):
    with pytest.raises(ServiceHTTPError) as e:
        service.decode(Tokens(np.zeros(3, np.int16), np.zeros((3, 36), np.uint8), "tiny-000000000000"))
    assert e.value.status == 409 and "tiny-000000000000" in e.value.message


def test_served_only_on_loopback(service):
    """The HTTP proxy binds 127.0.0.1 by default: not reachable on the machine's other addresses."""
    port = int(service.url.rsplit(":", 1)[1])
    import psutil

    addrs = {a.address for nic in psutil.net_if_addrs().values() for a in nic
             if a.family == socket.AF_INET and not a.address.startswith("127.")}
    if not addrs:
        pytest.skip("this machine has no non-loopback IPv4 address")
    for a in addrs:
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((a, port)) != 0, f"service reachable on {a}:{port}"


def test_request_timeout_is_a_504(ckpt, speech_dir, monkeypatch):
    """The replica's own timeout (the deployment class run directly, outside Serve, where its
    batch queue cannot run: the 10 ms timeout fires while the upload is still being decoded).
    The decode is slowed down on purpose: a short file decodes in about a millisecond, and when
    it won the race the request reached the batch queue, which cannot run here (a 500)."""
    import asyncio
    import time

    from starlette.requests import Request

    import codec.serve
    from codec.serve import CodecDeployment

    real = codec.serve.read_audio

    def slow_read_audio(*args, **kwargs):
        time.sleep(0.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(codec.serve, "read_audio", slow_read_audio)
    dep = CodecDeployment.func_or_class({"codec_dir": str(ckpt), "device": "cpu", "threads": 1,
                                         "request_timeout_s": 0.01})
    body = (speech_dir / FILES[0]).read_bytes()

    async def call():
        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}

        scope = {"type": "http", "method": "POST", "path": "/encode", "headers": [], "query_string": b"",
                 "root_path": ""}
        return await dep(Request(scope, receive))

    r = asyncio.run(call())
    assert r.status_code == 504 and b"request_timeout_s" in r.body


def test_bad_service_config(ckpt, tmp_path):
    from codec.service import ServiceConfig

    with pytest.raises(ValueError, match="not a directory"):
        ServiceConfig(codec_dir=str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="max_audio_seconds"):
        ServiceConfig(codec_dir=str(ckpt), max_audio_seconds=0)
    with pytest.raises(ValueError, match="device"):
        ServiceConfig(codec_dir=str(ckpt), device="tpu")


def test_decoder_options_the_service_uses(speech_dir):
    """pipeline.decode.Decoder: no analysis stream gives the same 24 kHz PCM; max_duration stops early."""
    from pipeline.decode import Decoder
    from pipeline.errors import TooLong

    path = str(speech_dir / FILES[1])
    full = Decoder()(path)
    lean = Decoder(analysis_rate=None)(path)
    assert lean.audio16.size == 0 and full.audio16.size > 0
    np.testing.assert_array_equal(lean.audio24, full.audio24)
    with pytest.raises(TooLong, match="maximum"):
        Decoder(max_duration=full.duration / 2)(path)
