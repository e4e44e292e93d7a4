"""Monthly plans: made pending by /subscription, paid through /api/payments like packages."""

from __future__ import annotations

from fastapi import APIRouter, Query

from comfygram.backend import subscriptions
from comfygram.backend.deps import SessionDep, SettingsDep
from comfygram.backend.errors import ApiError
from comfygram.backend.schemas import SubscriptionCancel, SubscriptionCreate, SubscriptionOut

router = APIRouter(prefix="/api/subscriptions", tags=["subscriptions"])


@router.post("/create", status_code=201, response_model=SubscriptionOut)
async def create_subscription(
    body: SubscriptionCreate, session: SessionDep, settings: SettingsDep
) -> SubscriptionOut:
    """A pending subscription, whose payload the bot puts on its invoice link."""
    plan = settings.plan(body.plan)
    if plan is None:
        known = ", ".join(p.id for p in settings.subscription_plans) or "none are sold"
        raise ApiError(404, "plan_not_found", f"No plan {body.plan}; plans: {known}.")
    subscription = await subscriptions.create(session, body.telegram_id, plan)
    await session.commit()
    return SubscriptionOut.of(subscription, "pending")


@router.get("", response_model=list[SubscriptionOut])
async def list_subscriptions(
    session: SessionDep, telegram_id: int = Query(gt=0, le=2**63 - 1)
) -> list[SubscriptionOut]:
    """The user's paid-up subscriptions (active, or cancelled and running to their end)."""
    return [
        SubscriptionOut.of(s, subscriptions.state_of(s))
        for s in await subscriptions.current(session, telegram_id)
    ]


@router.post("/{subscription_id}/cancel", response_model=SubscriptionOut)
async def cancel_subscription(
    subscription_id: str, body: SubscriptionCancel, session: SessionDep
) -> SubscriptionOut:
    """Record that the bot cancelled (or resumed) it with editUserStarSubscription."""
    subscription = await subscriptions.set_cancelled(
        session, subscription_id, body.telegram_id, body.cancelled
    )
    await session.commit()
    return SubscriptionOut.of(subscription, subscriptions.state_of(subscription))
