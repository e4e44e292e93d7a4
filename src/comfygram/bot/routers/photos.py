"""Photo and preset, in either order, then whatever else the preset asks for.

Photo first: the photo (or an album) gets a keyboard of presets with prices. Preset first (the
menu, /presets): the choice waits in the FSM for the photos. Either way the preset's contract
then decides the questions (``bot.drafts``): each photo slot in turn (an album fills them in
order), each option as buttons, the prompt, and for every preset beyond "one photo, no options"
a confirmation with the final price. Every question has Back and Cancel. A one-photo preset
without options keeps the short conversation: photo, preset button, queued (with its required
prompt asked for in between). The result's "another preset" button shows the keyboard again
for the same photos, fetched back from the backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiogram import F, Router
from aiogram.filters import Command, StateFilter
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State
from aiogram.methods import EditMessageReplyMarkup
from aiogram.types import CallbackQuery, InlineKeyboardMarkup, Message, User

from comfygram.api import BackendClient, BackendError, Preset
from comfygram.bot import drafts, keyboards
from comfygram.bot.albums import Albums
from comfygram.bot.callbacks import Again, OptionPick, OrderStep, PresetChoice, PresetPage
from comfygram.bot.catalog import PresetCatalog
from comfygram.bot.confirmations import Confirmations
from comfygram.bot.drafts import Draft, Step, StepKind
from comfygram.bot.keyboards import local, menu_labels, preset_title
from comfygram.bot.orders import Orders, idempotency_key, image_limit
from comfygram.bot.replies import send, short_of_credits
from comfygram.bot.sources import PhotoSource, SourceStore
from comfygram.bot.states import Order
from comfygram.bot.texts import text
from comfygram.i18n import t
from comfygram.settings import Settings
from comfygram.telegram import TelegramSender

# What the backend accepts; other image types (GIF, HEIC...) get the "unsupported" answer.
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/webp"})
PROMPT_MAX = 1000

STATE_OF: dict[StepKind, State] = {
    StepKind.PHOTO: Order.waiting_photo,
    StepKind.OPTION: Order.choosing_option,
    StepKind.PROMPT: Order.waiting_prompt,
    StepKind.CONFIRM: Order.confirming,
}


@dataclass
class Talk:
    """One chat's side of an order, and what answering it takes."""

    user: User
    chat_id: int
    lang: str
    state: FSMContext
    tg: TelegramSender
    settings: Settings
    backend: BackendClient
    catalog: PresetCatalog
    sources: SourceStore
    confirmations: Confirmations
    orders: Orders

    @classmethod
    def of(cls, user: User, chat_id: int, state: FSMContext, deps: dict[str, Any]) -> Talk:
        return cls(
            user=user,
            chat_id=chat_id,
            lang=deps["lang"],
            state=state,
            tg=deps["tg"],
            settings=deps["settings"],
            backend=deps["backend"],
            catalog=deps["catalog"],
            sources=deps["sources"],
            confirmations=deps["confirmations"],
            orders=deps["orders"],
        )

    async def say(self, message: str, markup: InlineKeyboardMarkup | None = None) -> Any:
        return await send(self.tg, self.chat_id, message, markup)


def _source(message: Message) -> PhotoSource:
    if message.photo:
        photo = message.photo[-1]  # the largest size
        return PhotoSource(
            file_id=photo.file_id,
            file_unique_id=photo.file_unique_id,
            file_size=photo.file_size,
            filename="photo.jpg",
        )
    document = message.document
    assert document is not None
    return PhotoSource(
        file_id=document.file_id,
        file_unique_id=document.file_unique_id,
        file_size=document.file_size,
        filename=document.file_name or "image",
    )


async def load_draft(state: FSMContext) -> Draft | None:
    """The order in progress, if any (also from data stored before drafts existed)."""
    data = await state.get_data()
    if "draft" in data:
        return Draft.model_validate(data["draft"])
    if "preset" in data:
        source = data.get("source")
        photos = [PhotoSource.model_validate(source)] if source else []
        prompt = data.get("prompt")
        return Draft(
            preset=data["preset"],
            photos=photos,
            given=len(photos),
            prompt=prompt,
            prompt_done=prompt is not None,
        )
    return None


async def _save(state: FSMContext, step: Step, draft: Draft) -> None:
    await state.set_state(STATE_OF[step.kind])
    await state.set_data({"draft": draft.model_dump(mode="json")})


# -- the questions ------------------------------------------------------------------------------


