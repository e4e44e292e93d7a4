"""Photo and preset, in either order, and a text prompt for the presets that take one.

Photo first: the photo gets a keyboard of presets with prices; a choice creates the job (or
asks for the prompt first). Preset first (the menu, /presets): the choice waits in the FSM
for the photo. The result's "another preset" button shows the keyboard again for the same
photo, fetched back from the backend.
"""

from __future__ import annotations

from aiogram import F, Router
from aiogram.filters import Command
from aiogram.fsm.context import FSMContext
from aiogram.methods import EditMessageReplyMarkup
from aiogram.types import CallbackQuery, Message

from comfygram.api import BackendClient, BackendError, Preset
from comfygram.bot import keyboards
from comfygram.bot.albums import Albums
from comfygram.bot.callbacks import Again, PresetChoice, PresetPage
from comfygram.bot.catalog import PresetCatalog
from comfygram.bot.keyboards import menu_labels, preset_title
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


async def _offer_presets(
    chat_id: int,
    lang: str,
    tg: TelegramSender,
    catalog: PresetCatalog,
    sources: SourceStore,
    source: PhotoSource | None,
) -> None:
    presets = await catalog.available()
    if not presets:
        await send(tg, chat_id, t(lang, "bot.presets.none"))
        return
    key = "bot.presets.choose_for_photo" if source else "bot.presets.choose_first"
    message = await send(tg, chat_id, t(lang, key), keyboards.presets(presets, lang))
    if message is not None and source is not None:
        await sources.attach(chat_id, message.message_id, source)


async def photo(
    message: Message,
    state: FSMContext,
    tg: TelegramSender,
    lang: str,
    settings: Settings,
    catalog: PresetCatalog,
    sources: SourceStore,
    orders: Orders,
    albums: Albums,
) -> None:
    assert message.from_user is not None
    source = _source(message)
    chat_id = message.chat.id
    message_id = message.message_id
    if message.media_group_id is not None:
        # An album: answered once, by whichever of its messages came first, for its first photo.
        album = await albums.collect(chat_id, message.media_group_id, message_id, source)
        if album is None:
            return
        source, message_id = album.first, album.message_id
        if album.count > 1:
            await send(tg, chat_id, t(lang, "bot.photo.album", count=album.count))
    if source.file_size is not None and source.file_size > image_limit(settings):
        await send(tg, chat_id, t(lang, "bot.photo.too_large"))
        return
    if await state.get_state() == Order.waiting_photo:
        data = await state.get_data()
        await state.clear()
        preset = await catalog.find(data["preset"])
        if preset is not None:
            key = idempotency_key(chat_id, message_id, preset.slug)
            await orders.place(
                message.from_user, chat_id, lang, source, preset, key, data.get("prompt")
            )
            return
    await state.clear()
    await _offer_presets(chat_id, lang, tg, catalog, sources, source)


async def presets_first(
    message: Message,
    state: FSMContext,
    tg: TelegramSender,
    lang: str,
    catalog: PresetCatalog,
    sources: SourceStore,
) -> None:
    await state.clear()
    await _offer_presets(message.chat.id, lang, tg, catalog, sources, None)


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


async def _ask_prompt(
    chat_id: int,
    lang: str,
    tg: TelegramSender,
    state: FSMContext,
    preset: Preset,
    source: PhotoSource | None,
) -> None:
    await state.set_state(Order.waiting_prompt)
    await state.set_data({"preset": preset.slug, "source": source.model_dump() if source else None})
    await send(tg, chat_id, text(lang, "bot.prompt.ask", title=preset_title(preset, lang)))


async def _can_afford(
    user_id: int,
    chat_id: int,
    lang: str,
    preset: Preset,
    backend: BackendClient,
    tg: TelegramSender,
    settings: Settings,
) -> bool:
    """Before asking for a prompt or a photo: enough credits, or say how many are missing.
    The job's creation checks again (and charges); this only spares a pointless question."""
    try:
        balance = (await backend.user(user_id)).balance
    except BackendError:
        return True  # not registered yet: placing the order registers them and checks
    if balance >= preset.price:
        return True
    await short_of_credits(tg, chat_id, lang, settings, preset.price - balance, balance)
    return False


