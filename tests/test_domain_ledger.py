"""The ledger's rules on their own, with no database."""

import pytest

from comfygram.domain import ledger
from comfygram.domain.ledger import Entry, InsufficientCredits, Reason


def test_posting_moves_the_balance_and_keeps_the_key():
    entry, balance = ledger.post(5, -3, Reason.JOB_CHARGE, "job:1:charge")
    assert entry == Entry(-3, Reason.JOB_CHARGE, "job:1:charge")
    assert balance == 2


def test_balance_never_goes_negative():
    with pytest.raises(InsufficientCredits) as raised:
        ledger.post(2, -5, Reason.JOB_CHARGE, "k")
    assert raised.value.missing == 3
    assert raised.value.balance == 2


def test_spending_exactly_the_balance_leaves_zero():
    assert ledger.post(4, -4, Reason.JOB_CHARGE, "k")[1] == 0


@pytest.mark.parametrize(
    ("amount", "reason"),
    [
        (3, Reason.JOB_CHARGE),
        (-3, Reason.JOB_REFUND),
        (-3, Reason.PAYMENT),
        (-3, Reason.SIGNUP_BONUS),
        (0, Reason.PAYMENT),
        (True, Reason.PAYMENT),
        (1.5, Reason.PAYMENT),
    ],
)
def test_amount_must_fit_the_reason(amount, reason):
    with pytest.raises(ValueError):
        ledger.post(10, amount, reason, "k")


def test_admin_adjustment_goes_both_ways():
    assert ledger.post(10, -4, Reason.ADMIN_ADJUSTMENT, "a")[1] == 6
    assert ledger.post(10, 4, Reason.ADMIN_ADJUSTMENT, "b")[1] == 14


def test_every_entry_needs_a_key():
    with pytest.raises(ValueError):
        ledger.post(10, 1, Reason.PAYMENT, "")


def test_keys_are_distinct_per_effect():
    keys = {
        ledger.signup_key(7),
        ledger.charge_key("j"),
        ledger.refund_key("j"),
        ledger.payment_key("ch"),
        ledger.admin_key("r"),
    }
    assert len(keys) == 5


def test_balance_is_the_sum_of_entries():
    entries = []
    balance = 0
    for amount, reason, key in [
        (3, Reason.SIGNUP_BONUS, "s"),
        (-2, Reason.JOB_CHARGE, "c1"),
        (2, Reason.JOB_REFUND, "r1"),
        (10, Reason.PAYMENT, "p"),
    ]:
        entry, balance = ledger.post(balance, amount, reason, key)
        entries.append(entry)
    assert ledger.balance_of(entries) == balance == 13
