"""A small client of the codec service (``codec/serve.py``): encode, decode, health, info.

    from codec.client import CodecClient
    c = CodecClient("http://127.0.0.1:8000")
    tok = c.encode("speech.wav")                  # Tokens: semantic int16 [T], acoustic uint8 [T, 36]
    wav = c.decode(tok)                           # WAV bytes, 24 kHz 16-bit
    audio, sr = c.decode_array(tok)               # float32 [T * 1920], 24000

Standard library only (urllib), so it runs anywhere Python does; one client may be shared by
threads (each call opens its own connection).
"""

from __future__ import annotations

import io
import json
import os
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from manifests.shards import ACOUSTIC_DIM, FRAME_RATE, tokens_npz_bytes


class ServiceHTTPError(Exception):
    """The service answered with an error status; ``message`` is its explanation."""

    def __init__(self, status: int, message: str):
        self.status = status
        self.message = message
        super().__init__(f"HTTP {status}: {message}")


@dataclass
class Tokens:
    """Tokens of one utterance (DESIGN §6). ``semantic`` int16 ``[T]``, ``acoustic`` uint8 ``[T, 36]``."""

    semantic: np.ndarray
    acoustic: np.ndarray
    codec_id: str
    frame_rate: float = FRAME_RATE

    @property
    def n_frames(self) -> int:
        return int(self.semantic.shape[0])

    def npz_bytes(self) -> bytes:
        """The ``.tokens.npz`` of a token shard sample."""
        return tokens_npz_bytes(self.semantic, self.acoustic)


class CodecClient:
    """HTTP client of one codec service (``url`` = the base, e.g. ``http://127.0.0.1:8000``)."""

    def __init__(self, url: str = "http://127.0.0.1:8000", timeout: float = 120.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    # -- low level ----------------------------------------------------------------------

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None) -> tuple[int, dict, bytes]:
        """``(status, headers, body)`` of one request; error statuses are returned, not raised."""
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def _call(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        status, hdrs, data = self.request(method, path, body, headers)
        if status >= 400:
            try:
                msg = json.loads(data)["error"]
            except (ValueError, KeyError, TypeError):
                msg = data[:500].decode("utf-8", "replace")
            raise ServiceHTTPError(status, msg)
        return hdrs, data

    # -- endpoints ----------------------------------------------------------------------

    def health(self) -> dict:
        return json.loads(self._call("GET", "/health")[1])

    def info(self) -> dict:
        return json.loads(self._call("GET", "/info")[1])

    def encode(self, audio: bytes | str | os.PathLike, *, multipart: bool = False, npz: bool = True) -> Tokens:
        """Audio (a local file's path, or its bytes; any format the ingest decodes) -> :class:`Tokens`.

        ``npz`` asks for the ``.tokens.npz`` answer (compact), else JSON; ``multipart`` sends a form.
        """
        data = audio if isinstance(audio, bytes | bytearray) else Path(audio).read_bytes()
        accept = "application/x-npz" if npz else "application/json"
        if multipart:
            body, ctype = multipart_body("audio", "audio", bytes(data))
        else:
            body, ctype = bytes(data), "application/octet-stream"
        hdrs, out = self._call("POST", "/encode", body, {"Content-Type": ctype, "Accept": accept})
        if npz:
            with np.load(io.BytesIO(out), allow_pickle=False) as z:
                return Tokens(z["semantic"], z["acoustic"], _header(hdrs, "X-Codec-Id"),
                              float(_header(hdrs, "X-Frame-Rate")))
        obj = json.loads(out)
        return Tokens(np.asarray(obj["semantic"], np.int16).reshape(-1),
                      np.asarray(obj["acoustic"], np.uint8).reshape(-1, ACOUSTIC_DIM), obj["codec_id"], obj["frame_rate"])

    def decode(self, tokens: Tokens, *, flac: bool = False, npz: bool = True) -> bytes:
        """:class:`Tokens` -> audio file bytes (16-bit WAV, or FLAC), 24 kHz mono."""
        if npz:
            body, ctype = tokens.npz_bytes(), "application/x-npz"
        else:
            body = json.dumps({"codec_id": tokens.codec_id, "semantic": tokens.semantic.tolist(),
                               "acoustic": tokens.acoustic.tolist()}).encode()
            ctype = "application/json"
        headers = {"Content-Type": ctype, "X-Codec-Id": tokens.codec_id,
                   "Accept": "audio/flac" if flac else "audio/wav"}
        return self._call("POST", "/decode", body, headers)[1]

    def decode_array(self, tokens: Tokens) -> tuple[np.ndarray, int]:
        """:class:`Tokens` -> (float32 waveform ``[T * 1920]``, sample rate)."""
        import soundfile as sf

        x, sr = sf.read(io.BytesIO(self.decode(tokens)), dtype="float32")
        return x, sr


def _header(headers: dict, name: str) -> str:
    for k, v in headers.items():
        if k.lower() == name.lower():
            return v
    raise ServiceHTTPError(0, f"the service's answer lacks the {name} header")


def multipart_body(field: str, filename: str, data: bytes, content_type: str = "application/octet-stream") -> tuple[bytes, str]:
    """A multipart/form-data body with one file field: ``(body, content_type header)``."""
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


__all__ = ["CodecClient", "ServiceHTTPError", "Tokens", "multipart_body"]
