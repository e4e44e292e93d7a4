"""The admin panel's tables (sqladmin model views) and the operator's actions on them."""

# sqladmin is configured with class attributes (lists and dicts), read but never mutated.
# ruff: noqa: RUF012

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncGenerator
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from markupsafe import Markup
from redis.exceptions import RedisError
from sqladmin import ModelView, expose
from sqladmin.filters import AllUniqueStringValuesFilter, BooleanFilter, StaticValuesFilter
from sqladmin.helpers import Writer, get_primary_keys, secure_filename, stream_to_csv
from sqlalchemy import BigInteger, Select, SmallInteger, String, cast, or_, select
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from wtforms.validators import InputRequired, NumberRange

from comfygram.backend import accounts, jobs, presets
from comfygram.backend.admin import BASE_URL
from comfygram.backend.admin.auth import csrf_ok
from comfygram.backend.admin.media import chosen_options, gallery, output_summary
from comfygram.backend.admin.refunds import PaymentRefundActions
from comfygram.backend.errors import ApiError
from comfygram.backend.models import (
    FileRole,
    Job,
    LedgerEntry,
    Payment,
    Preset,
    User,
    as_utc,
)
from comfygram.backend.presets import contract_of
from comfygram.domain.jobs import DeliveryStatus, JobStatus
from comfygram.domain.ledger import Reason

if TYPE_CHECKING:
    from comfygram.backend.admin import Panel

log = logging.getLogger(__name__)

MAX_ADJUSTMENT = 1_000_000
# A spreadsheet runs a cell starting with one of these as a formula (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_DIGITS = re.compile(r"[0-9]{1,19}")


def _integer_limit(column: Any) -> int:
    if isinstance(column.type, SmallInteger):
        return 2**15 - 1
    if isinstance(column.type, BigInteger):
        return 2**63 - 1
    return 2**31 - 1  # Integer: int4 on PostgreSQL


def identifier_ok(model: type, identifier: object) -> bool:
    """Whether `identifier` can be a primary key of `model`: digits in range for an integer key,
    text without NUL within the column's length for a text key. Anything else is no row (404),
    not a conversion error or a database error (500)."""
    (column,) = get_primary_keys(model)
    text = str(identifier)
    try:
        python_type = column.type.python_type
    except NotImplementedError:
        python_type = str
    if python_type is int:
        return bool(_DIGITS.fullmatch(text)) and int(text) <= _integer_limit(column)
    length = getattr(column.type, "length", None)
    return bool(text) and "\x00" not in text and (length is None or len(text) <= length)


def csv_cell(value: object) -> str:
    """A value as a CSV cell a spreadsheet shows as text: a leading ' neutralises a formula."""
    if value is None:
        return ""
    text = str(value)
    if not isinstance(value, int | float) and text.startswith(_FORMULA_START):
        return "'" + text
    return text


def _flash(request: Request, message: str, category: str = "primary") -> None:
    """sqladmin's flash, stored so the session notices a second message before the first
    was shown (its own helper appends to the stored list in place, which is not saved)."""
    messages = list(request.session.get("_messages", []))
    messages.append({"category": category, "title": "", "message": message})
    request.session["_messages"] = messages


def _flash_ok(request: Request, message: str) -> None:
    _flash(request, message, "success")


def _flash_error(request: Request, message: str) -> None:
    _flash(request, message, "danger")


def _seconds(start: datetime | None, end: datetime | None) -> str:
    start, end = as_utc(start), as_utc(end)
    if start is None or end is None:
        return "—"
    return f"{max(0.0, (end - start).total_seconds()):.1f} s"


def _user_link(model: Any, _attribute: Any) -> Markup:
    return Markup('<a href="{0}/user/details/{1}">{1}</a>').format(BASE_URL, model.user_id)


def _outputs(model: Any, _attribute: Any) -> Markup:
    return output_summary(model, BASE_URL)


def _telegram_id_term(term: str) -> int | None:
    term = term.strip()
    return int(term) if term.isdigit() and len(term) < 19 else None


def _users_matching(term: str) -> Select:
    """Ids of users whose Telegram id is `term` or whose username contains it."""
    telegram_id = _telegram_id_term(term)
    conditions = [User.username.ilike(f"%{term.strip().lstrip('@')}%")]
    if telegram_id is not None:
        conditions.append(User.telegram_id == cast(telegram_id, BigInteger))
    return select(User.id).where(or_(*conditions))


