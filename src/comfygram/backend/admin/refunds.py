"""The Payments view's "Refund" page (docs/admin.md): what the refund takes back (credits
already spent => a shortfall; a balance never goes below 0), a reason, then the refund through
payment_refunds.refund (refundStarPayment once, the credits taken back once)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from sqladmin import expose
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from comfygram.backend import payment_refunds, support
from comfygram.backend.errors import ApiError

if TYPE_CHECKING:
    from comfygram.backend.admin import Panel


async def refund_and_tell(panel: Panel, ref: str, reason: str) -> payment_refunds.TakeBack:
    """The operator's refund, and the user told when this call marked it refunded."""
    payment_refunds.require_bot(panel.settings)
    done = await payment_refunds.refund(
        panel.sessions,
        ref,
        actor=panel.actor,
        reason=reason,
        call_telegram=payment_refunds.telegram_refunder(panel.settings),
    )
    if done.changed:
        await support.tell_refunded(panel.settings, panel.redis, done)
    return done


def refunded_message(done: payment_refunds.TakeBack) -> str:
    if not done.changed:
        return "This payment was already refunded; nothing changed."
    text = f"Refunded: the Stars went back, {done.taken_back} credits were taken back"
    if done.shortfall:
        text += f" ({done.shortfall} had already been spent and stay spent)"
    return text + "."


class PaymentRefundActions:
    """Mixed into the Payments view: /admin/payment/refund/{pk}."""

    panel: ClassVar[Panel]

    @expose("/refund/{pk}", methods=["GET", "POST"])
    async def refund_payment(self, request: Request) -> Response:
        """GET: what the refund would take back, and a reason field; POST: refund."""
        view: Any = self
        pk = view._pk(request)
        async with view.panel.sessions() as session:
            try:
                preview = await payment_refunds.preview(session, pk)
            except ApiError as exc:
                raise HTTPException(404, exc.message) from None
        context: dict[str, Any] = {
            "title": f"Refund payment {pk[:8]}",
            "preview": preview,
            "reason": "",
            "support_request": request.query_params.get("support", ""),
        }
        if request.method == "GET":
            return await view.templates.TemplateResponse(
                request, "comfygram/payment_refund.html", context
            )
        form = await view._checked_form(request)
        reason = str(form.get("reason") or "").strip()
        context.update(reason=reason, support_request=str(form.get("support_request") or ""))
        error = None
        if not reason:
            error = "Write the reason: it is kept with the payment."
        elif len(reason) > 500 or "\x00" in reason:
            error = "The reason is at most 500 characters of text."
        if error is None:
            try:
                done = await refund_and_tell(view.panel, pk, reason)
            except ApiError as exc:
                error = exc.message
        if error is not None:
            context["error"] = error
            return await view.templates.TemplateResponse(
                request, "comfygram/payment_refund.html", context, status_code=400
            )
        from comfygram.backend.admin.views import _flash_ok  # views imports this module

        _flash_ok(request, refunded_message(done))
        return view._details(request, pk)
