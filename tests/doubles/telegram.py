"""TelegramDouble: a loopback Telegram Bot API server, and drivers that act as Telegram users.

It serves ``/bot<token>/<method>`` and ``/file/bot<token>/<path>`` the way api.telegram.org
does: GET or POST, parameters in the query string, JSON, urlencoded or multipart bodies
(JSON-typed parameters such as ``reply_markup`` arrive as JSON strings in form fields), and
``{"ok": ...}`` answers with Telegram's status codes and descriptions. Point a bot at it with
``TELEGRAM_API_URL=<double.url>`` and ``BOT_TOKEN=TEST_BOT_TOKEN``.

Implemented methods: getMe, getUpdates (offset, long-poll timeout, allowed_updates, 409 while a
webhook is set or when a newer getUpdates supersedes a waiting one), setWebhook,
deleteWebhook, getWebhookInfo, sendMessage, editMessageText, editMessageReplyMarkup,
editMessageCaption, editMessageMedia, deleteMessage, sendPhoto, sendDocument, sendVideo,
sendAnimation, sendMediaGroup, getFile, answerCallbackQuery, sendInvoice,
answerPreCheckoutQuery, refundStarPayment, setMyCommands, getMyCommands, deleteMyCommands,
sendChatAction. Anything else answers 404 like Telegram.

Upload limits: 50 MB a file for bots (413 "Request Entity Too Large"), 10 MB a photo.
An opt-in flood model (``flood_limit``) answers 429 with retry_after once a chat gets more
messages in a window than allowed; an album counts as its items, as in Telegram.

Simplifications: chats are private chats of users created with ``user()``; HTML is parsed
into entities (unsupported or unbalanced tags answer 400 like Telegram), Markdown is stored
as sent; webhook updates go out one at a time, each retried ``webhook_attempts`` times and
then dropped (recorded in ``webhook_dropped``); http:// webhook URLs are accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import io
import json
import mimetypes
import re
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from PIL import Image, UnidentifiedImageError
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

TEST_BOT_TOKEN = "123456:TEST-double-token"
BOT_USERNAME = "comfygram_test_bot"


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Parameters Telegram reads as JSON when they arrive as strings (form fields, query string).
JSON_FIELDS = _words(
    "allowed_updates caption_entities commands entities link_preview_options media prices "
    "reply_markup reply_parameters scope suggested_tip_amounts"
)
INT_FIELDS = _words(
    "chat_id user_id message_id message_thread_id offset limit timeout max_connections "
    "cache_time max_tip_amount width height duration subscription_period"
)
BOOL_FIELDS = _words(
    "drop_pending_updates ok show_alert disable_notification protect_content has_spoiler "
    "show_caption_above_media disable_content_type_detection allow_sending_without_reply "
    "need_name need_email need_phone_number need_shipping_address is_flexible supports_streaming "
    "is_canceled"
)
DEFAULT_ALLOWED_UPDATES = sorted(
    _words(
        "message edited_message channel_post edited_channel_post business_connection "
        "business_message edited_business_message deleted_business_messages inline_query "
        "chosen_inline_result callback_query shipping_query pre_checkout_query "
        "purchased_paid_media poll poll_answer my_chat_member chat_join_request chat_boost "
        "removed_chat_boost"
    )
)
CHAT_ACTIONS = _words(
    "typing upload_photo record_video upload_video record_voice upload_voice "
    "upload_document choose_sticker find_location record_video_note upload_video_note"
)
HTML_TAGS = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "tg-spoiler": "spoiler",
    "span": "spoiler",
    "a": "text_link",
    "code": "code",
    "pre": "pre",
    "blockquote": "blockquote",
    "tg-emoji": "custom_emoji",
}
MEDIA_KINDS = ("photo", "video", "animation", "document", "audio")
# Real Telegram's texts where public sources record them (Bot API server answers quoted in
# client libraries and issue threads); the others are marked as the double's own wording.
TOO_MANY_IN_ALBUM = "Bad Request: Too much messages to send as an album"
NO_MEDIA_TO_EDIT = "Bad Request: there is no media in the message to edit"
MEDIA_NOT_FOUND = "Bad Request: can't parse InputMedia: media not found"
TOO_LARGE = "Request Entity Too Large"
PHOTO_LIMITS = (90, 320, 800, 1280)  # thumbnail sides Telegram makes below the full size
MAX_PHOTO_SIDE = 2560
MB = 1024 * 1024
QUERY_TOO_OLD = "Bad Request: query is too old and response timeout expired or query ID is invalid"
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup "
    "are exactly the same as a current content and reply markup of the message"
)


class ApiError(Exception):
    """An error answer: raised inside method handlers, turned into Telegram's JSON."""

    def __init__(self, code: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "ok": False,
            "error_code": self.code,
            "description": self.description,
        }
        if self.retry_after is not None:
            body["parameters"] = {"retry_after": self.retry_after}
        return body


@dataclass
class Call:
    """One request the bot made; ``status`` is 0 until answered (and when dropped)."""

    method: str
    params: dict[str, Any]
    files: dict[str, bytes]
    at: float
    status: int = 0
    response: dict[str, Any] | None = None
    dropped: bool = False  # the connection was closed without an answer
    answered_at: float | None = None  # time.monotonic() of the answer (``at``: of the request)
    # time.time() once the whole request (body and uploads) was read: wall clock, so benchmarks
    # can set it beside ComfyUI's and the backend's timestamps.
    received_at: float | None = None

    @property
    def done(self) -> bool:
        return self.status != 0 or self.dropped

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def result(self) -> Any:
        return (self.response or {}).get("result")

    @property
    def chat_id(self) -> Any:
        return self.params.get("chat_id")


@dataclass
class MessageState:
    """A message as it stands now in a chat (edits applied, deletion flagged)."""

    chat_id: int
    message_id: int
    from_bot: bool
    sender: dict[str, Any]
    chat: dict[str, Any]
    date: int
    text: str | None = None
    entities: list[dict[str, Any]] | None = None
    caption: str | None = None
    caption_entities: list[dict[str, Any]] | None = None
    media: dict[str, Any] = field(default_factory=dict)  # "photo": [...], "document": {...}
    photo: bytes | None = None  # the photo bytes as uploaded
    document: bytes | None = None
    video: bytes | None = None
    animation: bytes | None = None  # as uploaded (Telegram would convert a GIF to MP4)
    thumbnail: bytes | None = None  # the thumbnail uploaded with a video or animation
    upload_mime: str | None = None  # the uploaded video/animation's type, from its bytes
    reply_markup: dict[str, Any] | None = None
    deleted: bool = False
    edit_date: int | None = None
    edits: int = 0

    @property
    def callback_data(self) -> list[str]:
        """The callback_data of every inline button, row by row."""
        rows = (self.reply_markup or {}).get("inline_keyboard") or []
        return [b["callback_data"] for row in rows for b in row if "callback_data" in b]

    def as_dict(self) -> dict[str, Any]:
        """The Telegram Message object."""
        message: dict[str, Any] = {
            "message_id": self.message_id,
            "from": self.sender,
            "chat": self.chat,
            "date": self.date,
        }
        if self.edit_date is not None:
            message["edit_date"] = self.edit_date
        if self.text is not None:
            message["text"] = self.text
            if self.entities:
                message["entities"] = self.entities
        message.update(self.media)
        if self.caption is not None:
            message["caption"] = self.caption
            if self.caption_entities:
                message["caption_entities"] = self.caption_entities
        if self.reply_markup and "inline_keyboard" in self.reply_markup:
            message["reply_markup"] = self.reply_markup
        return message


@dataclass
class StoredFile:
    file_id: str
    file_unique_id: str
    data: bytes
    file_path: str


@dataclass
class WebhookDelivery:
    update_id: int
    at: float
    status: int | None  # None: no HTTP answer
    error: str | None = None


@dataclass
class _Fault:
    method: str
    error_code: int
    description: str
    retry_after: int | None
    times: int
    chat_id: int | None


@dataclass
class _Upload:
    filename: str
    content_type: str | None
    data: bytes


