"""The admin panel's Promo codes view: create a code (through backend/promos.py, so the API's
rules hold), list them with their uses, and disable one."""

# sqladmin is configured with class attributes (lists and dicts), read but never mutated.
# ruff: noqa: RUF012

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from markupsafe import Markup
from sqladmin import expose
from sqladmin.filters import BooleanFilter
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from wtforms.validators import InputRequired, NumberRange

from comfygram.backend import promos
from comfygram.backend.admin.views import _flash, _flash_ok, _View
from comfygram.backend.errors import ApiError
from comfygram.backend.models import PromoCode

log = logging.getLogger(__name__)


def _uses(model: Any, _attribute: Any) -> Markup:
    return Markup("{0} / {1}").format(model.uses, model.max_uses)


def _expiry(value: datetime | None) -> datetime | None:
    """The form's expiry is typed without a zone: the panel speaks UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class PromoCodeAdmin(_View, model=PromoCode):
    name = "Promo code"
    name_plural = "Promo codes"
    icon = "fa-solid fa-ticket"
    can_create = True
    form_include_pk = True  # the code is the key, and the operator chooses it
    column_list = [
        PromoCode.code,
        PromoCode.credits,
        "usage",
        PromoCode.expires_at,
        PromoCode.disabled,
        PromoCode.created_by,
        PromoCode.created_at,
    ]
    column_export_list = [
        PromoCode.code,
        PromoCode.credits,
        PromoCode.uses,
        PromoCode.max_uses,
        PromoCode.expires_at,
        PromoCode.disabled,
        PromoCode.created_by,
        PromoCode.created_at,
    ]
    column_labels = {"usage": "uses", PromoCode.max_uses: "max uses"}
    column_formatters = {"usage": _uses}
    column_searchable_list = [PromoCode.code]
    column_sortable_list = [PromoCode.code, PromoCode.created_at, PromoCode.uses]
    column_default_sort = [(PromoCode.created_at, True)]
    column_filters = [BooleanFilter(PromoCode.disabled)]
    details_template = "comfygram/promo_details.html"
    form_columns = [PromoCode.code, PromoCode.credits, PromoCode.max_uses, PromoCode.expires_at]
    form_args = {
        "code": {
            "validators": [InputRequired()],
            "description": "3 to 32 of A-Z, 0-9, _ and -; case does not matter (kept upper).",
        },
        "credits": {
            "validators": [InputRequired(), NumberRange(min=1, max=promos.MAX_CREDITS)],
            "description": "Credits each redemption gives.",
        },
        "max_uses": {
            "validators": [InputRequired(), NumberRange(min=1, max=promos.MAX_USES)],
            "description": "Redemptions in all; each user redeems a code once.",
        },
        "expires_at": {"description": "Optional, UTC. Empty: the code does not expire."},
    }

    def search_placeholder(self) -> str:
        return "code"

    async def insert_model(self, request: Request, data: dict) -> Any:
        async with self.panel.sessions() as session:
            try:
                promo = await promos.create(
                    session,
                    str(data.get("code") or ""),
                    credits=data.get("credits") or 0,
                    max_uses=data.get("max_uses") or 0,
                    expires_at=_expiry(data.get("expires_at")),
                    actor=self.panel.actor,
                )
            except ApiError as exc:
                raise ValueError(exc.message) from None
            await session.commit()
        log.info(
            "promo code %s (%d credits, %d uses) created by %s",
            promo.code,
            promo.credits,
            promo.max_uses,
            self.panel.actor,
        )
        return promo

    @expose("/disable/{pk}", methods=["POST"])
    async def disable(self, request: Request) -> Response:
        """Switch a code off for good; redemptions already made stay."""
        await self._checked_form(request)
        pk = self._pk(request)
        async with self.panel.sessions() as session:
            try:
                promo, changed = await promos.disable(session, pk)
            except ApiError as exc:
                raise HTTPException(404, exc.message) from None
            await session.commit()
        if changed:
            log.info("promo code %s disabled by %s", promo.code, self.panel.actor)
            _flash_ok(request, f"Promo code {promo.code} is disabled.")
        else:
            _flash(request, f"Promo code {promo.code} was already disabled; nothing changed.")
        return self._details(request, promo.code)
