"""Worker heartbeats as the API serves them: a ComfyUI URL's credentials never leave."""

from __future__ import annotations

import httpx
import pytest

from comfygram.backend.schemas import WorkerReport
from comfygram.backend.workers import redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://u:pw@gpu-1:8188", "http://gpu-1:8188"),
        ("https://user@gpu-1/comfy?x=1", "https://gpu-1/comfy?x=1"),
        ("http://u:p%40ss@[::1]:8188/", "http://[::1]:8188/"),
        ("http://a:b@c@gpu-1:8188", "http://gpu-1:8188"),
        ("http://gpu-1:8188", "http://gpu-1:8188"),
        ("not a url at all", "not a url at all"),
    ],
)
def test_redact_url_drops_the_userinfo(url: str, shown: str) -> None:
    assert redact_url(url) == shown


async def test_the_workers_list_never_shows_a_comfyui_password(api: httpx.AsyncClient, app):
    report = {
        "comfyui_url": "http://ops:s3cret-pw@gpu-1:8188",
        "healthy": True,
        "runnable": ["bw"],
        "problems": {},
        "ttl_seconds": 30,
    }
    answer = await api.put("/api/workers/gpu-1", json=report)
    assert answer.status_code == 200 and answer.json()["comfyui_url"] == "http://gpu-1:8188"
    (worker,) = (await api.get("/api/workers")).json()
    assert worker["comfyui_url"] == "http://gpu-1:8188"
    stored = await app.state.redis.hget(app.state.workers.key, "gpu-1")
    assert "s3cret-pw" not in str(stored)

    # A heartbeat stored before redaction existed is redacted when served.
    old = WorkerReport(
        comfyui_url="http://a:b@gpu-2:8188", healthy=True, runnable=[], ttl_seconds=30
    )
    raw = await app.state.workers.record("gpu-2", old)
    await app.state.redis.hset(
        app.state.workers.key,
        "gpu-2",
        raw.model_copy(update={"comfyui_url": "http://a:b@gpu-2:8188"}).model_dump_json(),
    )
    listed = {w["name"]: w["comfyui_url"] for w in (await api.get("/api/workers")).json()}
    assert listed == {"gpu-1": "http://gpu-1:8188", "gpu-2": "http://gpu-2:8188"}