class _Signal:
    """Wakes every waiter on notify(); a waiter takes the current event before checking."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)


class _Params:
    """A request's parameters, with Telegram's coercions and error texts."""

    def __init__(self, values: dict[str, Any], uploads: dict[str, _Upload]) -> None:
        self.values = values
        self.uploads = uploads

    def get(self, name: str, default: Any = None) -> Any:
        return self.values.get(name, default)

    def string(self, name: str, *, empty: str | None = None) -> str:
        value = self.values.get(name)
        if value is None or value == "":
            raise ApiError(400, empty or f"Bad Request: {name} is empty")
        return str(value)

    def integer(self, name: str, default: int | None = None) -> int:
        value = self.values.get(name, default)
        if value is None or value == "":
            raise ApiError(400, f"Bad Request: {name} is empty")
        if not isinstance(value, int) or isinstance(value, bool):
            raise ApiError(400, f"Bad Request: invalid {name} specified")
        return value

    def flag(self, name: str) -> bool:
        return bool(self.values.get(name, False))

    def file(self, name: str) -> _Upload | str:
        """An uploaded file (multipart, direct or attach://) or a file_id string."""
        if name in self.uploads:
            return self.uploads[name]
        return self.string(name, empty=f"Bad Request: there is no {name} in the request")


def _coerce(name: str, value: Any) -> Any:
    if isinstance(value, str):
        if name in JSON_FIELDS:
            try:
                return json.loads(value)
            except ValueError:
                raise ApiError(400, f"Bad Request: can't parse {name} JSON object") from None
        if name in INT_FIELDS and re.fullmatch(r"-?\d+", value.strip()):
            return int(value)
        if name in BOOL_FIELDS:
            return value.strip().lower() in ("true", "1")
    return value


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


_ATTRIBUTE = re.compile(r"""([\w-]+)\s*(?:=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+)))?""")


def parse_html(source: str) -> tuple[str, list[dict[str, Any]]]:
    """Telegram's HTML parse mode: plain text plus entities; ApiError on bad markup."""
    parts: list[str] = []
    length = 0
    stack: list[tuple[str, int, dict[str, str]]] = []
    entities: list[dict[str, Any]] = []
    position = 0
    while position < len(source):
        lt = source.find("<", position)
        chunk = source[position : lt if lt != -1 else len(source)]
        if chunk:
            plain = html.unescape(chunk)
            parts.append(plain)
            length += _utf16_len(plain)
        if lt == -1:
            break
        offset = len(source[:lt].encode())
        gt = source.find(">", lt)
        if gt == -1:
            raise _entities_error(f"Unclosed start tag at byte offset {offset}")
        inner = source[lt + 1 : gt].strip()
        if inner.startswith("/"):
            name = inner[1:].strip().lower()
            if not stack:
                raise _entities_error(f"Unexpected end tag at byte offset {offset}")
            tag, start, attributes = stack.pop()
            if name and name != tag:
                raise _entities_error(
                    f'Unmatched end tag at byte offset {offset}, expected "</{tag}>", '
                    f'found "</{name}>"'
                )
            if length > start:
                entities.append(_entity(tag, attributes, start, length - start))
        else:
            name, _, rest = inner.partition(" ")
            name = name.lower()
            attributes = {
                m.group(1).lower(): html.unescape(m.group(2) or m.group(3) or m.group(4) or "")
                for m in _ATTRIBUTE.finditer(rest)
            }
            if name not in HTML_TAGS or (
                name == "span" and attributes.get("class") != "tg-spoiler"
            ):
                raise _entities_error(f'Unsupported start tag "{name}" at byte offset {offset}')
            stack.append((name, length, attributes))
        position = gt + 1
    if stack:
        raise _entities_error(f'Can\'t find end tag corresponding to start tag "{stack[-1][0]}"')
    entities.sort(key=lambda e: (e["offset"], -e["length"]))
    return "".join(parts), entities


def _entities_error(detail: str) -> ApiError:
    return ApiError(400, f"Bad Request: can't parse entities: {detail}")


def _entity(tag: str, attributes: dict[str, str], offset: int, length: int) -> dict[str, Any]:
    entity: dict[str, Any] = {"type": HTML_TAGS[tag], "offset": offset, "length": length}
    if tag == "a":
        entity["url"] = attributes.get("href", "")
    elif tag == "blockquote" and "expandable" in attributes:
        entity["type"] = "expandable_blockquote"
    elif tag == "tg-emoji":
        entity["custom_emoji_id"] = attributes.get("emoji-id", "")
    return entity


def _image_size(data: bytes) -> tuple[int, int, str | None]:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.width, image.height, image.format
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise ApiError(400, "Bad Request: IMAGE_PROCESS_FAILED") from None


def _animatable(data: bytes) -> bool:
    """GIF or MP4: the only uploads Telegram shows as an animation."""
    return data[:4] == b"GIF8" or data[4:8] == b"ftyp"


def _sniff(data: bytes, filename: str) -> str:
    """The upload's type as Telegram sees it: from its bytes (clients such as aiogram send
    every part as application/octet-stream), else from its name."""
    if data[4:8] == b"ftyp":
        return "video/mp4"
    if data[:4] == b"GIF8":
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


def _has_sound(data: bytes) -> bool:
    """An MP4 with an audio track (its ``hdlr`` box names the ``soun`` handler)."""
    return re.search(rb"hdlr.{8}soun", data, re.DOTALL) is not None


def _jpeg(data: bytes, max_side: int) -> tuple[bytes, int, int]:
    with Image.open(io.BytesIO(data)) as image:
        picture = image.convert("RGB")
    picture.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=87)
    return buffer.getvalue(), picture.width, picture.height


