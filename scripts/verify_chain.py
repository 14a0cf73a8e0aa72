#!/usr/bin/env python3
"""Recompute walletd's ledger hash chain from JSON Lines, sharing no code with walletd.

    python3 scripts/verify_chain.py [--from-genesis] [FILE ...]     (no FILE, or -: stdin)

Input: one transaction object per line, as `GET /v1/ledger/export?format=jsonl` writes them
(or the `entries` of `GET /v1/wallets/{id}/ledger` pages, one per line). Blank lines are
skipped. Each entry is checked on its own and against its wallet's neighbours:

- hash == SHA-256(prev_hash as 64 ASCII hex characters || UTF-8 of the RFC 8785 canonical JSON
  of the entry without its "hash" member), lowercase hex (docs/hash-chain.md);
- per wallet, each entry's prev_hash is the hash of the entry with the previous seq, and seq 1
  has 64 zeros; no seq appears twice, and no seq is missing between the first and the last one
  seen. Entries may come in any order (an export is in created_at order).

A window that does not begin at a wallet's first entry cannot link its first entry to the one
before it: that link is reported but not counted as a failure, unless --from-genesis says the
input holds every wallet's ledger from seq 1.

Prints one line per problem (at most 50, then a count) and a summary; exits 0 when everything
checks out, 1 on any mismatch, 2 on unreadable input.

RFC 8785 here: object members sorted by the UTF-16 code units of their names; no whitespace;
strings as JSON.stringify writes them (json.dumps with ensure_ascii=False escapes the same
characters the same way); numbers as ECMAScript's Number.prototype.toString writes an IEEE-754
double: Python's repr gives the same shortest round-trip digits, only the layout differs
(1e-06 -> 0.000001, 1e+20 -> 100000000000000000000, 1e+21 -> 1e+21, 1.5e-07 -> 1.5e-7).
"""

import hashlib
import json
import math
import sys

GENESIS = "0" * 64
PROBLEMS_SHOWN_MAX = 50


