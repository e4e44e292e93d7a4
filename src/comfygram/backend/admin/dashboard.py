"""The admin panel's landing page: the queue, the last 24 hours, revenue and the workers."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, ClassVar

from redis.exceptions import RedisError
from sqladmin import BaseView, expose
from starlette.requests import Request
from starlette.responses import Response

from comfygram.backend import stats

if TYPE_CHECKING:
    from comfygram.backend.admin import Panel

log = logging.getLogger(__name__)

WINDOW = timedelta(hours=24)


class DashboardView(BaseView):
    panel: ClassVar[Panel]
    name = "Dashboard"
    icon = "fa-solid fa-gauge"

    @expose("/dashboard", methods=["GET"], identity="dashboard")
    async def dashboard(self, request: Request) -> Response:
        panel = self.panel
        now = datetime.now(UTC)
        since = now - WINDOW
        async with panel.sessions() as session:
            overview = await stats.overview(session, now)
            by_status = await stats.jobs_by_status_since(session, since)
            per_preset = await stats.presets_since(session, since)
            revenue = await stats.revenue(session, since, now)
        queue_length: int | None
        try:
            queue_length = await panel.queue.length()
            workers = await panel.workers.live()
        except (RedisError, OSError) as exc:
            log.warning("dashboard: Redis unreachable: %s", type(exc).__name__)
            queue_length, workers = None, []
        context = {
            "title": "Dashboard",
            "subtitle": f"last 24 hours to {now:%Y-%m-%d %H:%M} UTC",
            "queue_length": queue_length,
            "overview": overview,
            "by_status": by_status,
            "jobs_24h": sum(by_status.values()),
            "per_preset": per_preset,
            "revenue": revenue,
            "workers": workers,
            "now": now,
        }
        return await self.templates.TemplateResponse(request, "comfygram/dashboard.html", context)