def _photo_question(lang: str, preset: Preset, index: int) -> str:
    slots = preset.contract.photos
    title = preset_title(preset, lang)
    values: dict[str, Any] = {"title": title, "number": index + 1, "total": len(slots)}
    if slots[index].title:
        key = "bot.slot.titled" if len(slots) == 1 else "bot.slot.titled_numbered"
        return text(lang, key, slot=local(slots[index].title, lang), **values)
    key = "bot.slot.ask" if len(slots) == 1 else "bot.slot.ask_numbered"
    return text(lang, key, **values)


def _summary(lang: str, preset: Preset, draft: Draft, price: int) -> str:
    contract = preset.contract
    lines = [
        text(lang, "bot.order.summary_title", title=preset_title(preset, lang)),
        t(lang, "bot.order.summary_photos", count=len(draft.photos)),
    ]
    for option in contract.options:
        choice = option.choice(draft.options.get(option.id, option.default))
        assert choice is not None
        lines.append(
            text(
                lang,
                "bot.order.summary_option",
                option=local(option.title, lang, option.id),
                choice=local(choice.title, lang, choice.id),
            )
        )
    if contract.prompt is not None:
        if draft.prompt:
            lines.append(text(lang, "bot.order.summary_prompt", prompt=draft.prompt))
        else:
            lines.append(t(lang, "bot.order.summary_no_prompt"))
    lines.append(t(lang, "bot.order.summary_price", price=price))
    return "\n".join(lines) + "\n\n" + t(lang, "bot.order.summary_go")


def _question(
    lang: str, preset: Preset, draft: Draft, step: Step
) -> tuple[str, InlineKeyboardMarkup]:
    """The message asking ``step``, with its buttons."""
    contract = preset.contract
    title = preset_title(preset, lang)
    if step.kind is StepKind.PHOTO:
        return _photo_question(lang, preset, step.index), keyboards.question(lang)
    if step.kind is StepKind.OPTION:
        option = contract.options[step.index]
        ask = text(lang, "bot.option.ask", title=title, option=local(option.title, lang, option.id))
        return ask, keyboards.option_choices(preset, draft, step.index, lang)
    if step.kind is StepKind.PROMPT:
        assert contract.prompt is not None
        required = contract.prompt.required
        key = "bot.prompt.ask" if required else "bot.prompt.ask_optional"
        return text(lang, key, title=title), keyboards.question(lang, skip=not required)
    price = drafts.price(contract, preset.price, draft.options)
    return _summary(lang, preset, draft, price), keyboards.confirmation(lang, price)


async def _place(talk: Talk, preset: Preset, draft: Draft, key: str) -> None:
    """Order what the draft holds, under ``key``."""
    await talk.orders.place(
        talk.user,
        talk.chat_id,
        talk.lang,
        draft.photos,
        preset,
        key,
        draft.prompt,
        options=draft.options,
    )


async def _advance(talk: Talk, preset: Preset, draft: Draft, key_message: int) -> None:
    """Ask the next question, or place the order when nothing is left to ask (the short
    conversation; its idempotency key comes from ``key_message``, as it always has)."""
    step = drafts.next_step(preset.contract, draft)
    if step is None:
        await talk.state.clear()
        key = idempotency_key(talk.chat_id, key_message, preset.slug)
        await _place(talk, preset, draft, key)
        return
    # Saved before asking, so an answer that comes at once finds the question.
    draft = draft.model_copy(update={"asked": None})
    await _save(talk.state, step, draft)
    message_text, markup = _question(talk.lang, preset, draft, step)
    message = await talk.say(message_text, markup)
    if message is None:
        return
    draft = draft.model_copy(update={"asked": message.message_id})
    if step.kind is StepKind.CONFIRM:
        await talk.confirmations.attach(talk.chat_id, message.message_id, draft)
    await _save(talk.state, step, draft)


async def _can_afford(talk: Talk, price: int) -> bool:
    """Before asking for more: enough credits for ``price``, or say how many are missing.
    The job's creation checks again (and charges); this only spares pointless questions."""
    try:
        balance = (await talk.backend.user(talk.user.id)).balance
    except BackendError:
        return True  # not registered yet: placing the order registers them and checks
    if balance >= price:
        return True
    missing = price - balance
    await short_of_credits(talk.tg, talk.chat_id, talk.lang, talk.settings, missing, balance)
    return False


