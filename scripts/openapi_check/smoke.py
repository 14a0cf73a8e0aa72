"""Smoke test of walletd through the Python client generated from its live /openapi.json.

    python smoke.py BASE_URL API_KEY   (the generated package `walletd_client` on PYTHONPATH)

Every call goes through the generated code (its models serialize the requests and parse the
answers), so a client that cannot express an operation, or parses an answer wrongly, fails
here: create a wallet, credit it, debit it, replay the debit with the same Idempotency-Key
(the same status and bytes, one ledger entry), page through the ledger with
`after=page.next_cursor`, place a hold and capture it, place another and void it, reverse the
debit, then check the balance and the audit. Prints one line per step; exits 1 on the first
failure.
"""

import sys
import uuid
from decimal import Decimal

from walletd_client import AuthenticatedClient
from walletd_client.api.holds import capture_hold, place_hold, void_hold
from walletd_client.api.ledger import audit_wallet
from walletd_client.api.transactions import get_transaction, reverse
from walletd_client.api.wallets import create_wallet, credit, debit, get_wallet, ledger
from walletd_client.models import (
    AuditReport,
    CaptureBody,
    CreateWalletBody2MinorUnits,
    CreateWalletBody2MinorUnitsCurrency,
    EntryBody2MinorUnits,
    EntryBody2MinorUnitsCurrency,
    Hold,
    LedgerPage,
    Metadata,
    PlaceHoldBody2MinorUnits,
    PlaceHoldBody2MinorUnitsCurrency,
    ReverseBody,
    Transaction,
    VoidBody,
    Wallet,
)

EUR = EntryBody2MinorUnitsCurrency.EUR


class SmokeFailure(Exception):
    pass


def check(condition, what):
    if not condition:
        raise SmokeFailure(what)


def step(what):
    print(f"smoke: ok   {what}", flush=True)


def answer(response, status, model):
    """The parsed answer of a response that must have `status` and parse as `model`."""
    check(
        response.status_code == status,
        f"expected {status}, got {response.status_code}: {response.content[:300]!r}",
    )
    check(
        isinstance(response.parsed, model),
        f"expected a {model.__name__}, got {type(response.parsed).__name__}",
    )
    return response.parsed


def key(name):
    return f"smoke-{name}-{uuid.uuid4()}"


def entry(amount, **fields):
    return EntryBody2MinorUnits(amount=amount, currency=EUR, **fields)


