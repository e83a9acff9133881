"""The 12.5 Hz VQ + FSQ speech codec (DESIGN.md §7): model, training and evaluation.

from codec import Codec, CodecConfig

``Codec`` (and torch with it) is imported on first use, not with the package: the tokenize
job's shard readers import ``codec.tokenizing`` and only decode FLAC, and importing torch
there cost each reader process ~2 s and a few hundred MiB.
"""

from codec.config import CodecConfig, CodecConfigError

__all__ = ["Codec", "CodecCheckpointError", "CodecConfig", "CodecConfigError"]


def __getattr__(name: str):
    if name in ("Codec", "CodecCheckpointError"):
        from codec import speech_codec

        return getattr(speech_codec, name)
    raise AttributeError(f"module 'codec' has no attribute {name!r}")
