"""Every wire-level name in one place: topics, protocol ids, versions."""

from __future__ import annotations

from .codec import PROTOCOL_VERSION

SOFTWARE_VERSION = "0.1.0"
ADVERT_TOPIC = "lpnode/adverts/1"
JOB_PROTOCOL = "/lpnode/job/1"

__all__ = ["ADVERT_TOPIC", "JOB_PROTOCOL", "PROTOCOL_VERSION", "SOFTWARE_VERSION"]
