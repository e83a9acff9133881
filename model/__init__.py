"""The TTS model (DESIGN.md §8): backbone + semantic head + flow-matching acoustic head, its
trainer (``model/train.py``) and generation (``model/generate.py``). See docs/model.md.

    from model.config import ModelConfig, TrainConfig, DataConfig
    from model.tts import TTSModel
    from model.trainer import RunSpec, run_training
    from model.synthesis import Synthesizer, SamplingConfig
"""