class _View(ModelView):
    panel: ClassVar[Panel]
    can_create = False
    can_delete = False
    can_edit = False
    page_size = 50

    async def get_object_for_details(self, request: Request) -> Any:
        if not identifier_ok(self.model, request.path_params.get("pk", "")):
            return None
        return await super().get_object_for_details(request)

    async def get_object_for_edit(self, request: Request) -> Any:
        if not identifier_ok(self.model, request.path_params.get("pk", "")):
            return None
        return await super().get_object_for_edit(request)

    async def export_data(
        self, data: list[Any], export_type: str = "csv", request: Request | None = None
    ) -> StreamingResponse:
        if export_type != "csv":
            return await super().export_data(data, export_type=export_type, request=request)
        columns = self.get_export_columns()

        async def rows(writer: Writer) -> AsyncGenerator[Any, None]:
            yield writer.writerow(columns)
            for row in data:
                yield writer.writerow(
                    [csv_cell(await self.get_prop_value(row, c)) for c in columns]
                )

        filename = secure_filename(self.get_export_name(export_type="csv"))
        return StreamingResponse(
            content=stream_to_csv(rows),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f"attachment;filename={filename}"},
        )

    def _pk(self, request: Request) -> str:
        """The path's id, or 404 when it cannot be one of this view's rows."""
        pk = request.path_params["pk"]
        if not identifier_ok(self.model, pk):
            raise HTTPException(404, f"No such {self.name.lower()}.")
        return str(pk)

    async def _checked_form(self, request: Request) -> FormData:
        form = await request.form()
        if not csrf_ok(request, form.get("csrf")):
            raise HTTPException(403, "This form has expired: reload the page and try again.")
        return form

    def _details(self, request: Request, pk: object) -> RedirectResponse:
        url = request.url_for("admin:details", identity=self.identity, pk=str(pk))
        return RedirectResponse(url, status_code=302)


class UserAdmin(_View, model=User):
    name = "User"
    name_plural = "Users"
    icon = "fa-solid fa-user"
    column_list = [
        User.id,
        User.telegram_id,
        User.username,
        User.first_name,
        User.balance,
        User.banned,
        User.blocked_bot,
        User.created_at,
    ]
    column_searchable_list = [User.telegram_id, User.username]
    column_sortable_list = [User.id, User.telegram_id, User.balance, User.created_at]
    column_default_sort = [(User.id, True)]
    column_filters = [BooleanFilter(User.banned), BooleanFilter(User.blocked_bot)]
    details_template = "comfygram/user_details.html"

    def search_placeholder(self) -> str:
        return "Telegram id or username"

    def search_query(self, stmt: Select, term: str) -> Select:
        return stmt.where(User.id.in_(_users_matching(term)))

    async def details_context(self, request: Request) -> dict[str, Any]:
        pk = request.path_params["pk"]
        if not identifier_ok(User, pk):
            return {}
        async with self.panel.sessions() as session:
            ledger = await session.scalars(
                select(LedgerEntry)
                .where(LedgerEntry.user_id == int(pk))
                .order_by(LedgerEntry.id.desc())
                .limit(20)
            )
            recent = await session.scalars(
                select(Job).where(Job.user_id == int(pk)).order_by(Job.created_at.desc()).limit(20)
            )
            return {"ledger": list(ledger), "recent_jobs": list(recent)}

    @expose("/ban/{pk}", methods=["POST"])
    async def ban(self, request: Request) -> Response:
        """Block (banned=1) or unblock (banned=0) a user."""
        form = await self._checked_form(request)
        pk = self._pk(request)
        banned = form.get("banned") == "1"
        async with self.panel.sessions() as session:
            try:
                user = await accounts.set_banned(session, int(pk), banned)
            except ApiError as exc:
                raise HTTPException(404, exc.message) from None
            await session.commit()
        log.info(
            "user %s %s by %s",
            user.telegram_id,
            "blocked" if banned else "unblocked",
            self.panel.actor,
        )
        _flash_ok(
            request,
            f"User {user.telegram_id} is {'blocked' if banned else 'unblocked'}.",
        )
        return self._details(request, pk)

    @expose("/credit/{pk}", methods=["GET", "POST"])
    async def credit(self, request: Request) -> Response:
        """Add or take credits, with a reason; written to the ledger with the operator's name."""
        pk = self._pk(request)
        async with self.panel.sessions() as session:
            user = await session.get(User, int(pk))
        if user is None:
            raise HTTPException(404, "No such user.")
        context: dict[str, Any] = {
            "user": user,
            "request_key": str(uuid.uuid4()),
            "title": f"Credits of {user.telegram_id}",
            "amount": "",
            "reason": "",
        }
        if request.method == "GET":
            return await self.templates.TemplateResponse(request, "comfygram/credit.html", context)

        form = await self._checked_form(request)
        raw_amount = str(form.get("amount") or "").strip()
        reason = str(form.get("reason") or "").strip()
        request_key = str(form.get("request_key") or "").strip()
        context.update(amount=raw_amount, reason=reason, request_key=request_key)
        error = None
        try:
            amount = int(raw_amount)
        except ValueError:
            amount = 0
            error = "The amount must be a whole number of credits, like 10 or -5."
        if error is None and (amount == 0 or abs(amount) > MAX_ADJUSTMENT):
            error = f"The amount must not be zero, and at most {MAX_ADJUSTMENT:,} either way."
        elif error is None and not reason:
            error = "Write the reason: it is kept in the ledger."
        elif error is None and (len(reason) > 500 or "\x00" in reason):
            error = "The reason is at most 500 characters of text."
        elif error is None and (not request_key or len(request_key) > 100):
            error = "This form has expired: reload the page and try again."
        if error is None:
            async with self.panel.sessions() as session:
                try:
                    user, entry = await accounts.adjust(
                        session,
                        user.telegram_id,
                        amount,
                        note=reason,
                        actor=self.panel.actor,
                        request_key=f"panel:{request_key}",
                    )
                    await session.commit()
                except ApiError as exc:
                    error = exc.message
        if error is not None:
            context["error"] = error
            if not request_key or len(request_key) > 100:
                context["request_key"] = str(uuid.uuid4())
            return await self.templates.TemplateResponse(
                request, "comfygram/credit.html", context, status_code=400
            )
        if entry is None:
            _flash(request, "This adjustment was already posted; nothing changed.")
        else:
            log.info(
                "credits of user %s %+d by %s: %s",
                user.telegram_id,
                amount,
                self.panel.actor,
                reason,
            )
            _flash_ok(request, f"{amount:+d} credits posted; the balance is {user.balance}.")
        return self._details(request, pk)