class TelegramDouble:
    """A fake api.telegram.org on 127.0.0.1 for one bot token; ``url`` is valid after start()."""

    def __init__(
        self,
        *,
        token: str = TEST_BOT_TOKEN,
        port: int = 0,
        recompress_photos: bool = True,
        webhook_attempts: int = 4,
        webhook_retry_delay: float = 0.05,
        delivery_timeout: float = 10.0,
    ) -> None:
        self.token = token
        self.port = port
        # Telegram re-encodes photos as JPEG; False keeps the largest size byte-identical.
        self.recompress_photos = recompress_photos
        self.webhook_attempts = webhook_attempts
        self.webhook_retry_delay = webhook_retry_delay
        # How long a user driver waits for its update's first webhook delivery attempt.
        self.delivery_timeout = delivery_timeout
        self.bot_user: dict[str, Any] = {
            "id": int(token.split(":", 1)[0]),
            "is_bot": True,
            "first_name": "Comfygram Test",
            "username": BOT_USERNAME,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }
        self.calls: list[Call] = []
        self.webhook_deliveries: list[WebhookDelivery] = []
        self.webhook_dropped: list[dict[str, Any]] = []
        self.callback_answers: dict[str, dict[str, Any]] = {}
        self.pre_checkout_answers: dict[str, dict[str, Any]] = {}
        self.refunded: set[str] = set()
        self._users: dict[int, dict[str, Any]] = {}
        self._messages: dict[int, dict[int, MessageState]] = {}
        self._files: dict[str, StoredFile] = {}
        self._files_by_path: dict[str, StoredFile] = {}
        self._photo_groups: dict[str, list[dict[str, Any]]] = {}
        self._updates: list[dict[str, Any]] = []
        self._resent: list[dict[str, Any]] = []
        self._next_update_id = 10_000
        self._allowed_updates: list[str] = list(DEFAULT_ALLOWED_UPDATES)
        self._webhook: dict[str, Any] | None = None
        self._webhook_error: tuple[int, str] | None = None
        self._first_attempts: dict[int, asyncio.Future[None]] = {}
        self._poll_generation = 0
        # Open callback and pre-checkout queries: id -> (created at, seconds to answer).
        self._queries: dict[str, tuple[float, float]] = {}
        self._charges: dict[str, int] = {}  # telegram_payment_charge_id -> user id
        # What getStarTransactions pages through, oldest first: a payment is an incoming
        # transaction (source), its refund an outgoing one (receiver) with the same id.
        self.star_transactions: list[dict[str, Any]] = []
        # createInvoiceLink's links -> their parameters; subscriptions by first charge id.
        self.invoice_links: dict[str, dict[str, Any]] = {}
        self.subscriptions: dict[str, StarSubscription] = {}
        self._commands: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._faults: list[_Fault] = []
        self._flood: tuple[int, float, int] | None = None
        self._flood_sent: dict[int, list[float]] = {}
        self._media_files: dict[str, tuple[str, dict[str, Any]]] = {}  # file_id -> kind, object
        self._drops: dict[str, int] = {}
        self._blocked: set[int] = set()
        self._calls_changed = _Signal()
        self._updates_changed = _Signal()
        self._closing = False
        self._server: uvicorn.Server | None = None
        self._server_task: asyncio.Task[None] | None = None
        self._webhook_task: asyncio.Task[None] | None = None
        self._handlers: dict[str, tuple[str, Callable[[_Params], Awaitable[Any]]]] = {
            name.lower(): (name, handler)
            for name, handler in {
                "getMe": self._get_me,
                "getUpdates": self._get_updates,
                "setWebhook": self._set_webhook,
                "deleteWebhook": self._delete_webhook,
                "getWebhookInfo": self._get_webhook_info,
                "sendMessage": self._send_message,
                "editMessageText": self._edit_message_text,
                "editMessageReplyMarkup": self._edit_message_reply_markup,
                "editMessageCaption": self._edit_message_caption,
                "editMessageMedia": self._edit_message_media,
                "deleteMessage": self._delete_message,
                "sendPhoto": self._send_photo,
                "sendDocument": self._send_document,
                "sendVideo": self._send_video,
                "sendAnimation": self._send_animation,
                "sendMediaGroup": self._send_media_group,
                "getFile": self._get_file,
                "answerCallbackQuery": self._answer_callback_query,
                "sendInvoice": self._send_invoice,
                "answerPreCheckoutQuery": self._answer_pre_checkout_query,
                "refundStarPayment": self._refund_star_payment,
                "getStarTransactions": self._get_star_transactions,
                "createInvoiceLink": self._create_invoice_link,
                "editUserStarSubscription": self._edit_user_star_subscription,
                "setMyCommands": self._set_my_commands,
                "getMyCommands": self._get_my_commands,
                "deleteMyCommands": self._delete_my_commands,
                "sendChatAction": self._send_chat_action,
            }.items()
        }

    @property
    def url(self) -> str:
        """The base URL for TELEGRAM_API_URL."""
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit it: without it, headers and body written apart wait on
        # the client's delayed ACK (about 40 ms a request).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(128)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app(),
            log_level="warning",
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        self._closing = False
        self._server = uvicorn.Server(config)
        self._server_task = asyncio.create_task(self._server._serve([sock]))
        while not self._server.started:
            if self._server_task.done():
                await self._server_task
            await asyncio.sleep(0.005)
        self._webhook_task = asyncio.create_task(self._webhook_loop())

    async def stop(self) -> None:
        self._closing = True
        self._updates_changed.notify()  # long polls answer at once
        for attempt in self._first_attempts.values():
            if not attempt.done():
                attempt.set_result(None)
        if self._webhook_task is not None:
            self._webhook_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._webhook_task
            self._webhook_task = None
        if self._server is not None and self._server_task is not None:
            self._server.should_exit = True
            await self._server_task
            self._server = self._server_task = None

    async def __aenter__(self) -> TelegramDouble:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- fault switches -----------------------------------------------------------------------

    def fail(
        self,
        method: str,
        error_code: int,
        description: str,
        *,
        retry_after: int | None = None,
        times: int = 1,
        chat_id: int | None = None,
    ) -> None:
        """Answer the next `times` calls of `method` ("*": any) with this error."""
        self._faults.append(_Fault(method, error_code, description, retry_after, times, chat_id))

    def flood_limit(self, messages: int, per_seconds: float = 1.0, retry_after: int = 1) -> None:
        """Telegram's flood control: a chat that would get more than `messages` bot messages
        within `per_seconds` gets 429 with `retry_after` instead (an album counts as its
        items, so an album larger than `messages` is always refused)."""
        self._flood = (messages, per_seconds, retry_after)
        self._flood_sent.clear()

    def block(self, chat_id: int) -> None:
        """The user blocked the bot: sends and edits to the chat answer 403."""
        self._blocked.add(chat_id)

    def unblock(self, chat_id: int) -> None:
        self._blocked.discard(chat_id)

    def drop_connections(self, method: str, times: int = 1) -> None:
        """Close the connection without an answer on the next `times` calls of `method`."""
        self._drops[method] = self._drops.get(method, 0) + times

    # -- inspection ---------------------------------------------------------------------------

    def sent(self, method: str | None = None, chat_id: int | None = None) -> list[Call]:
        return [
            c
            for c in self.calls
            if (method is None or c.method == method)
            and (chat_id is None or c.params.get("chat_id") == chat_id)
        ]

    def messages(self, chat_id: int) -> list[MessageState]:
        """Every message of the chat (user's and bot's, deleted ones flagged), oldest first."""
        chat = self._messages.get(chat_id, {})
        return [chat[message_id] for message_id in sorted(chat)]

    def message(self, chat_id: int, message_id: int) -> MessageState:
        return self._messages[chat_id][message_id]

    def commands(
        self, scope: dict[str, Any] | None = None, language_code: str = ""
    ) -> list[dict[str, Any]]:
        return self._commands.get(self._commands_key(scope, language_code), [])

    def file_bytes(self, file_id: str) -> bytes:
        return self._files[file_id].data

    @property
    def webhook(self) -> dict[str, Any] | None:
        """The webhook set by the bot: url, secret_token, allowed_updates, max_connections."""
        return self._webhook

    @property
    def pending_updates(self) -> list[dict[str, Any]]:
        return list(self._updates)

    async def wait_for(
        self,
        method: str,
        *,
        chat_id: int | None = None,
        count: int = 1,
        timeout: float = 10,
        predicate: Callable[[Call], bool] | None = None,
        since: int = 0,
    ) -> list[Call]:
        """Wait until `count` finished calls match (counting from calls[since]); return them."""
        deadline = time.monotonic() + timeout
        while True:
            found = [
                c
                for c in self.calls[since:]
                if c.method == method
                and c.done
                and (chat_id is None or c.params.get("chat_id") == chat_id)
                and (predicate is None or predicate(c))
            ]
            if len(found) >= count:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = [(c.method, c.status, c.params.get("chat_id")) for c in self.calls[-20:]]
                raise AssertionError(
                    f"waited {timeout}s for {count} {method} call(s), saw {len(found)}; "
                    f"last calls: {seen}"
                )
            await self._calls_changed.wait(remaining)

    # -- users --------------------------------------------------------------------------------

    def user(
        self,
        telegram_id: int,
        first_name: str = "Test",
        language_code: str = "en",
        username: str | None = None,
    ) -> UserDriver:
        """A Telegram user who has a private chat with the bot (chat id == user id)."""
        user: dict[str, Any] = {
            "id": telegram_id,
            "is_bot": False,
            "first_name": first_name,
            "language_code": language_code,
        }
        if username:
            user["username"] = username
        self._users[telegram_id] = user
        self._messages.setdefault(telegram_id, {})
        return UserDriver(self, telegram_id)

    def _chat_dict(self, chat_id: int) -> dict[str, Any]:
        user = self._users[chat_id]
        chat = {"id": chat_id, "type": "private", "first_name": user["first_name"]}
        if "username" in user:
            chat["username"] = user["username"]
        return chat

    def _new_message(self, chat_id: int, *, from_bot: bool, **fields: Any) -> MessageState:
        chat = self._messages[chat_id]
        message_id = max(chat, default=0) + 1
        state = MessageState(
            chat_id=chat_id,
            message_id=message_id,
            from_bot=from_bot,
            sender=self.bot_user if from_bot else self._users[chat_id],
            chat=self._chat_dict(chat_id),
            date=int(time.time()),
            **fields,
        )
        chat[message_id] = state
        return state

    def forward(self, chat_id: int, message_id: int, to_chat_id: int) -> MessageState:
        """A user forwards a bot message to another chat. A forwarded invoice keeps a Pay
        button (anyone may pay the same invoice) unless it was sent with a start_parameter;
        then the copy carries a URL button opening the bot with that deep link instead."""
        original = self._messages[chat_id][message_id]
        markup = original.reply_markup
        invoice = original.media.get("invoice")
        if invoice is not None:
            stars = f"Pay ⭐️{invoice['total_amount']}"
            if invoice["start_parameter"]:
                link = f"https://t.me/{BOT_USERNAME}?start={invoice['start_parameter']}"
                markup = {"inline_keyboard": [[{"text": stars, "url": link}]]}
            else:
                markup = {"inline_keyboard": [[{"text": stars, "pay": True}]]}
        origin = {"type": "user", "sender_user": original.sender, "date": original.date}
        return self._new_message(
            to_chat_id,
            from_bot=False,
            text=original.text,
            media={**original.media, "forward_origin": origin},
            reply_markup=markup,
        )

    # -- updates ------------------------------------------------------------------------------

    async def push_update(self, kind: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        """Queue an update (dropped when the bot did not subscribe to `kind`), deliver it in
        webhook mode, and return it."""
        if kind not in self._allowed_updates:
            return None
        self._next_update_id += 1
        update = {"update_id": self._next_update_id, kind: payload}
        self._updates.append(update)
        await self._after_enqueue(update)
        return update

    async def resend(self, update: dict[str, Any]) -> None:
        """Deliver the same update (same update_id) once more, as Telegram does after a
        webhook failed to answer 2xx or a poller did not confirm it."""
        self._resent.append(update)
        await self._after_enqueue(update)

    async def _after_enqueue(self, update: dict[str, Any]) -> None:
        if self._webhook is None:
            self._updates_changed.notify()
            return
        attempt = asyncio.get_running_loop().create_future()
        self._first_attempts[id(update)] = attempt
        self._updates_changed.notify()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(attempt), self.delivery_timeout)

    async def _webhook_loop(self) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            while True:
                webhook = self._webhook
                queue = self._resent or self._updates
                if webhook is None or not queue:
                    await self._updates_changed.wait(None)
                    continue
                update = queue[0]
                delivered = await self._deliver(client, webhook, update)
                if delivered is None:
                    continue  # the webhook was removed meanwhile: the update stays pending
                if queue and queue[0] is update:
                    queue.pop(0)
                if not delivered:
                    self.webhook_dropped.append(update)

    async def _deliver(
        self, client: httpx.AsyncClient, webhook: dict[str, Any], update: dict[str, Any]
    ) -> bool | None:
        headers = {"Content-Type": "application/json"}
        if webhook.get("secret_token"):
            headers["X-Telegram-Bot-Api-Secret-Token"] = webhook["secret_token"]
        body = json.dumps(update, ensure_ascii=False).encode()
        for attempt in range(self.webhook_attempts):
            if self._webhook is not webhook:
                return None
            if attempt:
                await asyncio.sleep(self.webhook_retry_delay * 2 ** (attempt - 1))
            status: int | None = None
            error: str | None = None
            try:
                response = await client.post(webhook["url"], content=body, headers=headers)
                status = response.status_code
                if not 200 <= status < 300:
                    error = f"Wrong response from the webhook: {status} {response.reason_phrase}"
            except httpx.HTTPError as exc:
                error = f"Connection failed: {type(exc).__name__}"
            self.webhook_deliveries.append(
                WebhookDelivery(update["update_id"], time.monotonic(), status, error)
            )
            first = self._first_attempts.pop(id(update), None)
            if first is not None and not first.done():
                first.set_result(None)
            if error is None:
                return True
            self._webhook_error = (int(time.time()), error)
        return False

    # -- HTTP ---------------------------------------------------------------------------------

    def _app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/bot{token}/{method}", self._api, methods=["GET", "POST"]),
                Route("/file/bot{token}/{path:path}", self._download, methods=["GET"]),
            ]
        )

    async def _api(self, request: Request) -> Response:
        call = Call(request.path_params["method"], {}, {}, time.monotonic())
        self.calls.append(call)
        try:
            params = await self._read_params(request)
            call.received_at = time.time()
            call.params = params.values
            call.files = {name: upload.data for name, upload in params.uploads.items()}
            if request.path_params["token"] != self.token:
                raise ApiError(401, "Unauthorized")
            known = self._handlers.get(call.method.lower())
            if known is None:
                raise ApiError(404, "Not Found")
            call.method, handler = known
            if self._drops.get(call.method, 0) > 0:
                self._drops[call.method] -= 1
                self._abort(request)
                call.dropped = True
                self._calls_changed.notify()
                return Response(status_code=500)  # never reaches the client
            self._apply_fault(call)
            body = {"ok": True, "result": await handler(params)}
            status = 200
        except ApiError as exc:
            body, status = exc.body(), exc.code
        call.status, call.response = status, body
        call.answered_at = time.monotonic()
        self._calls_changed.notify()
        return Response(
            json.dumps(body, ensure_ascii=False), status_code=status, media_type="application/json"
        )

    async def _read_params(self, request: Request) -> _Params:
        values: dict[str, Any] = dict(request.query_params)
        uploads: dict[str, _Upload] = {}
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "application/json":
            try:
                body = json.loads(await request.body() or b"{}")
            except ValueError:
                raise ApiError(400, "Bad Request: can't parse JSON object") from None
            if not isinstance(body, dict):
                raise ApiError(400, "Bad Request: JSON object expected")
            values.update(body)
        elif content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            form = await request.form(max_part_size=50 * MB)
            parts: dict[str, _Upload] = {}
            for name, value in form.multi_items():
                if isinstance(value, UploadFile):
                    data = await value.read()
                    parts[name] = _Upload(value.filename or name, value.content_type, data)
                else:
                    values[name] = value
            for name, value in list(values.items()):
                if isinstance(value, str) and value.startswith("attach://"):
                    key = value.removeprefix("attach://")
                    if key in parts:
                        uploads[name] = parts.pop(key)
            uploads.update(parts)  # a file sent directly in the field it belongs to
        return _Params({k: _coerce(k, v) for k, v in values.items()}, uploads)

    def _abort(self, request: Request) -> None:
        """Close the request's TCP connection at once, so the client gets no answer."""
        assert self._server is not None
        client = request.scope.get("client")
        for connection in list(self._server.server_state.connections):
            if getattr(connection, "client", None) == (tuple(client) if client else None):
                connection.transport.abort()  # type: ignore[union-attr]

    def _apply_fault(self, call: Call) -> None:
        for fault in self._faults:
            if fault.method not in ("*", call.method):
                continue
            if fault.chat_id is not None and call.params.get("chat_id") != fault.chat_id:
                continue
            fault.times -= 1
            if fault.times <= 0:
                self._faults.remove(fault)
            raise ApiError(fault.error_code, fault.description, fault.retry_after)

    async def _download(self, request: Request) -> Response:
        stored = self._files_by_path.get(request.path_params["path"])
        if request.path_params["token"] != self.token or stored is None:
            body = {"ok": False, "error_code": 404, "description": "Not Found"}
            return Response(json.dumps(body), status_code=404, media_type="application/json")
        return Response(stored.data, media_type="application/octet-stream")

    # -- shared checks ------------------------------------------------------------------------

    def _chat(self, params: _Params) -> int:
        value = params.get("chat_id")
        if value is None or value == "":
            raise ApiError(400, "Bad Request: chat_id is empty")
        if not isinstance(value, int) or value not in self._users:
            raise ApiError(400, "Bad Request: chat not found")
        if value in self._blocked:
            raise ApiError(403, "Forbidden: bot was blocked by the user")
        return value

    def _text(
        self, params: _Params, name: str, limit: int, *, required: bool
    ) -> tuple[str | None, list[dict[str, Any]] | None]:
        raw = params.get(name)
        if raw is None or raw == "":
            if required:
                raise ApiError(400, "Bad Request: message text is empty")
            return None, None
        raw = str(raw)
        entity_field = "entities" if name == "text" else "caption_entities"
        mode = str(params.get("parse_mode") or "").lower()
        if mode == "html":
            text, entities = parse_html(raw)
        else:
            text, entities = raw, params.get(entity_field) or []
        if required and not text.strip():
            raise ApiError(400, "Bad Request: message text is empty")
        if len(text) > limit:
            kind = "message" if name == "text" else "message caption"
            raise ApiError(400, f"Bad Request: {kind} is too long")
        return text, entities or None

    @staticmethod
    def _markup(params: _Params) -> dict[str, Any] | None:
        markup = params.get("reply_markup")
        if markup is None:
            return None
        if not isinstance(markup, dict):
            raise ApiError(400, "Bad Request: can't parse reply keyboard markup JSON object")
        rows = markup.get("inline_keyboard")
        if rows is not None:
            if sum(len(row) for row in rows) > 100:
                raise ApiError(400, "Bad Request: reply markup is too long")
            for row in rows:
                for button in row:
                    if not button.get("text"):
                        raise ApiError(400, "Bad Request: text buttons are unallowed")
                    data = button.get("callback_data")
                    if data is not None and not 1 <= len(str(data).encode()) <= 64:
                        raise ApiError(400, "Bad Request: BUTTON_DATA_INVALID")
        return markup

    def _target(self, params: _Params, *, deleting: bool = False) -> MessageState:
        if params.get("inline_message_id"):
            raise ApiError(400, "Bad Request: MESSAGE_ID_INVALID")
        chat_id = self._chat(params)
        message_id = params.integer("message_id")
        state = self._messages[chat_id].get(message_id)
        if state is None or state.deleted:
            verb = "delete" if deleting else "edit"
            raise ApiError(400, f"Bad Request: message to {verb} not found")
        if not deleting and not state.from_bot:
            raise ApiError(400, "Bad Request: message can't be edited")
        return state

    @staticmethod
    def _edited(state: MessageState, changes: dict[str, Any]) -> dict[str, Any]:
        if all(getattr(state, name) == value for name, value in changes.items()):
            raise ApiError(400, NOT_MODIFIED)
        for name, value in changes.items():
            setattr(state, name, value)
        state.edit_date = int(time.time())
        state.edits += 1
        return state.as_dict()

    def _store_file(self, data: bytes, folder: str, suffix: str) -> StoredFile:
        unique = "AQAD" + secrets.token_urlsafe(9)
        stored = StoredFile(
            file_id="AgACAgIAAxkBAA" + secrets.token_urlsafe(24),
            file_unique_id=unique,
            data=data,
            file_path=f"{folder}/file_{len(self._files)}{suffix}",
        )
        self._files[stored.file_id] = stored
        self._files_by_path[stored.file_path] = stored
        return stored

    def _photo(self, data: bytes) -> list[dict[str, Any]]:
        """Store a photo the way Telegram does: thumbnails, then the full size (JPEG)."""
        if len(data) > 10 * MB:
            raise ApiError(400, "Bad Request: PHOTO_SAVE_FILE_INVALID")
        width, height, kind = _image_size(data)
        if width + height > 10000 or max(width, height) > 20 * min(width, height):
            raise ApiError(400, "Bad Request: PHOTO_INVALID_DIMENSIONS")
        side = max(width, height)
        sizes: list[dict[str, Any]] = []
        for limit in (*(x for x in PHOTO_LIMITS if x < side), min(side, MAX_PHOTO_SIDE)):
            full = limit == min(side, MAX_PHOTO_SIDE)
            if full and side <= MAX_PHOTO_SIDE and (kind == "JPEG" or not self.recompress_photos):
                payload, w, h = data, width, height
            else:
                payload, w, h = _jpeg(data, limit)
            stored = self._store_file(payload, "photos", ".jpg")
            sizes.append(
                {
                    "file_id": stored.file_id,
                    "file_unique_id": stored.file_unique_id,
                    "file_size": len(payload),
                    "width": w,
                    "height": h,
                }
            )
        for size in sizes:
            self._photo_groups[size["file_id"]] = sizes
        return sizes

    def _document(self, data: bytes, filename: str, mime_type: str | None) -> dict[str, Any]:
        suffix = "." + filename.rsplit(".", 1)[1] if "." in filename else ""
        stored = self._store_file(data, "documents", suffix)
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_name": filename,
            "mime_type": mime_type
            or mimetypes.guess_type(filename)[0]
            or "application/octet-stream",
            "file_size": len(data),
        }

    @staticmethod
    def _check_upload(upload: _Upload) -> None:
        if len(upload.data) > 50 * MB:  # the Bot API's upload limit for bots
            raise ApiError(413, TOO_LARGE)

    def _take_flood(self, chat_id: int, count: int) -> None:
        """Count `count` messages to the chat, or answer 429 if the flood limit is reached."""
        if self._flood is None:
            return
        limit, window, retry_after = self._flood
        now = time.monotonic()
        recent = [at for at in self._flood_sent.get(chat_id, []) if now - at < window]
        self._flood_sent[chat_id] = recent
        if len(recent) + count > limit:
            raise ApiError(429, f"Too Many Requests: retry after {retry_after}", retry_after)
        recent.extend([now] * count)

    def _input_media(
        self, item: dict[str, Any], uploads: dict[str, _Upload]
    ) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """An InputMedia object's file (attach://name or file_id), resolved and stored."""
        kind = str(item.get("type"))
        reference = item.get("media")
        if not isinstance(reference, str) or not reference:
            raise ApiError(400, MEDIA_NOT_FOUND)
        source: _Upload | str = reference
        if reference.startswith("attach://"):
            upload = uploads.get(reference.removeprefix("attach://"))
            if upload is None:
                raise ApiError(400, MEDIA_NOT_FOUND)
            source = upload
        thumbnail = None
        thumb_ref = item.get("thumbnail")
        if isinstance(thumb_ref, str) and thumb_ref.startswith("attach://"):
            thumbnail = uploads.get(thumb_ref.removeprefix("attach://"))
        return self._resolve_media(kind, source, item, thumbnail)

    def _resolve_media(
        self,
        kind: str,
        source: _Upload | str,
        options: dict[str, Any],
        thumbnail: _Upload | None,
    ) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """(the Message field it shows as, its object, MessageState byte fields)."""
        if not isinstance(source, _Upload):
            return self._known_media(kind, source)
        self._check_upload(source)
        data = source.data
        if kind == "photo":
            return "photo", self._photo(data), {"photo": data}
        if kind in ("document", "audio"):
            document = self._document(data, source.filename, source.content_type)
            return "document", document, {"document": data}
        sent_as = kind
        if kind == "animation" and not _animatable(data):
            sent_as = "document"  # Telegram animates only GIF and MP4; the rest is a file
        elif kind == "animation" and data[4:8] == b"ftyp" and _has_sound(data):
            sent_as = "video"  # an MP4 with sound is a video, not an animation
        if sent_as == "document":
            document = self._document(data, source.filename, source.content_type)
            mime = _sniff(data, source.filename)
            return "document", document, {"document": data, "upload_mime": mime}
        stored = self._store_file(data, f"{sent_as}s", ".mp4")
        mime = upload_mime = _sniff(data, source.filename)
        name = source.filename
        if data[:4] == b"GIF8":  # Telegram converts a GIF animation to an MP4 without sound
            mime, name = "video/mp4", f"{source.filename}.mp4"
        media: dict[str, Any] = {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            # Telegram probes the file when these are missing; the double cannot, so 0.
            "width": self._dimension(options, "width"),
            "height": self._dimension(options, "height"),
            "duration": self._dimension(options, "duration"),
            "file_name": name,
            "mime_type": mime,
            "file_size": len(data),
        }
        fields: dict[str, Any] = {sent_as: data, "upload_mime": upload_mime}
        thumb = self._thumbnail(thumbnail)
        if thumb is not None:
            media["thumbnail"] = thumb
            fields["thumbnail"] = thumbnail.data if thumbnail else None
        self._media_files[stored.file_id] = (sent_as, media)
        return sent_as, media, fields

    @staticmethod
    def _dimension(options: dict[str, Any], name: str) -> int:
        value = options.get(name, 0)
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ApiError(400, f"Bad Request: invalid {name} specified")  # double's wording
        return value

    def _thumbnail(self, upload: _Upload | None) -> dict[str, Any] | None:
        """The reference: a JPEG under 200 kB, at most 320 px a side; anything else is
        ignored (the message then has no thumbnail), as Telegram does."""
        if upload is None or len(upload.data) >= 200 * 1024:
            return None
        try:
            width, height, kind = _image_size(upload.data)
        except ApiError:
            return None
        if kind != "JPEG" or max(width, height) > 320:
            return None
        stored = self._store_file(upload.data, "thumbnails", ".jpg")
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": len(upload.data),
            "width": width,
            "height": height,
        }

    def _known_media(self, kind: str, file_id: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """A file sent again by its file_id."""
        wrong = ApiError(400, "Bad Request: wrong file identifier/HTTP URL specified")
        if kind == "photo":
            sizes = self._photo_groups.get(file_id)
            if sizes is None:
                raise wrong
            return "photo", sizes, {"photo": self._files[sizes[-1]["file_id"]].data}
        stored = self._files.get(file_id)
        if stored is None:
            raise wrong
        known = self._media_files.get(file_id)
        if known is not None and known[0] == kind:
            return kind, known[1], {kind: stored.data}
        if kind in ("document", "audio"):
            document = {"file_id": stored.file_id, "file_unique_id": stored.file_unique_id}
            return "document", document, {"document": stored.data}
        raise wrong

    def _query_alive(self, query_id: str) -> None:
        created, limit = self._queries.pop(query_id, (0.0, -1.0))
        if time.monotonic() - created > limit:
            raise ApiError(400, QUERY_TOO_OLD)

    @staticmethod
    def _commands_key(scope: dict[str, Any] | None, language_code: str) -> tuple[str, str]:
        return json.dumps(scope or {"type": "default"}, sort_keys=True), language_code or ""

    # -- methods ------------------------------------------------------------------------------

    async def _get_me(self, params: _Params) -> Any:
        return self.bot_user

    async def _get_updates(self, params: _Params) -> Any:
        if self._webhook is not None:
            raise ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        offset = params.get("offset")
        if isinstance(offset, int) and offset > 0:
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        elif isinstance(offset, int) and offset < 0:
            self._updates = self._updates[offset:]
        limit = params.get("limit") or 100
        timeout = params.get("timeout") or 0
        if params.get("allowed_updates"):
            self._allowed_updates = list(params.get("allowed_updates"))
        elif params.get("allowed_updates") == []:
            self._allowed_updates = list(DEFAULT_ALLOWED_UPDATES)
        # A newer getUpdates ends a waiting one, as Telegram does with two pollers.
        self._poll_generation += 1
        generation = self._poll_generation
        self._updates_changed.notify()
        deadline = time.monotonic() + float(timeout)
        while True:
            if generation != self._poll_generation:
                raise ApiError(
                    409,
                    "Conflict: terminated by other getUpdates request; make sure that only "
                    "one bot instance is running",
                )
            batch = (self._resent + self._updates)[: int(limit)]
            remaining = deadline - time.monotonic()
            if batch or remaining <= 0 or self._closing or self._webhook is not None:
                self._resent = [u for u in self._resent if u not in batch]
                return batch
            await self._updates_changed.wait(remaining)

    async def _set_webhook(self, params: _Params) -> Any:
        url = str(params.get("url") or "")
        if not url:
            return await self._delete_webhook(params)
        if not url.startswith(("https://", "http://")):
            raise ApiError(400, "Bad Request: bad webhook: An HTTPS URL must be provided")
        secret = params.get("secret_token")
        if secret is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", str(secret)):
            raise ApiError(400, "Bad Request: secret token contains unallowed characters")
        if params.flag("drop_pending_updates"):
            self._updates.clear()
        if params.get("allowed_updates"):
            self._allowed_updates = list(params.get("allowed_updates"))
        self._webhook = {
            "url": url,
            "secret_token": secret,
            "max_connections": params.get("max_connections") or 40,
            "allowed_updates": params.get("allowed_updates"),
        }
        self._webhook_error = None
        self._updates_changed.notify()
        return True

    async def _delete_webhook(self, params: _Params) -> Any:
        self._webhook = None
        if params.flag("drop_pending_updates"):
            self._updates.clear()
        self._updates_changed.notify()
        return True

    async def _get_webhook_info(self, params: _Params) -> Any:
        info: dict[str, Any] = {
            "url": "",
            "has_custom_certificate": False,
            "pending_update_count": len(self._updates),
        }
        if self._webhook is not None:
            info["url"] = self._webhook["url"]
            info["ip_address"] = "127.0.0.1"
            info["max_connections"] = self._webhook["max_connections"]
            info["allowed_updates"] = self._allowed_updates
            if self._webhook_error is not None:
                info["last_error_date"], info["last_error_message"] = self._webhook_error
        return info

    async def _send_message(self, params: _Params) -> Any:
        chat_id = self._chat(params)
        text, entities = self._text(params, "text", 4096, required=True)
        markup = self._markup(params)
        self._take_flood(chat_id, 1)
        state = self._new_message(
            chat_id, from_bot=True, text=text, entities=entities, reply_markup=markup
        )
        return state.as_dict()

    async def _edit_message_text(self, params: _Params) -> Any:
        state = self._target(params)
        if state.text is None:
            raise ApiError(400, "Bad Request: there is no text in the message to edit")
        text, entities = self._text(params, "text", 4096, required=True)
        # Without reply_markup Telegram removes the inline keyboard.
        changes = {"text": text, "entities": entities, "reply_markup": self._markup(params)}
        return self._edited(state, changes)

    async def _edit_message_reply_markup(self, params: _Params) -> Any:
        state = self._target(params)
        return self._edited(state, {"reply_markup": self._markup(params)})

    async def _edit_message_caption(self, params: _Params) -> Any:
        state = self._target(params)
        if not state.media or "invoice" in state.media:
            raise ApiError(400, "Bad Request: there is no caption in the message to edit")
        caption, entities = self._text(params, "caption", 1024, required=False)
        changes = {
            "caption": caption,
            "caption_entities": entities,
            "reply_markup": self._markup(params),
        }
        return self._edited(state, changes)

    async def _delete_message(self, params: _Params) -> Any:
        state = self._target(params, deleting=True)
        state.deleted = True
        return True

    async def _send_photo(self, params: _Params) -> Any:
        chat_id = self._chat(params)
        source = params.file("photo")
        if isinstance(source, _Upload):
            data, sizes = source.data, self._photo(source.data)
        else:
            sizes = self._photo_groups.get(source)
            if sizes is None:
                raise ApiError(400, "Bad Request: wrong file identifier/HTTP URL specified")
            data = self._files[sizes[-1]["file_id"]].data
        caption, entities = self._text(params, "caption", 1024, required=False)
        markup = self._markup(params)
        self._take_flood(chat_id, 1)
        state = self._new_message(
            chat_id,
            from_bot=True,
            media={"photo": sizes},
            photo=data,
            caption=caption,
            caption_entities=entities,
            reply_markup=markup,
        )
        return state.as_dict()

    async def _send_document(self, params: _Params) -> Any:
        chat_id = self._chat(params)
        source = params.file("document")
        if isinstance(source, _Upload):
            self._check_upload(source)
            document = self._document(source.data, source.filename, source.content_type)
            data = source.data
        else:
            stored = self._files.get(source)
            if stored is None:
                raise ApiError(400, "Bad Request: wrong file identifier/HTTP URL specified")
            document = {"file_id": stored.file_id, "file_unique_id": stored.file_unique_id}
            data = stored.data
        caption, entities = self._text(params, "caption", 1024, required=False)
        markup = self._markup(params)
        self._take_flood(chat_id, 1)
        state = self._new_message(
            chat_id,
            from_bot=True,
            media={"document": document},
            document=data,
            caption=caption,
            caption_entities=entities,
            reply_markup=markup,
        )
        return state.as_dict()

    async def _send_video(self, params: _Params) -> Any:
        return await self._send_motion("video", params)

    async def _send_animation(self, params: _Params) -> Any:
        return await self._send_motion("animation", params)

    async def _send_motion(self, kind: str, params: _Params) -> Any:
        chat_id = self._chat(params)
        source = params.file(kind)
        thumbnail = params.uploads.get("thumbnail")
        sent_as, media, fields = self._resolve_media(kind, source, params.values, thumbnail)
        caption, entities = self._text(params, "caption", 1024, required=False)
        markup = self._markup(params)
        self._take_flood(chat_id, 1)
        state = self._new_message(
            chat_id,
            from_bot=True,
            media={sent_as: media},
            caption=caption,
            caption_entities=entities,
            reply_markup=markup,
            **fields,
        )
        return state.as_dict()

    async def _send_media_group(self, params: _Params) -> Any:
        chat_id = self._chat(params)
        items = params.get("media")
        if items is None or items == "":
            raise ApiError(400, 'Bad Request: parameter "media" is required')
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise ApiError(400, "Bad Request: expected an Array of InputMedia")
        if len(items) > 10:
            raise ApiError(400, TOO_MANY_IN_ALBUM)
        if len(items) < 2:
            # The reference says 2-10 items; this wording is the double's own.
            raise ApiError(400, "Bad Request: an album must contain 2 to 10 media")
        kinds = [item.get("type") for item in items]
        for kind in kinds:
            if kind not in ("photo", "video", "document", "audio"):
                raise ApiError(
                    400, f'Bad Request: can\'t parse InputMedia: unsupported type "{kind}"'
                )
        grouped_alone = {"document", "audio"} & set(kinds)
        if grouped_alone and len(set(kinds)) > 1:
            # Documents and audios group only with their own type (reference); own wording.
            alone = sorted(grouped_alone)[0]
            raise ApiError(400, f"Bad Request: {alone}s can't be mixed with other media types")
        # Everything is checked before anything is sent: an album is sent whole or not at all.
        # reply_markup is no parameter of sendMediaGroup: ignored, as Telegram ignores it.
        prepared = []
        for item in items:
            sent_as, media, fields = self._input_media(item, params.uploads)
            caption, entities = self._text(_Params(item, {}), "caption", 1024, required=False)
            prepared.append((sent_as, media, fields, caption, entities))
        self._take_flood(chat_id, len(items))
        group = str(secrets.randbits(62))
        messages = []
        for sent_as, media, fields, caption, entities in prepared:
            state = self._new_message(
                chat_id,
                from_bot=True,
                media={sent_as: media, "media_group_id": group},
                caption=caption,
                caption_entities=entities,
                **fields,
            )
            messages.append(state.as_dict())
        return messages

    async def _edit_message_media(self, params: _Params) -> Any:
        state = self._target(params)
        if not any(kind in state.media for kind in MEDIA_KINDS):
            raise ApiError(400, NO_MEDIA_TO_EDIT)
        item = params.get("media")
        if item is None or item == "":
            raise ApiError(400, 'Bad Request: parameter "media" is required')
        if not isinstance(item, dict):
            raise ApiError(400, "Bad Request: can't parse InputMedia JSON object")
        if item.get("type") not in ("photo", "video", "animation", "document", "audio"):
            raise ApiError(
                400, f'Bad Request: can\'t parse InputMedia: unsupported type "{item.get("type")}"'
            )
        sent_as, media, fields = self._input_media(item, params.uploads)
        caption, entities = self._text(_Params(item, {}), "caption", 1024, required=False)
        kept = {k: v for k, v in state.media.items() if k not in MEDIA_KINDS}
        changes: dict[str, Any] = {
            "media": {sent_as: media, **kept},
            "caption": caption,
            "caption_entities": entities,
            # Without reply_markup Telegram removes the inline keyboard, as for other edits.
            "reply_markup": self._markup(params),
            **{name: None for name in ("photo", "document", "video", "animation")},
            "thumbnail": None,
            "upload_mime": None,
            **fields,
        }
        return self._edited(state, changes)

    async def _get_file(self, params: _Params) -> Any:
        stored = self._files.get(params.string("file_id"))
        if stored is None:
            raise ApiError(400, "Bad Request: invalid file_id")
        if len(stored.data) > 20 * MB:
            raise ApiError(400, "Bad Request: file is too big")
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": len(stored.data),
            "file_path": stored.file_path,
        }

    async def _answer_callback_query(self, params: _Params) -> Any:
        query_id = params.string("callback_query_id")
        self._query_alive(query_id)
        self.callback_answers[query_id] = dict(params.values)
        return True

    async def _send_invoice(self, params: _Params) -> Any:
        chat_id = self._chat(params)
        title, description = params.string("title"), params.string("description")
        payload, currency = params.string("payload"), params.string("currency")
        if not 1 <= len(title) <= 32 or not 1 <= len(description) <= 255:
            raise ApiError(400, "Bad Request: invoice title or description is invalid")
        if not 1 <= len(payload.encode()) <= 128:
            raise ApiError(400, "Bad Request: INVOICE_PAYLOAD_INVALID")
        prices = params.get("prices")
        if not isinstance(prices, list) or not prices:
            raise ApiError(400, "Bad Request: prices must be non-empty")
        amounts = [p.get("amount") for p in prices if isinstance(p, dict)]
        if len(amounts) != len(prices) or not all(isinstance(a, int) for a in amounts):
            raise ApiError(400, "Bad Request: can't parse prices JSON object")
        if currency == "XTR":
            if len(prices) != 1 or params.get("provider_token"):
                raise ApiError(400, "Bad Request: STARS_INVOICE_INVALID")
        elif not params.get("provider_token"):
            raise ApiError(400, "Bad Request: PAYMENT_PROVIDER_INVALID")
        if sum(amounts) <= 0:
            raise ApiError(400, "Bad Request: CURRENCY_TOTAL_AMOUNT_INVALID")
        invoice = {
            "title": title,
            "description": description,
            "start_parameter": str(params.get("start_parameter") or ""),
            "currency": currency,
            "total_amount": sum(amounts),
        }
        state = self._new_message(
            chat_id, from_bot=True, media={"invoice": invoice}, reply_markup=self._markup(params)
        )
        return state.as_dict()

    async def _answer_pre_checkout_query(self, params: _Params) -> Any:
        query_id = params.string("pre_checkout_query_id")
        if "ok" not in params.values:
            raise ApiError(400, "Bad Request: ok is empty")
        if not params.flag("ok") and not params.get("error_message"):
            raise ApiError(400, "Bad Request: ERROR_MESSAGE_EMPTY")
        self._query_alive(query_id)
        self.pre_checkout_answers[query_id] = {
            "ok": params.flag("ok"),
            "error_message": params.get("error_message"),
        }
        return True

    async def _refund_star_payment(self, params: _Params) -> Any:
        user_id = params.integer("user_id")
        charge_id = params.string("telegram_payment_charge_id")
        if self._charges.get(charge_id) != user_id:
            raise ApiError(400, "Bad Request: CHARGE_NOT_FOUND")
        if charge_id in self.refunded:
            raise ApiError(400, "Bad Request: CHARGE_ALREADY_REFUNDED")
        await self.refund(charge_id)
        return True

    async def refund(self, charge_id: str, *, report: bool = True) -> dict[str, Any] | None:
        """Give a charge's Stars back, as refundStarPayment or a dispute Telegram decides does:
        an outgoing transaction, and (``report``) the refunded_payment service message in the
        payer's chat, whoever asked for the refund."""
        incoming = next(t for t in self.star_transactions if t["id"] == charge_id)
        self.refunded.add(charge_id)
        partner = incoming["source"]
        self.star_transactions.append(
            {
                "id": charge_id,
                "amount": incoming["amount"],
                "date": int(time.time()),
                "receiver": partner,
            }
        )
        if not report:
            return None
        refunded = {
            "currency": "XTR",
            "total_amount": incoming["amount"],
            "invoice_payload": partner["invoice_payload"],
            "telegram_payment_charge_id": charge_id,
        }
        user = UserDriver(self, partner["user"]["id"])
        return await user._extra({"refunded_payment": refunded})

    async def _get_star_transactions(self, params: _Params) -> Any:
        offset = params.integer("offset", 0)
        limit = params.integer("limit", 100)
        if offset < 0:
            raise ApiError(400, "Bad Request: offset is invalid")
        if not 1 <= limit <= 100:
            raise ApiError(400, "Bad Request: limit is invalid")
        return {"transactions": self.star_transactions[offset : offset + limit]}

    async def _create_invoice_link(self, params: _Params) -> Any:
        payload, currency = params.string("payload"), params.string("currency")
        prices = params.get("prices")
        if not 1 <= len(payload.encode()) <= 128:
            raise ApiError(400, "Bad Request: INVOICE_PAYLOAD_INVALID")
        if not isinstance(prices, list) or len(prices) != 1 or currency != "XTR":
            raise ApiError(400, "Bad Request: STARS_INVOICE_INVALID")
        period = params.get("subscription_period")
        if period is not None:
            if int(period) != SUBSCRIPTION_PERIOD:
                raise ApiError(400, "Bad Request: SUBSCRIPTION_PERIOD_INVALID")
            if not 1 <= int(prices[0]["amount"]) <= SUBSCRIPTION_MAX_STARS:
                raise ApiError(400, "Bad Request: SUBSCRIPTION_PRICE_INVALID")
        link = f"https://t.me/$invoice{secrets.token_urlsafe(12)}"
        self.invoice_links[link] = dict(params.values)
        return link

    async def _edit_user_star_subscription(self, params: _Params) -> Any:
        user_id = params.integer("user_id")
        charge_id = params.string("telegram_payment_charge_id")
        subscription = self.subscriptions.get(charge_id)
        if subscription is None or subscription.user_id != user_id:
            raise ApiError(400, "Bad Request: SUBSCRIPTION_NOT_FOUND")
        canceled = params.flag("is_canceled")
        if canceled == subscription.canceled:
            raise ApiError(400, "Bad Request: SUBSCRIPTION_NOT_MODIFIED")
        subscription.canceled = canceled
        return True

    async def _set_my_commands(self, params: _Params) -> Any:
        commands = params.get("commands")
        if not isinstance(commands, list) or len(commands) > 100:
            raise ApiError(400, "Bad Request: can't parse commands JSON object")
        for command in commands:
            if not re.fullmatch(r"[a-z0-9_]{1,32}", str(command.get("command", ""))):
                raise ApiError(400, "Bad Request: BOT_COMMAND_INVALID")
            if not 1 <= len(str(command.get("description", ""))) <= 256:
                raise ApiError(400, "Bad Request: BOT_COMMAND_DESCRIPTION_INVALID")
        language = str(params.get("language_code") or "")
        if language and not re.fullmatch(r"[a-z]{2}", language):
            raise ApiError(400, "Bad Request: LANG_CODE_INVALID")
        key = self._commands_key(params.get("scope"), language)
        self._commands[key] = [
            {"command": c["command"], "description": c["description"]} for c in commands
        ]
        return True

    async def _get_my_commands(self, params: _Params) -> Any:
        key = self._commands_key(params.get("scope"), str(params.get("language_code") or ""))
        return self._commands.get(key, [])

    async def _delete_my_commands(self, params: _Params) -> Any:
        key = self._commands_key(params.get("scope"), str(params.get("language_code") or ""))
        self._commands.pop(key, None)
        return True

    async def _send_chat_action(self, params: _Params) -> Any:
        self._chat(params)
        if params.get("action") not in CHAT_ACTIONS:
            raise ApiError(400, "Bad Request: wrong parameter action in request")
        return True


