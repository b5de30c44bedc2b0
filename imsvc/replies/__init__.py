"""AI replies: the scheduler that owns them, one run's state machine, and how a run becomes a record."""

from imsvc.replies.scheduler import ReplyScheduler

__all__ = ["ReplyScheduler"]