async def preset_chosen(
    query: CallbackQuery,
    callback_data: PresetChoice,
    state: FSMContext,
    backend: BackendClient,
    tg: TelegramSender,
    lang: str,
    settings: Settings,
    catalog: PresetCatalog,
    sources: SourceStore,
    orders: Orders,
) -> None:
    preset = await catalog.find(callback_data.slug)
    if preset is None or query.message is None:
        await query.answer(t(lang, "bot.order.preset_gone"), show_alert=True)
        return
    await query.answer(preset_title(preset, lang))
    chat_id = query.message.chat.id
    keyboard_id = query.message.message_id
    source = await sources.find(chat_id, keyboard_id)
    if (preset.takes_prompt or source is None) and not await _can_afford(
        query.from_user.id, chat_id, lang, preset, backend, tg, settings
    ):
        await state.clear()
        return
    if preset.takes_prompt:
        await _ask_prompt(chat_id, lang, tg, state, preset, source)
    elif source is not None:
        await state.clear()
        key = idempotency_key(chat_id, keyboard_id, preset.slug)
        await orders.place(query.from_user, chat_id, lang, source, preset, key)
    else:
        await state.set_state(Order.waiting_photo)
        await state.set_data({"preset": preset.slug, "prompt": None})
        await send(tg, chat_id, text(lang, "bot.photo.send_for", title=preset_title(preset, lang)))


async def prompt_received(
    message: Message,
    state: FSMContext,
    tg: TelegramSender,
    lang: str,
    catalog: PresetCatalog,
    orders: Orders,
) -> None:
    assert message.from_user is not None and message.text is not None
    chat_id = message.chat.id
    prompt = message.text.replace("\x00", "").strip()
    if not prompt or len(prompt) > PROMPT_MAX:
        await send(tg, chat_id, text(lang, "bot.prompt.bad_length", limit=PROMPT_MAX))
        return
    data = await state.get_data()
    preset = await catalog.find(data.get("preset", ""))
    if preset is None:
        await state.clear()
        await send(tg, chat_id, t(lang, "bot.order.preset_gone"))
        return
    if data.get("source") is None:
        await state.set_state(Order.waiting_photo)
        await state.set_data({"preset": preset.slug, "prompt": prompt})
        await send(tg, chat_id, text(lang, "bot.photo.send_for", title=preset_title(preset, lang)))
        return
    await state.clear()
    source = PhotoSource.model_validate(data["source"])
    key = idempotency_key(chat_id, message.message_id, preset.slug)
    await orders.place(message.from_user, chat_id, lang, source, preset, key, prompt)


async def waiting_for_photo(
    message: Message, state: FSMContext, tg: TelegramSender, lang: str, catalog: PresetCatalog
) -> None:
    data = await state.get_data()
    preset = await catalog.find(data.get("preset", ""))
    title = preset_title(preset, lang) if preset else ""
    await send(tg, message.chat.id, text(lang, "bot.photo.still_waiting", title=title))


async def again(
    query: CallbackQuery,
    callback_data: Again,
    state: FSMContext,
    backend: BackendClient,
    tg: TelegramSender,
    lang: str,
    catalog: PresetCatalog,
    sources: SourceStore,
) -> None:
    """Another preset on the photo of a finished job: the backend still has that photo."""
    try:
        job = await backend.job(callback_data.job_id)
    except BackendError:
        job = None
    if job is None or job.telegram_id != query.from_user.id or query.message is None:
        await query.answer(t(lang, "bot.photo.gone"), show_alert=True)
        return
    await query.answer()
    await state.clear()
    source = PhotoSource(job_id=job.id, filename="photo")
    await _offer_presets(query.message.chat.id, lang, tg, catalog, sources, source)


def create_router() -> Router:
    router = Router(name="photos")
    router.message.register(photo, F.photo)
    router.message.register(photo, F.document.mime_type.in_(IMAGE_TYPES))
    router.message.register(presets_first, Command("presets"))
    router.message.register(presets_first, F.text.in_(menu_labels("presets")))
    router.message.register(prompt_received, Order.waiting_prompt, F.text, ~F.text.startswith("/"))
    router.message.register(waiting_for_photo, Order.waiting_photo, F.text, ~F.text.startswith("/"))
    router.callback_query.register(preset_chosen, PresetChoice.filter())
    router.callback_query.register(turn_page, PresetPage.filter())
    router.callback_query.register(again, Again.filter())
    return router
