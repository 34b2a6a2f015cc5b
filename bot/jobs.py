"""The job record: everything needed to resume after a crash and deliver exactly once.

Lifecycle (`JobState`):

    submitting ──► polling ──► to_deliver ──► delivering ──► done
         │            │            ▲   ▲           │
         └────────────┴────────────┘   └───────────┘ (lease expired: another worker retries)

`submitting`: the row exists and holds the prepared image; the provider call is not confirmed.
`polling`: the provider has the job (`provider_job_id`); polled on its schedule.
`to_deliver`: the outcome is known (a video URL, or a failure to report); waiting for a worker.
`delivering`: claimed by one worker until `delivery_lease_until` (an atomic compare-and-set).
`done`: the user has been told (video posted or failure explained). Terminal.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


class JobState(enum.StrEnum):
    SUBMITTING = "submitting"
    POLLING = "polling"
    TO_DELIVER = "to_deliver"
    DELIVERING = "delivering"
    DONE = "done"


ACTIVE_STATES = (JobState.SUBMITTING, JobState.POLLING, JobState.TO_DELIVER, JobState.DELIVERING)


class Outcome(enum.StrEnum):
    VIDEO = "video"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class NewJob:
    """What the Discord layer knows when a request has been accepted."""

    requester_id: int
    guild_id: int | None
    channel_id: int
    model: str
    prompt: str
    duration: int
    resolution: str
    orientation: str
    fit: str
    image_width: int
    image_height: int
    image_data: bytes
    """The fitted JPEG, kept until the provider confirms the job so a restart can resubmit."""
    upload_limit_bytes: int
    estimated_usd: float | None = None
    thread_id: int | None = None
    status_message_id: int | None = None
    interaction_id: int | None = None
    parent_job_id: int | None = None
    chain_length: int = 1
    end_image_data: bytes | None = None
    delivery_target: str | None = None
    interaction_token: str | None = field(default=None, repr=False)
    """A credential (answers through the interaction's webhook): never logged nor shown."""
    interaction_expires_at: datetime | None = None
    origin_guild_id: int | None = None
    member_language: str | None = None
    public_language: str | None = None


@dataclass(frozen=True)
class Job:
    id: int
    state: JobState
    outcome: Outcome | None
    requester_id: int
    guild_id: int | None
    channel_id: int
    thread_id: int | None
    status_message_id: int | None
    interaction_id: int | None
    model: str
    prompt: str
    duration: int
    resolution: str
    orientation: str
    fit: str
    image_width: int
    image_height: int
    image_data: bytes | None
    upload_limit_bytes: int
    estimated_usd: float | None
    provider_job_id: str | None
    provider_status: str | None
    submit_attempts: int
    poll_attempts: int
    consecutive_errors: int
    next_poll_at: datetime | None
    result_url: str | None
    error_message: str | None
    cost_usd: float | None
    delivery_worker: str | None
    delivery_lease_until: datetime | None
    delivery_attempts: int
    delivery_message_id: int | None
    created_at: datetime
    updated_at: datetime
    submitted_at: datetime | None
    finished_at: datetime | None
    """When the outcome became known (provider completed/failed, or we gave up)."""
    delivered_at: datetime | None
    submit_worker: str | None = None
    """The worker holding the submit lease (next_poll_at is when it runs out)."""
    submit_sent_at: datetime | None = None
    """When a submit request last went out; the provider may have a job from then on."""
    last_checked_at: datetime | None = None
    """When the provider was last asked about the job (or it was submitted)."""
    waited_seconds: float = 0.0
    """Time counted against JOB_TIMEOUT_SECONDS; the bot's own downtime is not counted."""
    delivery_note: str | None = None
    """What happened while posting (the thread was gone, posted elsewhere), for the status."""
    delivery_target: str | None = None
    """None: the thread or channel; "channel": the thread is gone; "dm": the channel is too;
    "interaction": the interaction's follow-ups (a user install where the bot cannot post)."""
    parent_job_id: int | None = None
    """The job this one extends: its last frame is this job's first."""
    chain_length: int = 1
    """Clips in the chain up to and including this one (1 for a plain job)."""
    joined_message_id: int | None = None
    """The message with the chain's clips joined into one video."""
    cancelled_by: int | None = None
    end_image_data: bytes | None = None
    """The fitted end frame (models that take a last frame), kept until the provider has it."""
    poll_worker: str | None = None
    """The worker that last claimed the job's poll; while it polls, next_poll_at is its lease."""
    interaction_token: str | None = field(default=None, repr=False)
    """The interaction's token, for jobs answered through it (user installs where the bot can't
    post): a credential, kept out of repr and logs and cleared once the job is done."""
    interaction_expires_at: datetime | None = None
    """When that token dies (Discord: 15 minutes after the interaction), on the bot's clock."""
    origin_guild_id: int | None = None
    """The server a user-install job was asked in when the bot is not a member there. Only for
    the link back to it: `guild_id` stays None, so only member and bot limits apply."""
    member_language: str | None = None
    """The requester's language (bot/i18n.py catalogue name): private words and DMs."""
    public_language: str | None = None
    """The language of public messages where the job was asked (the server's preferred one)."""

    def language_for_delivery(self) -> str:
        """Who reads what is posted: the requester alone in a DM, everyone in a channel."""
        if self.delivery_target == "dm" or (self.guild_id is None and self.origin_guild_id is None):
            return self.member_language or "en"
        return self.public_language or self.member_language or "en"

    @property
    def delivery_channel_id(self) -> int:
        """Where results go: the job's thread, or the channel when no thread could be used (or
        the thread has since been deleted). Meaningless when `delivery_target` is "dm"."""
        if self.thread_id is None or self.delivery_target == "channel":
            return self.channel_id
        return self.thread_id
