"""Types that travel between the backend and its clients, defined once for both sides.

The backend's response schemas (backend/schemas.py) and the typed client (api.py) both use
these, so a field added here is added to the API and to the client at once.
"""

from __future__ import annotations

from pydantic import BaseModel

from comfygram.presets.contract import MediaKind

__all__ = ["MAX_OUTPUTS", "MediaFile", "ResultLimits"]

# The most files one attempt may hand back (PUT /api/jobs/{id}/outputs): an album is at most
# 10 in Telegram, and a preset may save a few more than it sends.
MAX_OUTPUTS = 20


class MediaFile(BaseModel):
    """One stored input or output of a job; its bytes: GET /api/jobs/{id}/inputs/{index} or
    /outputs/{index}."""

    index: int
    # Inputs: the photo slot's name (contract order); outputs: None.
    slot: str | None = None
    kind: MediaKind
    mime: str
    # None only for files stored before migration 0005, whose size was never recorded.
    size: int | None = None
    width: int | None = None
    height: int | None = None
    # 1 for a still image; the frame count of an animation or video.
    frames: int | None = None
    # None for a still image.
    duration_seconds: float | None = None


class ResultLimits(BaseModel):
    """What PUT /api/jobs/{id}/outputs (and /result) takes, per file and in number."""

    result_max_bytes: int
    result_max_pixels: int
    max_outputs: int = MAX_OUTPUTS