async def _album_note(talk: Talk, preset: Preset, count: int, used: int) -> None:
    """An album with more photos than the preset takes: say which ones are used."""
    if used == 1:
        await talk.say(t(talk.lang, "bot.photo.album", count=count))
    else:
        title = preset_title(preset, talk.lang)
        note = text(talk.lang, "bot.photo.album_first", count=count, used=used, title=title)
        await talk.say(note)


async def _offer_presets(talk: Talk, photos: list[PhotoSource]) -> None:
    presets = await talk.catalog.available()
    if not presets:
        await talk.say(t(talk.lang, "bot.presets.none"))
        return
    if not photos:
        key = "bot.presets.choose_first"
    else:
        key = "bot.presets.choose_for_album" if len(photos) > 1 else "bot.presets.choose_for_photo"
    message = await talk.say(t(talk.lang, key), keyboards.presets(presets, talk.lang))
    if message is not None and photos:
        await talk.sources.attach(talk.chat_id, message.message_id, photos)


async def _stale(query: CallbackQuery, lang: str) -> None:
    await query.answer(t(lang, "bot.order.stale"))


# -- messages -----------------------------------------------------------------------------------


async def photo(message: Message, state: FSMContext, albums: Albums, **deps: Any) -> None:
    assert message.from_user is not None
    talk = Talk.of(message.from_user, message.chat.id, state, deps)
    photos = [_source(message)]
    message_id = message.message_id
    if message.media_group_id is not None:
        # An album: answered once, by whichever of its messages came first, for all its photos.
        album = await albums.collect(talk.chat_id, message.media_group_id, message_id, photos[0])
        if album is None:
            return
        photos, message_id = album.photos, album.message_id
    limit = image_limit(talk.settings)
    found = await _photo_step(talk) if await state.get_state() == Order.waiting_photo else None
    if found is not None:
        preset, draft, _step = found
        filled, extra = drafts.add_photos(preset.contract, draft, photos)
        used = photos[: len(photos) - extra]
        if any(p.file_size is not None and p.file_size > limit for p in used):
            await talk.say(t(talk.lang, "bot.photo.too_large"))
            return  # the question stays: another photo will do
        if extra:
            await _album_note(talk, preset, len(photos), len(used))
        await _advance(talk, preset, filled, message_id)
        return
    # No photo awaited (or its preset is gone): a new order, photo first.
    await state.clear()
    if photos[0].file_size is not None and photos[0].file_size > limit:
        await talk.say(t(talk.lang, "bot.photo.too_large"))
        return
    await _offer_presets(talk, photos)


async def presets_first(message: Message, state: FSMContext, **deps: Any) -> None:
    assert message.from_user is not None
    await state.clear()
    await _offer_presets(Talk.of(message.from_user, message.chat.id, state, deps), [])


async def prompt_received(message: Message, state: FSMContext, **deps: Any) -> None:
    assert message.from_user is not None and message.text is not None
    talk = Talk.of(message.from_user, message.chat.id, state, deps)
    prompt = message.text.replace("\x00", "").strip()
    if not prompt or len(prompt) > PROMPT_MAX:
        await talk.say(text(talk.lang, "bot.prompt.bad_length", limit=PROMPT_MAX))
        return
    draft = await load_draft(state)
    preset = await talk.catalog.find(draft.preset) if draft else None
    if draft is None or preset is None:
        await state.clear()
        await talk.say(t(talk.lang, "bot.order.preset_gone"))
        return
    draft = draft.model_copy(update={"prompt": prompt, "prompt_done": True})
    await _advance(talk, preset, draft, message.message_id)


async def _photo_step(talk: Talk) -> tuple[Preset, Draft, Step] | None:
    draft = await load_draft(talk.state)
    preset = await talk.catalog.find(draft.preset) if draft else None
    if draft is None or preset is None:
        return None
    step = drafts.next_step(preset.contract, draft)
    if step is None or step.kind is not StepKind.PHOTO:
        return None
    return preset, draft, step


async def waiting_for_photo(message: Message, state: FSMContext, **deps: Any) -> None:
    """Text where a photo is expected: say which photo, and keep waiting."""
    assert message.from_user is not None
    talk = Talk.of(message.from_user, message.chat.id, state, deps)
    found = await _photo_step(talk)
    if found is None:  # the preset is no longer offered
        await state.clear()
        await talk.say(t(talk.lang, "bot.order.preset_gone"))
        return
    preset, _draft, step = found
    if drafts.short_flow(preset.contract):
        title = preset_title(preset, talk.lang)
        await talk.say(text(talk.lang, "bot.photo.still_waiting", title=title))
        return
    question = _photo_question(talk.lang, preset, step.index)
    await talk.say(t(talk.lang, "bot.slot.waiting") + "\n\n" + question)


