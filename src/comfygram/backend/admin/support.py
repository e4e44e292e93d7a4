"""The admin panel's refunds and /paysupport requests (docs/admin.md, docs/payments.md).

- Payments: a "Refund" page per payment (admin/refunds.py).
- Support requests: the open /paysupport requests with the payment, the user's balance and
  recent jobs; a one-click refund of the payment and a reply the backend sends to the user's
  chat (sendMessage), which marks the request answered.
"""

# sqladmin is configured with class attributes (lists and dicts), read but never mutated.
# ruff: noqa: RUF012

from __future__ import annotations

import logging
from typing import Any

from sqladmin import expose
from sqladmin.filters import StaticValuesFilter
from sqlalchemy import Select, select
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from comfygram.backend import payment_refunds, support
from comfygram.backend.admin.refunds import refund_and_tell, refunded_message
from comfygram.backend.admin.views import (
    _flash,
    _flash_error,
    _flash_ok,
    _user_link,
    _View,
    identifier_ok,
)
from comfygram.backend.errors import ApiError
from comfygram.backend.models import Job, Payment, SupportRequest, User

log = logging.getLogger(__name__)

STATUSES = ("open", "answered", "refunded", "closed")


class SupportRequestAdmin(_View, model=SupportRequest):
    name = "Support request"
    name_plural = "Support requests"
    icon = "fa-solid fa-life-ring"
    column_list = [
        SupportRequest.id,
        SupportRequest.status,
        SupportRequest.user_id,
        SupportRequest.payment_id,
        SupportRequest.text,
        SupportRequest.created_at,
        SupportRequest.answered_at,
    ]
    column_sortable_list = [SupportRequest.id, SupportRequest.created_at]
    column_default_sort = [(SupportRequest.id, True)]
    column_filters = [StaticValuesFilter(SupportRequest.status, values=[(s, s) for s in STATUSES])]
    column_formatters = {SupportRequest.user_id: _user_link}
    column_formatters_detail = {SupportRequest.user_id: _user_link}
    details_template = "comfygram/support_details.html"

    def list_query(self, request: Request) -> Select:
        """Open requests first (newest first within each status)."""
        query = super().list_query(request)
        if "status" not in request.query_params and not request.query_params.get("all"):
            query = query.where(SupportRequest.status == "open")
        return query

    async def details_context(self, request: Request) -> dict[str, Any]:
        """The payment with what a refund would take back, the user's balance, recent jobs."""
        pk = request.path_params["pk"]
        if not identifier_ok(SupportRequest, pk):
            return {}
        async with self.panel.sessions() as session:
            ticket = await session.get(SupportRequest, int(pk))
            if ticket is None:
                return {}
            user = await session.get(User, ticket.user_id)
            payment = preview = None
            if ticket.payment_id is not None:
                payment = await session.get(Payment, ticket.payment_id)
                preview = await payment_refunds.preview(session, ticket.payment_id)
            jobs = await session.scalars(
                select(Job)
                .where(Job.user_id == ticket.user_id)
                .order_by(Job.created_at.desc())
                .limit(10)
            )
            return {
                "ticket": ticket,
                "customer": user,
                "payment": payment,
                "preview": preview,
                "recent_jobs": list(jobs),
            }

    @expose("/reply/{pk}", methods=["POST"])
    async def reply(self, request: Request) -> Response:
        """Send the operator's reply to the user's chat and mark the request answered."""
        form = await self._checked_form(request)
        pk = int(self._pk(request))
        text = str(form.get("reply") or "").strip()
        if not text or len(text) > support.MAX_REPLY or "\x00" in text:
            _flash_error(request, f"Write a reply of 1 to {support.MAX_REPLY} characters.")
            return self._details(request, pk)
        async with self.panel.sessions() as session:
            ticket = await session.get(SupportRequest, pk)
            if ticket is None:
                raise HTTPException(404, "No such support request.")
            user = await session.get(User, ticket.user_id)
        assert user is not None
        message = support.reply_text(user.language_code, pk, text)
        try:
            await support.send_to_chat(
                self.panel.settings, self.panel.redis, ticket.chat_id, message
            )
        except Exception as exc:
            log.warning("reply to support request %d not sent: %s", pk, type(exc).__name__)
            _flash_error(
                request, f"The reply could not be sent ({type(exc).__name__}); nothing changed."
            )
            return self._details(request, pk)
        async with self.panel.sessions() as session:
            status = "refunded" if ticket.status == "refunded" else "answered"
            await support.mark(session, pk, status, self.panel.actor, reply=text)
            await session.commit()
        log.info("support request %d answered by %s", pk, self.panel.actor)
        _flash_ok(request, "The reply was sent to the user; the request is answered.")
        return self._details(request, pk)

    @expose("/refund/{pk}", methods=["POST"])
    async def refund(self, request: Request) -> Response:
        """One click: refund the request's payment and mark the request refunded."""
        await self._checked_form(request)
        pk = int(self._pk(request))
        async with self.panel.sessions() as session:
            ticket = await session.get(SupportRequest, pk)
        if ticket is None:
            raise HTTPException(404, "No such support request.")
        if ticket.payment_id is None:
            _flash_error(request, "This request names no payment: refund one from Payments.")
            return self._details(request, pk)
        try:
            done = await refund_and_tell(self.panel, ticket.payment_id, f"support request #{pk}")
        except ApiError as exc:
            _flash_error(request, exc.message)
            return self._details(request, pk)
        async with self.panel.sessions() as session:
            await support.mark(session, pk, "refunded", self.panel.actor)
            await session.commit()
        if done.changed:
            _flash_ok(request, refunded_message(done))
        else:
            _flash(request, refunded_message(done))
        return self._details(request, pk)

    @expose("/close/{pk}", methods=["POST"])
    async def close(self, request: Request) -> Response:
        """Close a request without a reply (spam, solved elsewhere)."""
        await self._checked_form(request)
        pk = int(self._pk(request))
        async with self.panel.sessions() as session:
            try:
                await support.mark(session, pk, "closed", self.panel.actor)
            except ApiError as exc:
                raise HTTPException(404, exc.message) from None
            await session.commit()
        _flash_ok(request, f"Support request #{pk} is closed.")
        return RedirectResponse(
            request.url_for("admin:list", identity=self.identity), status_code=302
        )


VIEWS = (SupportRequestAdmin,)
