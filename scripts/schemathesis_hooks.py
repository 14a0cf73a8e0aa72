"""Schemathesis hooks for scripts/schemathesis.sh.

Every mutating POST needs an Idempotency-Key, and a key is bound to its first request: the
same key with another body is 422 idempotency_key_reused, with the same body a replay.
Hypothesis repeats small values ("0", "00", ...) all the time, so left alone most POSTs would
test the idempotency store rather than the operation. Each schema-valid key is therefore
replaced, just before the call, by a fresh one (still valid); an invalid or missing key, which
the negative tests send on purpose, is left as it is.

The one metadata bound JSON Schema has no keyword for, "at most 15 significant digits"
(API.md, Conventions), is met the same way: numbers in a generated `metadata` are cut to
15 significant digits (toward zero, so a number within the bounds stays within them) before the call (the schema already bounds their magnitude, depth and
member count). Nothing else in the body changes.
"""

import decimal
import re
import uuid

import schemathesis

# IDEMPOTENCY_KEY_PATTERN in src/api/openapi_schemas.rs.
VALID_KEY = re.compile(r"^[!-~](?:[ -~]{0,253}[!-~])?$")


SIGNIFICANT_DIGITS_MAX = 15


def truncate(number):
    """`number` cut (toward zero) to 15 significant digits: never past a bound it was within."""
    exact = decimal.Decimal(repr(number)) if isinstance(number, float) else decimal.Decimal(number)
    if exact == 0:
        return number
    keep = exact.adjusted() - SIGNIFICANT_DIGITS_MAX + 1
    cut = exact.quantize(decimal.Decimal(1).scaleb(keep), rounding=decimal.ROUND_DOWN)
    return float(cut) if isinstance(number, float) else int(cut)


def round_numbers(value):
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return truncate(value)
    if isinstance(value, list):
        return [round_numbers(item) for item in value]
    if isinstance(value, dict):
        return {key: round_numbers(item) for key, item in value.items()}
    return value


@schemathesis.hook
def before_call(context, case, kwargs):
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("metadata"), dict):
        body["metadata"] = round_numbers(body["metadata"])
    headers = case.headers
    if not headers:
        return
    for name in list(headers):
        if name.lower() == "idempotency-key":
            value = headers[name]
            if isinstance(value, str) and VALID_KEY.fullmatch(value):
                headers[name] = f"st-{uuid.uuid4()}"
