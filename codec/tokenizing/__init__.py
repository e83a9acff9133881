"""The tokenize job's reusable parts (the job itself is ``tokenize/run.py``, read it first).

``tokenize/`` must not be a package (it would shadow the standard library's ``tokenize``), and a
module next to ``run.py`` cannot be imported by Ray workers: cloudpickle pickles a class or a
function by module reference, so whatever Ray Data runs remotely must live in an installed
package. This one sits in ``codec/`` because the job is batched codec inference:

- ``bucketing``: :class:`BatchingConfig`, length bucketing, the audio shard reader (read -> batch);
- ``engines``: the two ways to run read -> batch -> encode (Ray Data: reader tasks + an encoder
  actor pool; local: one reader thread + one encoder), and the Arrow rows batches travel as;
- ``resources``: how many encoder actors, with which CPUs / GPUs / memory;
- ``plan``: which shards to do (lock per output and codec, clean-up of a killed run, resume);
- ``commit``: committing a complete shard, counting what it wrote (``stats.Stats``).

The codec inference itself is ``codec.token_encoder.TokenEncoder``; the shard formats are
``manifests.shards``; the token shard commit protocol is ``manifests.tokens``. No module here
imports torch or Ray at import time: reader processes only decode FLAC.
"""


class TokenizeConfigError(ValueError):
    """An invalid option of the tokenize job; the message says how to fix it."""