class JobAdmin(_View, model=Job):
    name = "Job"
    name_plural = "Jobs"
    icon = "fa-solid fa-image"
    column_list = [
        Job.id,
        Job.user_id,
        Job.preset_slug,
        "outputs",
        Job.status,
        Job.attempts,
        Job.price,
        Job.delivery_status,
        Job.worker,
        Job.created_at,
        Job.finished_at,
    ]
    # The list's columns without the thumbnails (a file list is no CSV cell).
    column_export_list = [
        Job.id,
        Job.user_id,
        Job.preset_slug,
        Job.status,
        Job.attempts,
        Job.price,
        Job.delivery_status,
        Job.worker,
        Job.created_at,
        Job.finished_at,
    ]
    column_labels = {"outputs": "output"}
    column_details_list = [
        Job.id,
        Job.user_id,
        Job.preset_slug,
        Job.prompt,
        Job.status,
        Job.attempts,
        Job.progress,
        Job.price,
        Job.error,
        Job.delivery_status,
        Job.delivery_error,
        Job.delivered_at,
        Job.worker,
        Job.idempotency_key,
        Job.created_at,
        Job.started_at,
        Job.finished_at,
        Job.updated_at,
    ]
    column_searchable_list = [Job.id]
    column_sortable_list = [Job.created_at, Job.finished_at, Job.attempts, Job.status]
    column_default_sort = [(Job.created_at, True)]
    column_filters = [
        StaticValuesFilter(Job.status, values=[(s.value, s.value) for s in JobStatus]),
        AllUniqueStringValuesFilter(Job.preset_slug, title="Preset"),
        StaticValuesFilter(
            Job.delivery_status,
            values=[(s.value, s.value) for s in DeliveryStatus],
            title="Delivery",
        ),
    ]
    column_formatters = {Job.user_id: _user_link, "outputs": _outputs}
    column_formatters_detail = {Job.user_id: _user_link}
    details_template = "comfygram/job_details.html"

    async def details_context(self, request: Request) -> dict[str, Any]:
        """The options with their titles, and every input and output as the gallery shows it
        (titles from the preset's contract as last synced; ids alone when it is gone)."""
        pk = request.path_params["pk"]
        if not identifier_ok(Job, pk):
            return {}
        async with self.panel.sessions() as session:
            job = await session.get(Job, pk)
            preset = await session.get(Preset, job.preset_slug) if job is not None else None
        if job is None:
            return {}
        try:
            contract = contract_of(preset) if preset is not None else None
        except ValueError:  # a manifest this version cannot read: show ids only
            contract = None
        store, base = self.panel.store, self.panel.base_url
        return {
            "preset_title": preset.title_en if preset is not None else job.preset_slug,
            "chosen_options": chosen_options(job, contract),
            "inputs": gallery(job, FileRole.INPUT, contract, store, base),
            "outputs": gallery(job, FileRole.OUTPUT, contract, store, base),
        }

    def search_placeholder(self) -> str:
        return "job id or the user's Telegram id"

    def search_query(self, stmt: Select, term: str) -> Select:
        term = term.strip()
        return stmt.where(or_(Job.id.ilike(f"{term}%"), Job.user_id.in_(_users_matching(term))))

    @staticmethod
    def timings(job: Job) -> list[tuple[str, str]]:
        def at(value: datetime | None) -> str:
            value = as_utc(value)
            return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "—"

        return [
            ("created", at(job.created_at)),
            ("started", at(job.started_at)),
            ("finished", at(job.finished_at)),
            ("delivered", at(job.delivered_at)),
            ("queue wait", _seconds(job.created_at, job.started_at)),
            ("run time", _seconds(job.started_at, job.finished_at)),
        ]

    @expose("/refund/{pk}", methods=["POST"])
    async def refund(self, request: Request) -> Response:
        """Give a finished job's price back, exactly once."""
        await self._checked_form(request)
        pk = self._pk(request)
        async with self.panel.sessions() as session:
            try:
                job, refunded = await jobs.refund(session, pk, actor=self.panel.actor)
                await session.commit()
            except ApiError as exc:
                if exc.status == 404:
                    raise HTTPException(404, exc.message) from None
                _flash_error(request, exc.message)
                return self._details(request, pk)
        if refunded:
            log.info("job %s refunded (%d credits) by %s", job.id, job.price, self.panel.actor)
            _flash_ok(request, f"Refunded {job.price} credits.")
        elif not job.price:
            _flash(request, "This job was free: nothing to refund.")
        else:
            _flash(request, "This job was already refunded; nothing changed.")
        return self._details(request, pk)

    @expose("/retry/{pk}", methods=["POST"])
    async def retry(self, request: Request) -> Response:
        """Run a failed job again as a new, free job (one per failed job)."""
        await self._checked_form(request)
        pk = self._pk(request)
        panel = self.panel
        async with panel.sessions() as session:
            try:
                created = await jobs.retry_free(
                    session,
                    panel.store,
                    pk,
                    panel.settings.max_active_jobs_per_user,
                    panel.settings.max_image_pixels,
                )
                await session.commit()
            except ApiError as exc:
                if exc.code == "job_not_found":
                    raise HTTPException(404, exc.message) from None
                _flash_error(request, exc.message)
                return self._details(request, pk)
        job = created.job
        if job.status == JobStatus.QUEUED:
            try:
                await panel.queue.enqueue(job.id, jobs.queue_payload(job))
            except (RedisError, OSError) as exc:
                # Safe in the database: the reconciler queues it when Redis is back.
                log.warning("job %s not queued yet: %s", job.id, type(exc).__name__)
        if created.replayed:
            _flash(request, f"Job {pk} was already retried as this job.")
        else:
            log.info("job %s retried as %s (free) by %s", pk, job.id, panel.actor)
            _flash_ok(request, f"Retrying job {pk} as this new, free job.")
        return self._details(request, job.id)


