from __future__ import annotations

from fastapi import APIRouter, Path, Response

from comfygram.backend import accounts, referrals
from comfygram.backend.deps import SessionDep, SettingsDep
from comfygram.backend.errors import ApiError
from comfygram.backend.schemas import CreditAdjustment, RegisterRequest, UserOut, UserUpdate

router = APIRouter(prefix="/api/users", tags=["users"])
TelegramIdPath = Path(gt=0, le=2**63 - 1, description="The user's Telegram id")


@router.post("/register", response_model=UserOut)
async def register(
    body: RegisterRequest, session: SessionDep, settings: SettingsDep, response: Response
) -> UserOut:
    """Create the user with the signup bonus, or return the existing one unchanged."""
    user, created = await accounts.register(
        session,
        body.telegram_id,
        username=body.username,
        first_name=body.first_name,
        language_code=body.language_code,
        referral=body.referral,
        signup_bonus=settings.signup_bonus,
    )
    if created:  # only a user new right now can be referred (a ref_<code> start link)
        await referrals.attach_on_signup(session, user, body.referral)
    await session.commit()
    response.status_code = 201 if created else 200
    return UserOut.of(user)


@router.get("/by-telegram-id/{telegram_id}", response_model=UserOut)
async def by_telegram_id(session: SessionDep, telegram_id: int = TelegramIdPath) -> UserOut:
    return UserOut.of(await accounts.get_user(session, telegram_id))


@router.post("/by-telegram-id/{telegram_id}/credits", response_model=UserOut)
async def adjust_credits(
    body: CreditAdjustment, session: SessionDep, telegram_id: int = TelegramIdPath
) -> UserOut:
    """An operator's credit adjustment, written to the ledger with who and why."""
    user, _entry = await accounts.adjust(
        session,
        telegram_id,
        body.amount,
        note=body.reason,
        actor=body.actor,
        request_key=body.idempotency_key,
    )
    await session.commit()
    return UserOut.of(user)


@router.patch("/by-telegram-id/{telegram_id}", response_model=UserOut)
async def update_user(
    body: UserUpdate, session: SessionDep, telegram_id: int = TelegramIdPath
) -> UserOut:
    """Store the language the user chose with /lang, or that they blocked (or unblocked) the bot."""
    changes = body.model_dump(exclude_unset=True)
    if not changes or None in changes.values():
        raise ApiError(
            422, "invalid_request", "Send language_code and/or blocked_bot, neither of them null."
        )
    user = await accounts.lock_user(session, telegram_id)
    for field, value in changes.items():
        setattr(user, field, value)
    await session.commit()
    return UserOut.of(user)
