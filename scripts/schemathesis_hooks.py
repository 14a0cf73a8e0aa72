"""Schemathesis hooks for scripts/schemathesis.sh.

Every mutating POST needs an Idempotency-Key, and a key is bound to its first request: the
same key with another body is 422 idempotency_key_reused, with the same body a replay.
Hypothesis repeats small values ("0", "00", ...) all the time, so left alone most POSTs would
test the idempotency store rather than the operation. Each schema-valid key is therefore
replaced, just before the call, by a fresh one (still valid); an invalid or missing key, which
the negative tests send on purpose, is left as it is.
"""

import re
import uuid

import schemathesis

# IDEMPOTENCY_KEY_PATTERN in src/api/openapi_schemas.rs.
VALID_KEY = re.compile(r"^[!-~](?:[ -~]{0,253}[!-~])?$")


@schemathesis.hook
def before_call(context, case, kwargs):
    headers = case.headers
    if not headers:
        return
    for name in list(headers):
        if name.lower() == "idempotency-key":
            value = headers[name]
            if isinstance(value, str) and VALID_KEY.fullmatch(value):
                headers[name] = f"st-{uuid.uuid4()}"