class PaymentAdmin(PaymentRefundActions, _View, model=Payment):
    name = "Payment"
    name_plural = "Payments"
    icon = "fa-solid fa-star"
    column_list = [
        Payment.id,
        Payment.user_id,
        Payment.package,
        Payment.credits,
        Payment.amount,
        Payment.currency,
        Payment.status,
        Payment.created_at,
        Payment.paid_at,
    ]
    column_searchable_list = [Payment.id]
    column_sortable_list = [Payment.created_at, Payment.paid_at, Payment.amount]
    column_default_sort = [(Payment.created_at, True)]
    column_filters = [
        StaticValuesFilter(
            Payment.status,
            values=[("pending", "pending"), ("paid", "paid"), ("refunded", "refunded")],
        ),
        AllUniqueStringValuesFilter(Payment.package),
    ]
    column_formatters = {Payment.user_id: _user_link}
    column_formatters_detail = {Payment.user_id: _user_link}
    # With a "Refund" button (admin/refunds.py).
    details_template = "comfygram/payment_details.html"

    def search_placeholder(self) -> str:
        return "payment id, charge id or the user's Telegram id"

    def search_query(self, stmt: Select, term: str) -> Select:
        term = term.strip()
        return stmt.where(
            or_(
                Payment.id.ilike(f"{term}%"),
                Payment.telegram_payment_charge_id == term,
                Payment.user_id.in_(_users_matching(term)),
            )
        )


