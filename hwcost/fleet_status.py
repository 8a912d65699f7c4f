"""What a campaign's fleet is doing: progress, and per worker tasks done and failed,
throughput and last heartbeat (``hwcost campaign ls`` / ``status``)."""

from __future__ import annotations

from hwcost.store.queue_records import CampaignStatus, WorkerStats

__all__ = ["CampaignStatus", "WorkerStats", "campaigns"]


def campaigns(store, name: str | None = None) -> list[CampaignStatus]:
    """Every campaign in the store (or the one called ``name``) with its progress, oldest
    first; three grouped queries whatever the number of campaigns."""
    return store.campaign_statuses(name)