async def not_a_photo(message: Message, state: FSMContext, **deps: Any) -> None:
    """A video, sticker, voice, animation or other file where a photo is expected: say what
    is expected (which photo); the order stays where it is."""
    assert message.from_user is not None
    talk = Talk.of(message.from_user, message.chat.id, state, deps)
    found = await _photo_step(talk)
    reply = t(talk.lang, "bot.slot.not_photo")
    if found is not None:
        preset, _draft, step = found
        reply += "\n\n" + _photo_question(talk.lang, preset, step.index)
    await talk.say(reply)


async def use_buttons(message: Message, tg: TelegramSender, lang: str) -> None:
    """Text while an option or the confirmation is asked: the answer is a button."""
    await send(tg, message.chat.id, t(lang, "bot.order.use_buttons"))


# -- buttons ------------------------------------------------------------------------------------


async def turn_page(
    query: CallbackQuery,
    callback_data: PresetPage,
    tg: TelegramSender,
    lang: str,
    catalog: PresetCatalog,
) -> None:
    await query.answer()
    if query.message is None:
        return
    chat_id = query.message.chat.id
    markup = keyboards.presets(await catalog.available(), lang, callback_data.page)
    edit = EditMessageReplyMarkup(
        chat_id=chat_id, message_id=query.message.message_id, reply_markup=markup
    )
    await tg.call(edit, chat_id=chat_id)


async def preset_chosen(
    query: CallbackQuery, callback_data: PresetChoice, state: FSMContext, **deps: Any
) -> None:
    lang: str = deps["lang"]
    preset = await deps["catalog"].find(callback_data.slug)
    if preset is None or query.message is None:
        await query.answer(t(lang, "bot.order.preset_gone"), show_alert=True)
        return
    await query.answer(preset_title(preset, lang))
    talk = Talk.of(query.from_user, query.message.chat.id, state, deps)
    keyboard_id = query.message.message_id
    photos = await talk.sources.find(talk.chat_id, keyboard_id)
    wanted = len(preset.contract.photos)
    draft = Draft(preset=preset.slug, photos=photos[:wanted], given=min(len(photos), wanted))
    # More to ask (not today's short way, photo there and nothing else needed): first make
    # sure the balance covers the least the preset can cost.
    more = drafts.next_step(preset.contract, draft) is not None
    if more and not await _can_afford(talk, drafts.cheapest(preset.contract, preset.price)):
        await state.clear()
        return
    if len(photos) > wanted:
        await _album_note(talk, preset, len(photos), wanted)
    await _advance(talk, preset, draft, keyboard_id)


async def _current(
    query: CallbackQuery, talk: Talk, state: State | str
) -> tuple[Preset | None, Draft] | None:
    """The order whose current question is the pressed message, else None (a stale button)."""
    if query.message is None or await talk.state.get_state() != state:
        return None
    draft = await load_draft(talk.state)
    if draft is None or draft.asked != query.message.message_id:
        return None
    return await talk.catalog.find(draft.preset), draft


async def option_picked(
    query: CallbackQuery, callback_data: OptionPick, state: FSMContext, **deps: Any
) -> None:
    if query.message is None:
        await _stale(query, deps["lang"])
        return
    talk = Talk.of(query.from_user, query.message.chat.id, state, deps)
    current = await _current(query, talk, Order.choosing_option)
    if current is None:
        await _stale(query, talk.lang)
        return
    preset, draft = current
    if preset is None:
        await state.clear()
        await query.answer(t(talk.lang, "bot.order.preset_gone"), show_alert=True)
        return
    contract = preset.contract
    step = drafts.next_step(contract, draft)
    chosen = drafts.choose(contract, draft, callback_data.option, callback_data.choice)
    if (
        step is None
        or step.kind is not StepKind.OPTION
        or contract.options[step.index].id != callback_data.option
        or chosen is None
    ):
        await _stale(query, talk.lang)
        return
    await query.answer()
    following = drafts.next_step(contract, chosen)
    # Every option chosen: the price is known; check it before asking for more. Short of
    # credits, the question stays open, so a cheaper choice can still be picked.
    last = following is None or following.kind is not StepKind.OPTION
    if last and not await _can_afford(talk, drafts.price(contract, preset.price, chosen.options)):
        return
    await _advance(talk, preset, chosen, query.message.message_id)