class PresetAdmin(_View, model=Preset):
    name = "Preset"
    name_plural = "Presets"
    icon = "fa-solid fa-wand-magic-sparkles"
    can_edit = True
    column_list = [
        Preset.slug,
        Preset.title_en,
        Preset.price,
        Preset.enabled,
        Preset.operator_price,
        Preset.operator_enabled,
        Preset.takes_prompt,
        Preset.updated_at,
    ]
    column_details_exclude_list = [Preset.workflow]
    column_labels = {
        Preset.operator_price: "operator price",
        Preset.operator_enabled: "operator enabled",
    }
    column_default_sort = [(Preset.price, False)]
    details_template = "comfygram/preset_details.html"
    form_columns = [Preset.price, Preset.enabled]
    form_args = {
        "price": {
            "validators": [InputRequired(), NumberRange(min=0, max=MAX_ADJUSTMENT)],
            "description": "Credits per photo, 0 or more. Kept over the preset file's price.",
        },
        "enabled": {"description": "Kept over the preset file's switch across restarts."},
    }

    async def update_model(self, request: Request, pk: str, data: dict) -> Any:
        price, enabled = data.get("price"), bool(data.get("enabled"))
        async with self.panel.sessions() as session:
            try:
                preset = await presets.set_operator_choice(
                    session, pk, price=price, enabled=enabled
                )
            except ApiError as exc:
                raise ValueError(exc.message) from None
            await session.commit()
        log.info(
            "preset %s: price %d, %s by %s",
            pk,
            price,
            "enabled" if enabled else "disabled",
            self.panel.actor,
        )
        return preset

    @expose("/follow-file/{pk}", methods=["POST"])
    async def follow_file(self, request: Request) -> Response:
        """Forget the operator's price and switch: the preset file decides again."""
        await self._checked_form(request)
        pk = self._pk(request)
        async with self.panel.sessions() as session:
            try:
                preset = await presets.follow_file(session, pk)
            except ApiError as exc:
                raise HTTPException(404, exc.message) from None
            await session.commit()
        log.info("preset %s follows its file again (%s)", pk, self.panel.actor)
        _flash_ok(
            request,
            f"{pk} follows its preset file again: price {preset.price}, "
            f"{'enabled' if preset.enabled else 'disabled'}.",
        )
        return self._details(request, pk)


class LedgerAdmin(_View, model=LedgerEntry):
    name = "Ledger entry"
    name_plural = "Ledger"
    icon = "fa-solid fa-book"
    column_list = [
        LedgerEntry.id,
        LedgerEntry.user_id,
        LedgerEntry.amount,
        LedgerEntry.reason,
        LedgerEntry.actor,
        LedgerEntry.note,
        LedgerEntry.job_id,
        LedgerEntry.payment_id,
        LedgerEntry.created_at,
    ]
    column_searchable_list = [LedgerEntry.actor]
    column_sortable_list = [LedgerEntry.id, LedgerEntry.amount, LedgerEntry.created_at]
    column_default_sort = [(LedgerEntry.id, True)]
    column_filters = [
        StaticValuesFilter(LedgerEntry.reason, values=[(r.value, r.value) for r in Reason])
    ]
    column_formatters = {LedgerEntry.user_id: _user_link}
    column_formatters_detail = {LedgerEntry.user_id: _user_link}

    def search_placeholder(self) -> str:
        return "user's Telegram id or username, job id, actor"

    def search_query(self, stmt: Select, term: str) -> Select:
        term = term.strip()
        return stmt.where(
            or_(
                LedgerEntry.user_id.in_(_users_matching(term)),
                LedgerEntry.job_id.ilike(f"{term}%"),
                cast(LedgerEntry.actor, String).ilike(f"%{term}%"),
            )
        )


VIEWS = (UserAdmin, JobAdmin, PaymentAdmin, PresetAdmin, LedgerAdmin)
