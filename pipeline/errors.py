"""Typed errors of the ingest. Each has a short ``reason`` code (counted in the summary,
stored as the prefix of ``sources.error``) and a message naming the file and the problem."""

from __future__ import annotations


class SourceError(Exception):
    """A source cannot be used. ``status`` goes to the sources table."""

    reason = "error"
    status = "rejected"

    def __init__(self, path: str, detail: str):
        self.path = path
        self.detail = detail
        super().__init__(f"{self.reason}: {path}: {detail}")


class NotAFile(SourceError):
    """Not a regular file after links (a named pipe, a device, a socket): never opened, since
    reading one can block forever (a FIFO without a writer) or never end (``/dev/zero``)."""

    reason = "not_a_file"


class EmptyFile(SourceError):
    reason = "empty_file"


class Unreadable(SourceError):
    reason = "unreadable"


class NotAudio(SourceError):
    reason = "not_audio"


class Truncated(SourceError):
    reason = "truncated"


class NoSamples(SourceError):
    reason = "zero_length"


class TooShort(SourceError):
    reason = "too_short"


class TooLong(SourceError):
    """Longer than a caller's limit (the codec service's maximum audio length); the ingest sets none."""

    reason = "too_long"


class NonFinite(SourceError):
    reason = "non_finite"


class Silent(SourceError):
    reason = "silent"


class Duplicate(SourceError):
    reason = "duplicate"


class StageFailure(SourceError):
    """An unexpected error inside a stage: recorded with status ``failed`` (a bug or a
    resource problem, not bad input); the run goes on."""

    reason = "stage_failed"
    status = "failed"


class ActorDied(SourceError):
    """No result after Ray's retries: the stage actor holding the source died on every attempt
    (a crash, an OOM kill, a lost node), so Ray Data dropped its batch. Recorded ``failed``
    (retried by the next run), and the run goes on."""

    reason = "actor_died"
    status = "failed"