# Telegram's only subscription period (30 days), and the most Stars a period may cost.
SUBSCRIPTION_PERIOD = 2592000
SUBSCRIPTION_MAX_STARS = 10000


@dataclass
class StarSubscription:
    user_id: int
    payload: str
    amount: int
    expires: int
    canceled: bool = False


class UserDriver:
    """Acts as one Telegram user talking to the bot in a private chat.

    Each action creates a real-shaped update (polled by getUpdates, or POSTed to the webhook,
    in which case the call returns after the first delivery attempt) and returns the user's
    Message or CallbackQuery dict.
    """

    def __init__(self, double: TelegramDouble, telegram_id: int) -> None:
        self.double = double
        self.id = telegram_id
        self.last_update: dict[str, Any] | None = None
        self._chat_instance = str(secrets.randbits(62))

    @property
    def chat_id(self) -> int:
        return self.id

    @property
    def user(self) -> dict[str, Any]:
        return self.double._users[self.id]

    async def _message(self, **fields: Any) -> dict[str, Any]:
        state = self.double._new_message(self.id, from_bot=False, **fields)
        message = state.as_dict()
        self.last_update = await self.double.push_update("message", message)
        return message

    async def _extra(self, extra: dict[str, Any]) -> dict[str, Any]:
        """A user message carrying fields MessageState has no slot for (sticker, payment...)."""
        return await self._message(media=extra)

    async def send_text(self, text: str) -> dict[str, Any]:
        return await self._message(text=text)

    async def send_command(self, command: str, args: str = "") -> dict[str, Any]:
        command = command.lstrip("/")
        text = f"/{command} {args}".rstrip()
        entity = {"type": "bot_command", "offset": 0, "length": _utf16_len(f"/{command}")}
        return await self._message(text=text, entities=[entity])

    async def send_photo(self, data: bytes, caption: str | None = None) -> dict[str, Any]:
        sizes = self.double._photo(data)
        return await self._message(media={"photo": sizes}, photo=data, caption=caption)

    async def send_album(self, photos: list[bytes]) -> list[dict[str, Any]]:
        """Photos sent together: one message (and update) each, sharing a media_group_id."""
        group = str(secrets.randbits(62))
        messages = []
        for data in photos:
            media = {"photo": self.double._photo(data), "media_group_id": group}
            messages.append(await self._message(media=media, photo=data))
        return messages

    async def send_document(
        self, data: bytes, filename: str = "file.bin", mime_type: str | None = None
    ) -> dict[str, Any]:
        document = self.double._document(data, filename, mime_type)
        return await self._message(media={"document": document}, document=data)

    async def send_sticker(self, emoji: str = "👍") -> dict[str, Any]:
        buffer = io.BytesIO()
        Image.new("RGBA", (512, 512), (255, 200, 0, 255)).save(buffer, "WEBP")
        stored = self.double._store_file(buffer.getvalue(), "stickers", ".webp")
        sticker = {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "type": "regular",
            "width": 512,
            "height": 512,
            "is_animated": False,
            "is_video": False,
            "emoji": emoji,
            "file_size": len(stored.data),
        }
        return await self._extra({"sticker": sticker})

    async def send_voice(self, duration: int = 2) -> dict[str, Any]:
        stored = self.double._store_file(b"OggS\x00fake-voice", "voice", ".oga")
        voice = {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "duration": duration,
            "mime_type": "audio/ogg",
            "file_size": len(stored.data),
        }
        return await self._extra({"voice": voice})

    async def send_location(
        self, latitude: float = 55.75, longitude: float = 37.62
    ) -> dict[str, Any]:
        return await self._extra({"location": {"latitude": latitude, "longitude": longitude}})

    async def press(
        self,
        message: dict[str, Any] | MessageState,
        callback_data: str,
        *,
        too_old: bool = False,
    ) -> dict[str, Any]:
        """Press an inline button of a message the bot sent; the button must be there now.

        ``too_old``: the query is already past Telegram's answer window when the bot gets it
        (as for presses made while the bot was down), so answerCallbackQuery answers 400
        "query is too old".
        """
        if isinstance(message, MessageState):
            chat_id, message_id = message.chat_id, message.message_id
        else:
            chat_id, message_id = message["chat"]["id"], message["message_id"]
        state = self.double._messages.get(chat_id, {}).get(message_id)
        assert state is not None and not state.deleted, f"message {message_id} is not in chat"
        assert callback_data in state.callback_data, (
            f"no button with callback_data {callback_data!r} on message {message_id}; "
            f"buttons: {state.callback_data}"
        )
        query_id = str(secrets.randbits(62))
        # Telegram stops accepting the answer after about 15 seconds.
        self.double._queries[query_id] = (time.monotonic(), -1.0 if too_old else 15.0)
        query = {
            "id": query_id,
            "from": self.user,
            "message": state.as_dict(),
            "chat_instance": self._chat_instance,
            "data": callback_data,
        }
        self.last_update = await self.double.push_update("callback_query", query)
        return query

    async def block_bot(self) -> dict[str, Any] | None:
        """Block the bot in Telegram: sends to the chat answer 403 from now on, and the bot
        gets a my_chat_member update (status "kicked") if it subscribed to them."""
        self.double.block(self.id)
        return await self._membership("member", "kicked")

    async def unblock_bot(self) -> dict[str, Any] | None:
        """Unblock (restart) the bot: my_chat_member with status "member"."""
        self.double.unblock(self.id)
        return await self._membership("kicked", "member")

    async def _membership(self, old: str, new: str) -> dict[str, Any] | None:
        def member(status: str) -> dict[str, Any]:
            state = {"user": self.double.bot_user, "status": status}
            return {**state, "until_date": 0} if status == "kicked" else state

        change = {
            "chat": self.double._chat_dict(self.id),
            "from": self.user,
            "date": int(time.time()),
            "old_chat_member": member(old),
            "new_chat_member": member(new),
        }
        self.last_update = await self.double.push_update("my_chat_member", change)
        return self.last_update

    async def pre_checkout(self, invoice_call: Call) -> str:
        """Start paying the invoice the bot sent with `invoice_call`; returns the query id."""
        assert invoice_call.method == "sendInvoice" and invoice_call.ok, "not a sent invoice"
        query_id = str(secrets.randbits(62))
        self.double._queries[query_id] = (time.monotonic(), 10.0)  # 10 s to answer, or void
        query = {
            "id": query_id,
            "from": self.user,
            "currency": invoice_call.params["currency"],
            "total_amount": sum(p["amount"] for p in invoice_call.params["prices"]),
            "invoice_payload": invoice_call.params["payload"],
        }
        self.last_update = await self.double.push_update("pre_checkout_query", query)
        return query_id

    async def pre_checkout_answer(self, query_id: str, timeout: float = 10) -> dict[str, Any]:
        """The bot's answerPreCheckoutQuery for `query_id`: {"ok": ..., "error_message": ...}."""
        await self.double.wait_for(
            "answerPreCheckoutQuery",
            timeout=timeout,
            predicate=lambda c: c.params.get("pre_checkout_query_id") == query_id,
        )
        return self.double.pre_checkout_answers[query_id]

    async def successful_payment(
        self, invoice_call: Call, charge_id: str, *, deliver: bool = True
    ) -> dict[str, Any] | None:
        """The successful_payment service message for the invoice, with `charge_id`; with
        ``deliver=False`` Telegram takes the Stars but the update is lost (only
        getStarTransactions knows)."""
        return await self._pay(
            invoice_call.params["payload"],
            sum(p["amount"] for p in invoice_call.params["prices"]),
            charge_id,
            currency=invoice_call.params["currency"],
            deliver=deliver,
        )

    async def subscribe(self, link: str, charge_id: str) -> dict[str, Any] | None:
        """Pay an invoice link made with subscription_period: the first period."""
        params = self.double.invoice_links[link]
        assert params.get("subscription_period"), "not a subscription link"
        amount = int(params["prices"][0]["amount"])
        self.double.subscriptions[charge_id] = StarSubscription(
            user_id=self.id,
            payload=params["payload"],
            amount=amount,
            expires=int(time.time()) + SUBSCRIPTION_PERIOD,
        )
        return await self._pay(
            params["payload"],
            amount,
            charge_id,
            recurring={
                "is_recurring": True,
                "is_first_recurring": True,
                "subscription_expiration_date": self.double.subscriptions[charge_id].expires,
            },
        )

    async def renew(self, first_charge_id: str, charge_id: str) -> dict[str, Any] | None:
        """Telegram charges the next period of a subscription that is not cancelled."""
        subscription = self.double.subscriptions[first_charge_id]
        assert not subscription.canceled, "a cancelled subscription is not renewed"
        subscription.expires += SUBSCRIPTION_PERIOD
        return await self._pay(
            subscription.payload,
            subscription.amount,
            charge_id,
            recurring={
                "is_recurring": True,
                "subscription_expiration_date": subscription.expires,
            },
        )

    async def _pay(
        self,
        payload: str,
        amount: int,
        charge_id: str,
        *,
        currency: str = "XTR",
        deliver: bool = True,
        recurring: dict[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        self.double._charges[charge_id] = self.id
        source: dict[str, Any] = {
            "type": "user",
            "transaction_type": "invoice_payment",
            "user": self.user,
            "invoice_payload": payload,
        }
        if recurring:
            source["subscription_period"] = SUBSCRIPTION_PERIOD
        self.double.star_transactions.append(
            {"id": charge_id, "amount": amount, "date": int(time.time()), "source": source}
        )
        if not deliver:
            return None
        payment = {
            "currency": currency,
            "total_amount": amount,
            "invoice_payload": payload,
            "telegram_payment_charge_id": charge_id,
            "provider_payment_charge_id": "",
            **(recurring or {}),
        }
        return await self._extra({"successful_payment": payment})

    async def resend(self, update: dict[str, Any] | None = None) -> None:
        """Deliver `update` (default: this user's last one) again with the same update_id."""
        update = update or self.last_update
        assert update is not None, "nothing to resend"
        await self.double.resend(update)

    def bot_messages(self, *, include_deleted: bool = False) -> list[MessageState]:
        return [
            m
            for m in self.double.messages(self.id)
            if m.from_bot and (include_deleted or not m.deleted)
        ]