def run(base_url, api_key):
    client = AuthenticatedClient(base_url=base_url, token=api_key, raise_on_unexpected_status=True)

    body = CreateWalletBody2MinorUnits(
        currency=CreateWalletBody2MinorUnitsCurrency.EUR, owner_ref="smoke-user"
    )
    wallet = answer(
        create_wallet.sync_detailed(client=client, body=body, idempotency_key=key("wallet")),
        201,
        Wallet,
    )
    wallet_id = wallet.id
    check(wallet.balance == "0.00" and wallet.currency == "EUR", f"new wallet {wallet}")
    step(f"create wallet {wallet_id}")

    metadata = Metadata.from_dict({"source": "smoke", "nested": {"n": [1, 2.5, True, None]}})
    topup = answer(
        credit.sync_detailed(
            wallet_id,
            client=client,
            body=entry("100.00", reference="topup-1", metadata=metadata),
            idempotency_key=key("credit"),
        ),
        201,
        Transaction,
    )
    check(
        (topup.type_, topup.balance_before, topup.balance_after) == ("credit", "0.00", "100.00"),
        f"credit {topup}",
    )
    check(
        topup.metadata.to_dict() == metadata.to_dict(),
        f"metadata came back as {topup.metadata.to_dict()}",
    )
    step("credit 100.00 (metadata round-trips through the client's models)")

    debit_key = key("debit")
    first = debit.sync_detailed(
        wallet_id, client=client, body=entry("12.50", reference="booking-1"), idempotency_key=debit_key
    )
    charge = answer(first, 201, Transaction)
    check(charge.balance_after == "87.50", f"debit {charge}")
    step("debit 12.50")

    replay = debit.sync_detailed(
        wallet_id, client=client, body=entry("12.50", reference="booking-1"), idempotency_key=debit_key
    )
    check(replay.status_code == first.status_code, f"replay answered {replay.status_code}")
    check(replay.content == first.content, "the replay's body differs from the first answer's")
    check(replay.headers.get("idempotent-replayed") == "true", "no Idempotent-Replayed: true")
    step("replay of the debit: same status and body byte for byte, Idempotent-Replayed: true")

    for n in range(3):
        answer(
            credit.sync_detailed(
                wallet_id, client=client, body=entry("1.00"), idempotency_key=key(f"credit-{n}")
            ),
            201,
            Transaction,
        )
    seqs, keys, after, pages = [], [], None, 0
    while True:
        page = answer(
            ledger.sync_detailed(wallet_id, client=client, limit=2, **({"after": after} if after else {})),
            200,
            LedgerPage,
        )
        pages += 1
        check(pages <= 10, "the ledger does not end")
        seqs += [e.seq for e in page.entries]
        keys += [e.idempotency_key for e in page.entries]
        if page.next_cursor is None:
            break
        after = page.next_cursor
    check(seqs == [1, 2, 3, 4, 5], f"ledger seqs {seqs}")
    check(keys.count(debit_key) == 1, f"the debit's key is on {keys.count(debit_key)} entries")
    step(f"ledger in {pages} pages via after=next_cursor: seq 1..5, the debit once")

    hold = answer(
        place_hold.sync_detailed(
            wallet_id,
            client=client,
            body=PlaceHoldBody2MinorUnits(
                amount="30.00",
                currency=PlaceHoldBody2MinorUnitsCurrency.EUR,
                reference="booking-9",
                expires_in_seconds=900,
            ),
            idempotency_key=key("hold"),
        ),
        201,
        Hold,
    )
    captured = answer(
        capture_hold.sync_detailed(
            hold.id, client=client, body=CaptureBody(amount="25.00"), idempotency_key=key("capture")
        ),
        201,
        Transaction,
    )
    check(captured.hold_id == hold.id and captured.amount == "25.00", f"capture {captured}")
    step("place a hold of 30.00 and capture 25.00 (a debit naming the hold)")

    other = answer(
        place_hold.sync_detailed(
            wallet_id,
            client=client,
            body=PlaceHoldBody2MinorUnits(amount="5.00", currency=PlaceHoldBody2MinorUnitsCurrency.EUR),
            idempotency_key=key("hold-2"),
        ),
        201,
        Hold,
    )
    voided = answer(
        void_hold.sync_detailed(other.id, client=client, body=VoidBody(), idempotency_key=key("void")),
        200,
        Hold,
    )
    check(voided.status == "voided", f"void {voided}")
    step("place a hold of 5.00 and void it")

    refund = answer(
        reverse.sync_detailed(
            charge.id,
            client=client,
            body=ReverseBody(amount="5.00", reason="partial refund"),
            idempotency_key=key("reverse"),
        ),
        201,
        Transaction,
    )
    check(refund.type_ == "reversal" and refund.reverses == charge.id, f"reversal {refund}")
    again = answer(get_transaction.sync_detailed(refund.id, client=client), 200, Transaction)
    check(again.to_dict() == refund.to_dict(), "GET /v1/transactions/{id} differs from the reversal")
    step("reverse 5.00 of the debit")

    final = answer(get_wallet.sync_detailed(wallet_id, client=client), 200, Wallet)
    expected = Decimal("100.00") - Decimal("12.50") + 3 - Decimal("25.00") + Decimal("5.00")
    check(Decimal(final.balance) == expected, f"balance {final.balance}, expected {expected}")
    check(final.held == "0.00" and final.available == final.balance, f"wallet {final}")
    audit = answer(audit_wallet.sync_detailed(wallet_id, client=client), 200, AuditReport)
    check(audit.chain_ok and audit.entries == 7, f"audit {audit}")
    step(f"balance {final.balance}, nothing held, audit chain_ok over {audit.entries} entries")


def main():
    base_url, api_key = sys.argv[1], sys.argv[2]
    try:
        run(base_url, api_key)
    except SmokeFailure as failure:
        print(f"smoke: FAIL {failure}", flush=True)
        sys.exit(1)
    print("smoke: passed", flush=True)


if __name__ == "__main__":
    main()
