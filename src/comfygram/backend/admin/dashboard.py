"""The admin panel's landing page: the queue, the last 24 hours, revenue, the workers, and
the last Star reconciliation with the discrepancies an operator has not resolved yet."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, ClassVar

from redis.exceptions import RedisError
from sqladmin import BaseView, expose
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from comfygram.backend import stars, stats
from comfygram.backend.admin.views import _flash, _flash_ok
from comfygram.backend.errors import ApiError

if TYPE_CHECKING:
    from comfygram.backend.admin import Panel

log = logging.getLogger(__name__)

WINDOW = timedelta(hours=24)


class DashboardView(BaseView):
    panel: ClassVar[Panel]
    name = "Dashboard"
    icon = "fa-solid fa-gauge"

    @expose("/dashboard", methods=["GET", "POST"], identity="dashboard")
    async def dashboard(self, request: Request) -> Response:
        if request.method == "POST":
            return await self._resolve(request)
        panel = self.panel
        now = datetime.now(UTC)
        since = now - WINDOW
        async with panel.sessions() as session:
            overview = await stats.overview(session, now)
            by_status = await stats.jobs_by_status_since(session, since)
            per_preset = await stats.presets_since(session, since)
            revenue = await stats.revenue(session, since, now)
            last_pass = await stars.last_pass(session)
            discrepancies = await stars.unresolved(session)
            unresolved_count = await stars.unresolved_count(session)
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
            "last_pass": last_pass,
            "discrepancies": discrepancies,
            "unresolved_count": unresolved_count,
        }
        return await self.templates.TemplateResponse(request, "comfygram/dashboard.html", context)

    async def _resolve(self, request: Request) -> Response:
        """The dashboard's one form: mark the Star discrepancy ``resolve`` resolved, in the
        operator's name (the guard has checked the form's CSRF token and origin)."""
        form = await request.form()
        try:
            discrepancy_id = int(str(form.get("resolve", "")))
        except ValueError:
            raise HTTPException(404, "No such discrepancy.") from None
        async with self.panel.sessions() as session:
            try:
                changed = await stars.resolve(session, discrepancy_id, self.panel.actor)
            except ApiError as exc:
                raise HTTPException(404, exc.message) from None
            await session.commit()
        if changed:
            log.info("Star discrepancy %d resolved by %s", discrepancy_id, self.panel.actor)
            _flash_ok(request, f"Discrepancy {discrepancy_id} marked resolved.")
        else:
            _flash(request, f"Discrepancy {discrepancy_id} was already resolved.")
        return RedirectResponse(f"{self.panel.base_url}/dashboard", status_code=302)