async def order_step(
    query: CallbackQuery, callback_data: OrderStep, state: FSMContext, **deps: Any
) -> None:
    """Back, Cancel, Skip (an optional prompt) and Start (the confirmation)."""
    if query.message is None:
        await _stale(query, deps["lang"])
        return
    talk = Talk.of(query.from_user, query.message.chat.id, state, deps)
    message_id = query.message.message_id
    if callback_data.action == "go":
        await _confirmed(query, talk, message_id)
        return
    kind = await state.get_state()
    current = await _current(query, talk, kind) if kind is not None else None
    if current is None:
        await _stale(query, talk.lang)
        return
    preset, draft = current
    if callback_data.action == "cancel":
        await query.answer()
        await talk.confirmations.drop(talk.chat_id, message_id)
        await state.clear()
        await talk.say(t(talk.lang, "bot.cancel.order_dropped"))
        return
    if preset is None:
        await state.clear()
        await query.answer(t(talk.lang, "bot.order.preset_gone"), show_alert=True)
        return
    contract = preset.contract
    if callback_data.action == "skip":
        step = drafts.next_step(contract, draft)
        optional = contract.prompt is not None and not contract.prompt.required
        if step is None or step.kind is not StepKind.PROMPT or not optional:
            await _stale(query, talk.lang)
            return
        await query.answer()
        skipped = draft.model_copy(update={"prompt": None, "prompt_done": True})
        await _advance(talk, preset, skipped, message_id)
        return
    if callback_data.action == "back":
        await query.answer()
        await talk.confirmations.drop(talk.chat_id, message_id)
        previous = drafts.back(contract, draft)
        if previous is None:
            await state.clear()
            await _offer_presets(talk, draft.photos[: draft.given])
            return
        await _advance(talk, preset, previous, message_id)
        return
    await _stale(query, talk.lang)


async def _confirmed(query: CallbackQuery, talk: Talk, message_id: int) -> None:
    """Start: place the order the confirmation shows (kept with the message, so a double tap
    finds it again and makes the same key: one job)."""
    draft = await talk.confirmations.find(talk.chat_id, message_id)
    if draft is None:
        await _stale(query, talk.lang)
        return
    preset = await talk.catalog.find(draft.preset)
    if preset is None:
        await query.answer(t(talk.lang, "bot.order.preset_gone"), show_alert=True)
        return
    await query.answer(preset_title(preset, talk.lang))
    current = await load_draft(talk.state)
    if current is not None and current.asked == message_id:
        await talk.state.clear()
    key = f"{idempotency_key(talk.chat_id, message_id, preset.slug)}:{drafts.digest(draft)}"
    await _place(talk, preset, draft, key)


async def again(
    query: CallbackQuery,
    callback_data: Again,
    state: FSMContext,
    **deps: Any,
) -> None:
    """Another preset on the photos of a finished job: the backend still has them."""
    lang: str = deps["lang"]
    backend: BackendClient = deps["backend"]
    try:
        job = await backend.job(callback_data.job_id)
    except BackendError:
        job = None
    if job is None or job.telegram_id != query.from_user.id or query.message is None:
        await query.answer(t(lang, "bot.photo.gone"), show_alert=True)
        return
    await query.answer()
    await state.clear()
    count = max(1, len(job.inputs))
    photos = [PhotoSource(job_id=job.id, index=i, filename="photo") for i in range(count)]
    await _offer_presets(Talk.of(query.from_user, query.message.chat.id, state, deps), photos)


def create_router() -> Router:
    router = Router(name="photos")
    not_command = ~F.text.startswith("/")
    router.message.register(photo, F.photo)
    router.message.register(photo, F.document.mime_type.in_(IMAGE_TYPES))
    router.message.register(presets_first, Command("presets"))
    router.message.register(presets_first, F.text.in_(menu_labels("presets")))
    router.message.register(prompt_received, Order.waiting_prompt, F.text, not_command)
    router.message.register(waiting_for_photo, Order.waiting_photo, F.text, not_command)
    router.message.register(not_a_photo, Order.waiting_photo, ~F.text)
    router.message.register(
        use_buttons, StateFilter(Order.choosing_option, Order.confirming), F.text, not_command
    )
    router.callback_query.register(preset_chosen, PresetChoice.filter())
    router.callback_query.register(turn_page, PresetPage.filter())
    router.callback_query.register(again, Again.filter())
    router.callback_query.register(option_picked, OptionPick.filter())
    router.callback_query.register(order_step, OrderStep.filter())
    return router
