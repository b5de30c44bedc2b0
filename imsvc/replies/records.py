"""How a reply's end is recorded (SPEC §6, §9)."""

from __future__ import annotations

from dataclasses import dataclass

from imsvc.errors import ImsvcError
from imsvc.ledger import RecordOutcome
from imsvc.models import RecordStatus


@dataclass(frozen=True, slots=True)
class Outcome:
    """How generation ended: the record's status and finish_reason, and the error members are told."""

    status: RecordStatus
    finish_reason: str
    error: ImsvcError | None = None


@dataclass(slots=True)
class Timings:
    """What a run measured, in seconds of the monotonic clock."""

    began: float | None = None
    first_token: float | None = None
    ended: float | None = None

    def duration_ms(self) -> int:
        return int(((self.ended or 0) - self.began) * 1000) if self.began is not None else 0

    def first_token_ms(self) -> int | None:
        if self.began is None or self.first_token is None:
            return None
        return int((self.first_token - self.began) * 1000)


def record_outcome(
    outcome: Outcome,
    timings: Timings,
    request_content: str,
    text: str,
    prompt_tokens: int | None,
    completion_tokens: int | None,
) -> RecordOutcome:
    error = outcome.error
    return RecordOutcome(
        status=outcome.status,
        finish_reason=outcome.finish_reason,
        request_content=request_content,
        response_content=text or None,
        duration_ms=timings.duration_ms(),
        first_token_ms=timings.first_token_ms(),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        # "code: detail", so that a finished record can be told again as the same `ai_reply_error`
        error_message=f"{error.code}: {error.message}" if error is not None else None,
    )