def es_number(value):
    """ECMAScript Number::toString of a finite double (ECMA-262, Number::toString): repr's
    shortest round-trip digits, laid out as ECMAScript lays them out."""
    if isinstance(value, bool):
        raise TypeError("not a number")
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(f"{value!r} is not a finite number")
    if x == 0:
        return "0"
    sign = "-" if x < 0 else ""
    mantissa, _, exponent = repr(abs(x)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    # The decimal point sits `point` digits into `digits`.
    point = len(whole) + (int(exponent) if exponent else 0)
    significant = digits.lstrip("0")
    point -= len(digits) - len(significant)
    digits = significant.rstrip("0")
    # x = 0.d1...dk * 10^n
    k, n = len(digits), point
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * (-n) + digits
    e = n - 1
    exp = f"e+{e}" if e >= 0 else f"e-{-e}"
    if k == 1:
        return sign + digits + exp
    return sign + digits[0] + "." + digits[1:] + exp


def canonical(value):
    """RFC 8785 (JCS) text of a JSON value parsed by json.loads."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return es_number(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ",".join(canonical(item) for item in value) + "]"
    if isinstance(value, dict):
        names = sorted(value, key=lambda name: name.encode("utf-16-be"))
        return "{" + ",".join(json.dumps(name, ensure_ascii=False) + ":" + canonical(value[name]) for name in names) + "}"
    raise TypeError(f"not a JSON value: {value!r}")


def entry_hash(entry):
    body = {name: member for name, member in entry.items() if name != "hash"}
    data = entry["prev_hash"].encode("ascii") + canonical(body).encode("utf-8")
    return hashlib.sha256(data).hexdigest()


class Wallet:
    """What is still needed to link a wallet's entries, whatever order they come in: the hash of
    each entry whose successor has not been seen, and the prev_hash of each entry whose
    predecessor has not been seen. For input in seq order both hold about one entry, so memory
    grows with the number of wallets, not of entries."""

    def __init__(self):
        self.hash_of = {}  # seq -> hash, waiting for seq + 1
        self.prev_of = {}  # seq -> prev_hash, waiting for seq - 1
        self.first = None
        self.last = None
        self.count = 0


def parse_lines(stream, name):
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
        except ValueError as error:
            raise SystemExit(f"verify_chain: {name}:{number}: not JSON: {error}") from None
        if not isinstance(entry, dict):
            raise SystemExit(f"verify_chain: {name}:{number}: not a JSON object")
        yield f"{name}:{number}", entry


def verify(sources, from_genesis):
    problems = []
    notes = []
    wallets = {}
    entries = 0

    def problem(text):
        problems.append(text)

    for where, entry in sources:
        entries += 1
        try:
            wallet_id, seq = entry["wallet_id"], entry["seq"]
            prev_hash, stored = entry["prev_hash"], entry["hash"]
        except KeyError as missing:
            problem(f"{where}: no {missing.args[0]} member")
            continue
        if not (isinstance(seq, int) and not isinstance(seq, bool) and seq >= 1):
            problem(f"{where}: seq {seq!r} is not a positive integer")
            continue
        label = f"{where}: wallet {wallet_id} seq {seq}"
        try:
            computed = entry_hash(entry)
        except (TypeError, ValueError, AttributeError, UnicodeEncodeError) as error:
            problem(f"{label}: cannot be canonicalized: {error}")
            continue
        if computed != stored:
            problem(f"{label}: hash {stored} but the entry hashes to {computed}")
        wallet = wallets.setdefault(wallet_id, Wallet())
        if seq in wallet.hash_of or seq in wallet.prev_of:
            problem(f"{label}: seq {seq} appears twice")
            continue
        wallet.count += 1
        wallet.first = seq if wallet.first is None else min(wallet.first, seq)
        wallet.last = seq if wallet.last is None else max(wallet.last, seq)
        # Link backwards: to seq - 1 if seen, to the genesis for seq 1, else wait for it.
        if seq == 1:
            if prev_hash != GENESIS:
                problem(f"{label}: the first entry's prev_hash is {prev_hash}, not 64 zeros")
        elif seq - 1 in wallet.hash_of:
            before = wallet.hash_of.pop(seq - 1)
            if prev_hash != before:
                problem(f"{label}: prev_hash {prev_hash} but seq {seq - 1} has hash {before}")
        else:
            wallet.prev_of[seq] = prev_hash
        # Link forwards: to seq + 1 if it came first, else keep this hash for it.
        if seq + 1 in wallet.prev_of:
            after = wallet.prev_of.pop(seq + 1)
            if after != stored:
                problem(f"wallet {wallet_id} seq {seq + 1}: prev_hash {after} but seq {seq} ({where}) has hash {stored}")
        else:
            wallet.hash_of[seq] = stored

    for wallet_id, wallet in wallets.items():
        for seq in sorted(wallet.prev_of):
            if seq == wallet.first and not from_genesis:
                notes.append(f"wallet {wallet_id}: starts at seq {seq}; its prev_hash is not checked (seq {seq - 1} is not in the input)")
            else:
                problem(f"wallet {wallet_id}: seq {seq - 1} is missing (seq {seq} has no predecessor in the input)")
        if wallet.count > wallet.last - wallet.first + 1:
            problem(f"wallet {wallet_id}: {wallet.count} entries for seq {wallet.first}..{wallet.last}: some seq appears twice")
    return entries, len(wallets), problems, notes


def main(argv):
    from_genesis = "--from-genesis" in argv
    paths = [arg for arg in argv if arg != "--from-genesis"]
    if any(arg.startswith("--") for arg in paths):
        print(__doc__, file=sys.stderr)
        return 2

    def sources():
        for path in paths or ["-"]:
            if path == "-":
                yield from parse_lines(sys.stdin, "<stdin>")
            else:
                with open(path, encoding="utf-8") as stream:
                    yield from parse_lines(stream, path)

    try:
        entries, wallet_count, problems, notes = verify(sources(), from_genesis)
    except OSError as error:
        print(f"verify_chain: {error}", file=sys.stderr)
        return 2
    except SystemExit as error:
        print(error, file=sys.stderr)
        return 2
    for note in notes:
        print(f"note: {note}")
    for text in problems[:PROBLEMS_SHOWN_MAX]:
        print(f"MISMATCH {text}")
    if len(problems) > PROBLEMS_SHOWN_MAX:
        print(f"... and {len(problems) - PROBLEMS_SHOWN_MAX} more")
    status = "OK" if not problems else "FAILED"
    print(f"verify_chain: {status}: {entries} entries, {wallet_count} wallets, {len(problems)} mismatches")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
