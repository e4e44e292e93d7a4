"""The bot's pieces on their own: keyboards, callback data, the wait estimate, escaping."""

from __future__ import annotations

from comfygram.api import Preset, RunTimes
from comfygram.bot import keyboards
from comfygram.bot.callbacks import Again, Buy, PresetChoice
from comfygram.bot.status import Eta, format_wait, queued_text
from comfygram.bot.texts import text
from comfygram.presets.contract import Contract, MediaKind, OutputSpec, PhotoSlot


def _preset(number: int, price: int = 1, contract: Contract | None = None) -> Preset:
    contract = contract or Contract(
        photos=(PhotoSlot(name="photo", node="1"),),
        output=OutputSpec(node="2", kind=MediaKind.IMAGE),
    )
    return Preset(
        slug=f"p{number}",
        title={"en": f"Preset {number}", "ru": f"Пресет {number}"},
        description={"en": "", "ru": ""},
        price=price,
        takes_prompt=contract.prompt is not None,
        contract=contract,
        kind=contract.output.kind,
    )


def _buttons(markup) -> list[list[tuple[str, str]]]:
    return [[(b.text, b.callback_data) for b in row] for row in markup.inline_keyboard]


def test_presets_are_paged_with_prices():
    presets = [_preset(n, price=n) for n in range(1, 14)] + [_preset(0, price=0)]
    first = _buttons(keyboards.presets(presets, "en"))
    assert first[0] == [("Preset 1 · 1 💎", "ps:p1")]
    assert len(first) == keyboards.PRESETS_PER_PAGE + 1
    assert first[-1] == [("1/3", "pp:0"), ("▶️", "pp:1")]
    middle = _buttons(keyboards.presets(presets, "ru", page=1))
    assert middle[0] == [("Пресет 7 · 7 💎", "ps:p7")]
    assert middle[-1] == [("◀️", "pp:0"), ("2/3", "pp:1"), ("▶️", "pp:2")]
    last = _buttons(keyboards.presets(presets, "en", page=99))  # clamped to the last page
    assert last[:2] == [[("Preset 13 · 13 💎", "ps:p13")], [("Preset 0 · free", "ps:p0")]]
    assert last[-1] == [("◀️", "pp:1"), ("3/3", "pp:2")]
    single = _buttons(keyboards.presets(presets[:3], "en"))
    assert len(single) == 3  # one page: no navigation row


def test_callback_data_the_worker_uses():
    job_id = "8dcec9b4-bdd0-43e4-8b2a-51c095200637"
    assert Again(job_id=job_id).pack() == f"again:{job_id}"
    assert Buy().pack() == "buy"
    assert Again.unpack(f"again:{job_id}").job_id == job_id
    assert len(PresetChoice(slug="x" * 32).pack().encode()) <= 64


async def test_wait_estimate_from_median_and_workers():
    class Backend:
        def __init__(self, measured: RunTimes) -> None:
            self.measured = measured

        async def run_times(self) -> RunTimes:
            return self.measured

    eta = Eta(Backend(RunTimes(median_seconds=None, presets={}, workers=1)))  # type: ignore[arg-type]
    await eta.refresh()
    assert eta.seconds(1) == 30  # nothing measured yet: the default
    eta = Eta(Backend(RunTimes(median_seconds=12.0, presets={}, workers=0)))  # type: ignore[arg-type]
    await eta.refresh()
    assert eta.seconds(1) is None  # no GPU serves the queue: no made-up estimate
    assert queued_text("en", 3, None) == (
        "⏳ Queued: position 3. No GPU is serving the queue right now; "
        "your photo will be processed as soon as one is back."
    )
    eta = Eta(Backend(RunTimes(median_seconds=12.0, presets={}, workers=2)))  # type: ignore[arg-type]
    await eta.refresh()
    assert [eta.seconds(p) for p in (1, 2, 3, 4)] == [20, 20, 30, 30]
    assert format_wait("en", 40) == "40 s" and format_wait("en", 150) == "3 min"
    assert queued_text("ru", 2, 40) == "⏳ В очереди: место 2, примерно 40 с."


def test_values_are_escaped_for_html():
    greeting = text("en", "bot.start.greeting", name="<b>Bob</b> & co", balance=3)
    assert "&lt;b&gt;Bob&lt;/b&gt; &amp; co" in greeting
    assert "<b>3</b>" in greeting  # the text's own markup stays
