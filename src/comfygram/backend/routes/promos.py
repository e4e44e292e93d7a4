"""Promo codes (the operator creates, lists and disables them; users redeem) and referrals
(a user's invite code, made on first ask). The rules: backend/promos.py, backend/referrals.py."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Path, Query

from comfygram.backend import promos, referrals
from comfygram.backend.deps import SessionDep
from comfygram.backend.schemas import (
    InviteOut,
    InviteRequest,
    PromoCreate,
    PromoDisable,
    PromoOut,
    PromoRedeem,
    PromoRedeemed,
)

log = logging.getLogger(__name__)

router = APIRouter(tags=["promos"])

CodePath = Path(min_length=1, max_length=64)


@router.post("/api/promos", status_code=201, response_model=PromoOut)
async def create_promo(body: PromoCreate, session: SessionDep) -> PromoOut:
    """A new promo code: 3-32 of A-Z 0-9 _ - (stored in upper case), credits, uses in all,
    an optional expiry."""
    promo = await promos.create(
        session,
        body.code,
        credits=body.credits,
        max_uses=body.max_uses,
        expires_at=body.expires_at,
        actor=body.actor,
    )
    await session.commit()
    log.info("promo code %s created by %s", promo.code, body.actor)
    return PromoOut.of(promo)


@router.get("/api/promos", response_model=list[PromoOut])
async def list_promos(
    session: SessionDep, limit: int = Query(default=100, ge=1, le=1000)
) -> list[PromoOut]:
    """The newest codes first, with their uses."""
    return [PromoOut.of(p) for p in await promos.listing(session, limit)]


@router.post("/api/promos/redeem", response_model=PromoRedeemed)
async def redeem_promo(body: PromoRedeem, session: SessionDep) -> PromoRedeemed:
    """A user redeems a code: its credits once per user, within the code's uses."""
    promo, user = await promos.redeem(session, body.telegram_id, body.code)
    await session.commit()
    return PromoRedeemed(code=promo.code, credits=promo.credits, balance=user.balance)


@router.post("/api/promos/{code}/disable", response_model=PromoOut)
async def disable_promo(body: PromoDisable, session: SessionDep, code: str = CodePath) -> PromoOut:
    """Switch a code off for good (redemptions already made stay)."""
    promo, changed = await promos.disable(session, code)
    await session.commit()
    if changed:
        log.info("promo code %s disabled by %s", promo.code, body.actor)
    return PromoOut.of(promo)


@router.post("/api/referrals/invite", response_model=InviteOut)
async def invite(body: InviteRequest, session: SessionDep) -> InviteOut:
    """The user's invite code (made on first ask) and how their invitations went."""
    user = await referrals.invite_code(session, body.telegram_id)
    await session.commit()
    counts = await referrals.invites(session, user)
    assert user.invite_code is not None
    return InviteOut(
        telegram_id=user.telegram_id,
        invite_code=user.invite_code,
        invited=counts.invited,
        rewarded=counts.rewarded,
        credits=counts.credits,
    )
