"""The 12.5 Hz VQ + FSQ speech codec (DESIGN.md §7): model, training and evaluation.

from codec import Codec, CodecConfig
"""

from codec.config import CodecConfig, CodecConfigError
from codec.speech_codec import Codec, CodecCheckpointError

__all__ = ["Codec", "CodecCheckpointError", "CodecConfig", "CodecConfigError"]
