#!/usr/bin/env python3
"""The client side of scripts/cluster.sh: load through nginx, retries, and the checks.

scripts/cluster.sh starts the cluster (3 Redis, 3 walletd replicas, nginx, a private database)
and the faults; this script only talks to it, in phases that share a state directory:

  setup      tenants and API keys (walletd CLI), wallets and their funding (through nginx)
  load       bounded concurrent debits/credits with Idempotency-Keys through nginx, for a fixed
             time: double-clicks (two identical requests at once), immediate client retries of
             decided keys, and retries of every answer that is not a decision
  settle     once every replica is ready: retries every key still without a decision, re-sends
             a sample of decided keys (the replay must be the same bytes), probes key reuse
  verify     from the database (psql) and the API: every acknowledged (2xx) request in the
             ledger exactly once, no entry nobody asked for, per-wallet invariants, audit
  ratelimit  one API key hammered through nginx (so across the 3 replicas) for ~2 s: the total
             accepted must stay within requests_per_second x the windows touched
  revoke     an API key cached on every replica is revoked with the CLI: every replica (and
             nginx) must refuse it within auth.cache_ttl_ms
  summary    one line; exit 1 if any phase failed

Python 3.11 standard library only. Everything is bounded in count and time, and every address
is on loopback (given by scripts/cluster.sh).

Classification of an answer (same as examples/chaos.rs): a *decision* is 201 or the stored
decline 422 insufficient_funds; *not a decision* (nothing stored, retry with the same key) is no
answer (refused, reset, client timeout), 408, 409, 429, 502, 503, 504; a 500 is a violation (and
is retried too, so its key is still held to exactly once); any other status is a violation.
"""

import argparse
import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from decimal import Decimal
from urllib.parse import urlsplit

CLIENT_TIMEOUT_S = 5.0
NOT_DECISIONS = {None, 408, 409, 429, 502, 503, 504, 500}
DECLINES = {"insufficient_funds"}


def log(msg):
    print(f"cluster: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# HTTP


class Client:
    """One keep-alive connection; an error closes it (the next call reconnects)."""

    def __init__(self, base, timeout=CLIENT_TIMEOUT_S):
        parts = urlsplit(base)
        self.host, self.port, self.timeout = parts.hostname, parts.port, timeout
        self.conn = None

    def call(self, method, path, api_key=None, body=None, idem=None):
        headers = {"Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        if body is not None:
            headers["Content-Type"] = "application/json"
        if idem is not None:
            headers["Idempotency-Key"] = idem
        t0 = time.time()
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self.conn.request(method, path, body=body.encode() if body is not None else None,
                              headers=headers)
            response = self.conn.getresponse()
            data = response.read()
            hdrs = {k.lower(): v for k, v in response.getheaders()}
            if response.will_close:
                self.close()
            return {"s": response.status, "b": data.decode("utf-8", "replace"), "h": hdrs,
                    "t0": t0, "t1": time.time(), "e": None}
        except (OSError, http.client.HTTPException) as error:
            self.close()
            return {"s": None, "b": "", "h": {}, "t0": t0, "t1": time.time(),
                    "e": f"{type(error).__name__}: {error}"}

    def close(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except OSError:
                pass
        self.conn = None


def problem_code(answer):
    try:
        return json.loads(answer["b"]).get("code")
    except (ValueError, AttributeError):
        return None


def classify(answer):
    """'decided', 'retry', 'violation_retry' (500) or 'violation'."""
    status = answer["s"]
    if status == 201:
        return "decided"
    if status == 422 and problem_code(answer) in DECLINES:
        return "decided"
    if status == 500:
        return "violation_retry"
    if status in NOT_DECISIONS:
        return "retry"
    return "violation"


def backoff_s(answer):
    """A pause before the next try: Retry-After (at most 1 s) if given, else 50-250 ms."""
    retry_after = None
    if answer:
        retry_after = answer["h"].get("retry-after") if "h" in answer else answer.get("ra")
    try:
        wait = min(float(retry_after), 1.0) if retry_after else 0.0
    except ValueError:
        wait = 0.0
    return max(wait * random.uniform(0.3, 1.0), random.uniform(0.05, 0.25))


# ---------------------------------------------------------------------------------------------
# State

def state_path(args, name):
    return os.path.join(args.state, name)


def load_json(args, name):
    with open(state_path(args, name)) as f:
        return json.load(f)


def save_json(args, name, value):
    tmp = state_path(args, name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.replace(tmp, state_path(args, name))


BOOK_LOCK = threading.Lock()


def record(req, answer, phase):
    """Appends what a request got, in the compact form the checks use."""
    entry = {"s": answer["s"], "b": answer["b"], "r": answer["h"].get("idempotent-replayed") == "true",
             "u": answer["h"].get("x-walletd-upstream"), "ra": answer["h"].get("retry-after"),
             "e": answer["e"], "t": answer["t0"], "ph": phase}
    with BOOK_LOCK:
        req["answers"].append(entry)
    return answer


def decided(req):
    return any(classify(a) == "decided" for a in req["answers"])


def send(client, req, api_key, phase):
    answer = client.call("POST", req["path"], api_key, req["body"], req["key"])
    return record(req, answer, phase)


def new_request(key, wallet, kind, amount, reference=None):
    body = {"amount": amount, "currency": "EUR", "reference": reference or key}
    return {"key": key, "wallet": wallet, "kind": kind, "amount": amount,
            "path": f"/v1/wallets/{wallet}/{kind}",
            "body": json.dumps(body, separators=(",", ":")), "answers": [], "double": False}


def drive_until_decided(client, req, api_key, phase, deadline):
    while time.time() < deadline:
        answer = send(client, req, api_key, phase)
        if classify(answer) == "decided":
            return True
        if classify(answer) == "violation":
            return False
        time.sleep(backoff_s(answer))
    return decided(req)


# ---------------------------------------------------------------------------------------------
# CLI

def cli(args, *words, timeout=60):
    out = subprocess.run([args.walletd, *words], capture_output=True, text=True, timeout=timeout,
                         stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise RuntimeError(f"walletd {' '.join(words)}: exit {out.returncode}: {out.stderr[-2000:]}")
    return out.stdout


def psql(args, sql):
    out = subprocess.run(["psql", args.database_url, "-X", "-q", "-At", "-F", "\t",
                          "-v", "ON_ERROR_STOP=1", "-c", sql],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"psql: {out.stderr}")
    return [line.split("\t") for line in out.stdout.splitlines() if line]


# ---------------------------------------------------------------------------------------------
# setup

def cmd_setup(args):
    load_tenant = json.loads(cli(args, "tenant", "create", "cluster-load"))
    keys = [load_tenant]
    for _ in range(args.workers - 1):
        keys.append(json.loads(cli(args, "key", "create", "--tenant", load_tenant["tenant_id"])))
    rate = json.loads(cli(args, "tenant", "create", "cluster-ratelimit"))
    revocation = [json.loads(cli(args, "tenant", "create", "cluster-revocation"))]
    revocation.append(json.loads(cli(args, "key", "create", "--tenant",
                                     revocation[0]["tenant_id"])))
    revocation.append(json.loads(cli(args, "key", "create", "--tenant",
                                     revocation[0]["tenant_id"])))

    client = Client(args.nginx)
    book = []
    wallets = []
    deadline = time.time() + 60
    for i in range(args.wallets):
        key = f"setup-wallet-{i}"
        body = json.dumps({"currency": "EUR", "owner_ref": f"cluster-{i}"})
        while True:
            answer = client.call("POST", "/v1/wallets", keys[0]["api_key"], body, key)
            if answer["s"] == 201:
                wallets.append(json.loads(answer["b"])["id"])
                break
            if answer["s"] not in NOT_DECISIONS or time.time() > deadline:
                raise RuntimeError(f"creating a wallet: {answer['s']} {answer['b'] or answer['e']}")
            time.sleep(backoff_s(answer))
    for i, wallet in enumerate(wallets):
        req = new_request(f"setup-fund-{i}", wallet, "credit", args.funding)
        if not drive_until_decided(client, req, keys[0]["api_key"], "setup", deadline):
            raise RuntimeError(f"funding wallet {wallet}: {req['answers'][-1]}")
        book.append(req)
    # The rate-limited tenant's one wallet (the target of its GETs).
    answer = client.call("POST", "/v1/wallets", rate["api_key"], '{"currency":"EUR"}', "rl-wallet")
    if answer["s"] != 201:
        raise RuntimeError(f"creating the rate-limit wallet: {answer['s']} {answer['b']}")
    rate["wallet"] = json.loads(answer["b"])["id"]
    save_json(args, "setup.json", {"tenant_id": load_tenant["tenant_id"], "keys": keys,
                                   "wallets": wallets, "rate": rate, "revocation": revocation})
    save_json(args, "book-setup.json", book)
    log(f"setup: {len(keys)} API keys, {len(wallets)} wallets funded with {args.funding} EUR")


# ---------------------------------------------------------------------------------------------
# load

def cmd_load(args):
    setup = load_json(args, "setup.json")
    keys = [k["api_key"] for k in setup["keys"]]
    wallets = setup["wallets"]
    run = uuid.uuid4().hex[:8]
    deadline = time.time() + args.duration
    books = [[] for _ in keys]
    counters = {"sent": 0}
    period_s = 1.0 / args.worker_rate

    def one(i):
        rnd = random.Random(f"{run}-{i}")
        client = Client(args.nginx)
        api_key = keys[i]
        next_at = time.time()
        n = 0

        def pace(sends=1):
            nonlocal next_at
            now = time.time()
            if next_at > now:
                time.sleep(next_at - now)
            next_at = max(next_at, now) + period_s * sends

        while time.time() < deadline:
            n += 1
            kind = "debit" if rnd.random() < 0.6 else "credit"
            amount = f"{rnd.randint(1, 500) / 100:.2f}"
            req = new_request(f"c-{run}-w{i}-{n}", rnd.choice(wallets), kind, amount)
            books[i].append(req)
            if rnd.random() < args.double_click:
                # A double-click: the same request twice at once, on two connections (nginx
                # spreads them over the replicas).
                req["double"] = True
                pace(2)
                barrier = threading.Barrier(2)

                def twin():
                    twin_client = Client(args.nginx)
                    barrier.wait(timeout=5)
                    send(twin_client, req, api_key, "load")
                    twin_client.close()

                twins = [threading.Thread(target=guarded(twin)) for _ in range(2)]
                for t in twins:
                    t.start()
                for t in twins:
                    t.join()
            else:
                pace()
                send(client, req, api_key, "load")
            tries = 0
            while not decided(req) and tries < 4 and time.time() < deadline:
                classes = {classify(a) for a in req["answers"]}
                if classes <= {"violation"}:
                    break
                time.sleep(backoff_s(req["answers"][-1]))
                pace()
                send(client, req, api_key, "load")
                tries += 1
            if decided(req) and rnd.random() < args.client_retry:
                # The client did not see (or did not trust) the answer and retries at once.
                pace()
                send(client, req, api_key, "load")
        client.close()

    started = time.time()
    try:
        run_threads(one, len(keys))
    finally:
        save_json(args, "book-load.json", [req for b in books for req in b])
    book = [req for b in books for req in b]
    save_json(args, "book-load.json", book)
    answers = [a for r in book for a in r["answers"]]
    faults = sum(1 for a in answers if a["s"] in (None, 502, 503, 504))
    result = {"requests": len(book), "answers": len(answers), "fault_answers": faults,
              "seconds": round(time.time() - started, 1),
              "statuses": count_statuses(answers)}
    save_json(args, "result-load.json", result)
    log(f"load: {len(book)} requests, {len(answers)} answers in {result['seconds']} s, "
        f"statuses {result['statuses']}")


def count_statuses(answers):
    out = {}
    for a in answers:
        label = str(a["s"]) if a["s"] is not None else "none"
        out[label] = out.get(label, 0) + 1
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------------------------
# settle

def wait_ready(args, bound_s=30):
    deadline = time.time() + bound_s
    pending = list(args.replicas)
    while pending and time.time() < deadline:
        still = []
        for base in pending:
            answer = Client(base, timeout=1).call("GET", "/readyz")
            try:
                ok = answer["s"] == 200 and json.loads(answer["b"])["status"] == "ready"
            except (ValueError, KeyError):
                ok = False
            if not ok:
                still.append(base)
        pending = still
        if pending:
            time.sleep(0.2)
    return not pending


def cmd_settle(args):
    setup = load_json(args, "setup.json")
    keys = [k["api_key"] for k in setup["keys"]]
    book = load_json(args, "book-load.json")
    ready = wait_ready(args)
    if not ready:
        log("settle: not every replica reported ready within 30 s")
    pending = [r for r in book if not decided(r)]
    deadline = time.time() + args.retry_pass_s
    queue = list(pending)
    queue_lock = threading.Lock()

    def retry_worker(i):
        client = Client(args.nginx)
        while True:
            with queue_lock:
                if not queue:
                    break
                req = queue.pop()
            # Another API key of the same tenant: idempotency keys are the tenant's.
            drive_until_decided(client, req, keys[(i + 1) % len(keys)], "settle", deadline)
            time.sleep(0.07)
        client.close()

    run_threads(retry_worker, 8)
    unresolved = [r["key"] for r in book if not decided(r)]

    # Replays: every key that met a fault, a double-click or a retry, and a random sample.
    eventful = [r for r in book if decided(r) and (r["double"] or len(r["answers"]) > 1)]
    others = [r for r in book if decided(r) and r not in eventful]
    sample = eventful + random.sample(others, min(len(others), args.replay_sample))
    queue = list(sample)

    def replay_worker(i):
        client = Client(args.nginx)
        while True:
            with queue_lock:
                if not queue:
                    break
                req = queue.pop()
            while time.time() < deadline + 30:
                answer = send(client, req, keys[(i + 3) % len(keys)], "replay")
                if classify(answer) != "retry":
                    break
                time.sleep(backoff_s(answer))
            time.sleep(0.07)
        client.close()

    run_threads(replay_worker, 8)

    # Key reuse: the same key with another amount is 422 idempotency_key_reused, nothing runs.
    reuse = []
    client = Client(args.nginx)
    for req in [r for r in others if any(a["s"] == 201 for a in r["answers"])][:5]:
        body = json.loads(req["body"])
        body["amount"] = f"{Decimal(body['amount']) + Decimal('0.01'):.2f}"
        answer = client.call("POST", req["path"], keys[0], json.dumps(body), req["key"])
        while answer["s"] == 429:
            time.sleep(backoff_s(answer))
            answer = client.call("POST", req["path"], keys[0], json.dumps(body), req["key"])
        reuse.append({"key": req["key"], "status": answer["s"], "code": problem_code(answer)})
    save_json(args, "book-load.json", book)
    reuse_ok = all(r["status"] == 422 and r["code"] == "idempotency_key_reused" for r in reuse)
    result = {"ready": ready, "retried": len(pending), "unresolved": len(unresolved),
              "unresolved_keys": unresolved[:20], "replays_sent": len(sample),
              "reuse": reuse, "reuse_ok": reuse_ok}
    save_json(args, "result-settle.json", result)
    log(f"settle: {len(pending)} keys retried, {len(unresolved)} unresolved, "
        f"{len(sample)} replays sent, key reuse {'ok' if reuse_ok else reuse}")


THREAD_ERRORS = []


def guarded(target):
    """A thread body whose exception is kept (and fails the phase) instead of lost."""
    def run(*a):
        try:
            target(*a)
        except Exception as error:  # noqa: BLE001 - any crash of a client thread is a failure
            with BOOK_LOCK:
                THREAD_ERRORS.append(f"{type(error).__name__}: {error}")
            raise
    return run


def run_threads(target, count):
    threads = [threading.Thread(target=guarded(target), args=(i,), daemon=True)
               for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if THREAD_ERRORS:
        raise RuntimeError(f"{len(THREAD_ERRORS)} client threads failed: {THREAD_ERRORS[0]}")


# ---------------------------------------------------------------------------------------------
# verify

def api_get(client, path, api_key, bound_s=20):
    deadline = time.time() + bound_s
    while True:
        answer = client.call("GET", path, api_key)
        if answer["s"] not in NOT_DECISIONS or time.time() > deadline:
            return answer
        time.sleep(backoff_s(answer))


def cmd_verify(args):
    setup = load_json(args, "setup.json")
    tenant = setup["tenant_id"]
    keys = [k["api_key"] for k in setup["keys"]]
    book = load_json(args, "book-setup.json") + load_json(args, "book-load.json")
    by_key = {r["key"]: r for r in book}
    problems = []

    def problem(kind, detail):
        problems.append({"kind": kind, "detail": detail})

    # What the clients saw.
    acknowledged, declined, unresolved = {}, set(), set()
    violations = 0
    for req in book:
        decisions = [a for a in req["answers"] if classify(a) == "decided"]
        for a in req["answers"]:
            if classify(a) in ("violation", "violation_retry"):
                violations += 1
                problem("violation", {"key": req["key"], "status": a["s"], "body": a["b"][:300]})
        if not decisions:
            unresolved.add(req["key"])
            continue
        first = decisions[0]
        for a in decisions[1:]:
            if (a["s"], a["b"]) != (first["s"], first["b"]):
                problem("answer_mismatch", {"key": req["key"], "first": first["b"][:300],
                                            "later": a["b"][:300]})
        executed = [a for a in decisions if not a["r"]]
        if len(executed) > 1:
            problem("executed_twice", {"key": req["key"], "answers": len(executed)})
        for a in req["answers"]:
            if a["ph"] == "replay" and classify(a) == "decided" and not a["r"]:
                problem("replay_not_marked", {"key": req["key"]})
        if first["s"] == 201:
            acknowledged[req["key"]] = json.loads(first["b"])
        else:
            declined.add(req["key"])

    # What the database holds.
    rows = psql(args, "SELECT wallet_id, seq, id, entry_type, amount, balance_before, "
                      "balance_after, idempotency_key FROM ledger_entries "
                      f"WHERE tenant_id = '{tenant}' ORDER BY wallet_id, seq")
    entries_by_key = {}
    entries_by_wallet = {}
    for wallet, seq, eid, kind, amount, before, after, key in rows:
        entry = {"wallet": wallet, "seq": int(seq), "id": eid, "kind": kind,
                 "amount": Decimal(amount), "before": Decimal(before), "after": Decimal(after),
                 "key": key}
        entries_by_key.setdefault(key, []).append(entry)
        entries_by_wallet.setdefault(wallet, []).append(entry)

    lost = duplicated = in_ledger = unattempted = 0
    for key, body in acknowledged.items():
        found = entries_by_key.get(key, [])
        if not found:
            lost += 1
            problem("lost", {"key": key, "id": body.get("id")})
            continue
        if len(found) > 1:
            duplicated += 1
            problem("duplicated", {"key": key, "entries": len(found)})
            continue
        in_ledger += 1
        entry, req = found[0], by_key[key]
        expected = (body["id"], req["wallet"], req["kind"], Decimal(req["amount"]),
                    Decimal(body["balance_before"]), Decimal(body["balance_after"]))
        got = (entry["id"], entry["wallet"], entry["kind"], entry["amount"], entry["before"],
               entry["after"])
        if expected != got:
            problem("entry_differs_from_answer", {"key": key, "answer": str(expected),
                                                  "entry": str(got)})
    for key, found in entries_by_key.items():
        req = by_key.get(key)
        if req is None:
            unattempted += len(found)
            problem("unattempted", {"key": key})
            continue
        if len(found) > 1 and key not in acknowledged:
            duplicated += 1
            problem("duplicated", {"key": key, "entries": len(found)})
        if key in declined:
            problem("declined_but_in_ledger", {"key": key})
        for entry in found:
            if (entry["wallet"], entry["kind"], entry["amount"]) != (
                    req["wallet"], req["kind"], Decimal(req["amount"])):
                problem("entry_not_as_sent", {"key": key})

    # Per-wallet invariants, from the database.
    wallet_rows = psql(args, "SELECT id, balance, held, overdraft_limit, last_seq FROM wallets "
                             f"WHERE tenant_id = '{tenant}'")
    wallets = {w[0]: {"balance": Decimal(w[1]), "held": Decimal(w[2]),
                      "overdraft": Decimal(w[3]), "last_seq": int(w[4])} for w in wallet_rows}
    for wallet_id in setup["wallets"]:
        w = wallets.get(wallet_id)
        if w is None:
            problem("wallet_missing", {"wallet": wallet_id})
            continue
        previous, total = Decimal(0), Decimal(0)
        entries = entries_by_wallet.get(wallet_id, [])
        for expected_seq, entry in enumerate(entries, start=1):
            sign = 1 if entry["kind"] == "credit" else -1
            if entry["seq"] != expected_seq:
                problem("seq_gap", {"wallet": wallet_id, "expected": expected_seq,
                                    "got": entry["seq"]})
            if entry["before"] != previous:
                problem("chain_broken", {"wallet": wallet_id, "seq": entry["seq"]})
            if entry["after"] != entry["before"] + sign * entry["amount"]:
                problem("arithmetic", {"wallet": wallet_id, "seq": entry["seq"]})
            previous = entry["after"]
            total += sign * entry["amount"]
        if w["balance"] != total or w["balance"] != previous or w["last_seq"] != len(entries):
            problem("balance_not_sum", {"wallet": wallet_id, "balance": str(w["balance"]),
                                        "sum": str(total), "entries": len(entries)})
        if w["balance"] < -w["overdraft"]:
            problem("below_floor", {"wallet": wallet_id})

    # The same through the API (nginx): the wallet, its whole ledger, and the audit endpoint.
    client = Client(args.nginx)
    audited = 0
    for n, wallet_id in enumerate(setup["wallets"]):
        api_key = keys[n % len(keys)]
        w = wallets.get(wallet_id, {})
        answer = api_get(client, f"/v1/wallets/{wallet_id}", api_key)
        if answer["s"] != 200 or Decimal(json.loads(answer["b"])["balance"]) != w.get("balance"):
            problem("api_balance", {"wallet": wallet_id, "status": answer["s"],
                                    "body": answer["b"][:300]})
        ids, cursor = [], None
        for _ in range(100):
            path = f"/v1/wallets/{wallet_id}/ledger?limit=1000"
            if cursor:
                path += f"&after={cursor}"
            answer = api_get(client, path, api_key)
            if answer["s"] != 200:
                problem("api_ledger", {"wallet": wallet_id, "status": answer["s"]})
                break
            page = json.loads(answer["b"])
            ids.extend(e["id"] for e in page["entries"])
            cursor = page["next_cursor"]
            if not cursor:
                break
        if ids != [e["id"] for e in entries_by_wallet.get(wallet_id, [])]:
            problem("api_ledger_differs", {"wallet": wallet_id, "api": len(ids)})
        answer = api_get(client, f"/v1/wallets/{wallet_id}/audit", api_key)
        if answer["s"] == 200:
            audit = json.loads(answer["b"])
            if not (audit["chain_ok"] and audit["entries"] == len(ids)
                    and Decimal(audit["balance"]) == Decimal(audit["ledger_sum"])
                    == w.get("balance")):
                problem("audit", {"wallet": wallet_id, "audit": audit})
            else:
                audited += 1
        else:
            problem("audit_status", {"wallet": wallet_id, "status": answer["s"]})
    # A sample of acknowledged transactions read back by id.
    for n, (key, body) in enumerate(list(acknowledged.items())[:20]):
        answer = api_get(client, f"/v1/transactions/{body['id']}", keys[n % len(keys)])
        if answer["s"] != 200 or json.loads(answer["b"]) != body:
            problem("transaction_read_back", {"key": key, "status": answer["s"]})
    # The CLI's own audit of the tenant.
    audit_cli = subprocess.run([args.walletd, "audit", "--tenant", tenant], capture_output=True,
                               text=True, timeout=60, stdin=subprocess.DEVNULL)
    if audit_cli.returncode != 0:
        problem("audit_cli", {"exit": audit_cli.returncode, "out": audit_cli.stdout[-500:]})

    invariant_kinds = {"seq_gap", "chain_broken", "arithmetic", "balance_not_sum", "below_floor",
                       "wallet_missing"}
    result = {
        "requests": len(book), "acknowledged": len(acknowledged), "declined": len(declined),
        "unresolved": len(unresolved), "in_ledger": in_ledger, "lost": lost,
        "duplicated": duplicated, "unattempted": unattempted, "violations": violations,
        "entries": len(rows), "wallets": len(setup["wallets"]), "audited": audited,
        "double_clicks": sum(1 for r in book if r["double"]),
        "replays": sum(1 for r in book for a in r["answers"] if a["r"]),
        "invariants": not any(p["kind"] in invariant_kinds for p in problems),
        "audit_cli": audit_cli.returncode == 0,
        "problems": problems[:50], "problem_count": len(problems),
        "ok": not problems and not unresolved,
    }
    save_json(args, "result-verify.json", result)
    for p in problems[:20]:
        log(f"verify: {p['kind']}: {json.dumps(p['detail'])[:400]}")
    log(f"verify: {len(rows)} entries, acknowledged={len(acknowledged)} in_ledger={in_ledger} "
        f"lost={lost} duplicated={duplicated} unattempted={unattempted} "
        f"unresolved={len(unresolved)} problems={len(problems)}")
    return 0 if result["ok"] else 1


# ---------------------------------------------------------------------------------------------
# rate limit

def cmd_ratelimit(args):
    setup = load_json(args, "setup.json")
    rate = setup["rate"]
    limit = args.limit
    # Start just after a second boundary: the limiter's windows are wall-clock seconds.
    time.sleep(1.02 - (time.time() % 1.0))
    start = time.time()
    deadline = start + args.seconds
    samples = []
    lock = threading.Lock()

    def hammer(i):
        client = Client(args.nginx)
        mine = []
        while time.time() < deadline:
            a = client.call("GET", f"/v1/wallets/{rate['wallet']}", rate["api_key"])
            mine.append({"t0": a["t0"], "t1": a["t1"], "s": a["s"],
                         "u": a["h"].get("x-walletd-upstream"),
                         "ra": a["h"].get("retry-after"), "code": problem_code(a)
                         if a["s"] == 429 else None})
        client.close()
        with lock:
            samples.extend(mine)

    run_threads(hammer, args.threads)
    accepted = [s for s in samples if s["s"] == 200]
    limited = [s for s in samples if s["s"] == 429]
    others = [s for s in samples if s["s"] not in (200, 429)]
    windows = int(max(s["t1"] for s in samples)) - int(min(s["t0"] for s in samples)) + 1
    bound = limit * windows
    upstreams = sorted({s["u"] for s in samples if s["u"]})
    per_replica = {u: {"sent": sum(1 for s in samples if s["u"] == u),
                       "accepted": sum(1 for s in accepted if s["u"] == u)} for u in upstreams}
    # What a limiter kept per replica would have let through: up to `limit` per replica per
    # second (client send second as the window). The test only proves something if that
    # exceeds the bound.
    per_second_replica = {}
    for s in samples:
        if s["u"]:
            k = (s["u"], int(s["t0"]))
            per_second_replica[k] = per_second_replica.get(k, 0) + 1
    per_replica_would_allow = sum(min(n, limit) for n in per_second_replica.values())
    bad_429 = [s for s in limited if not s["ra"] or s["code"] != "rate_limited"]
    replicas_accepting = sum(1 for v in per_replica.values() if v["accepted"] > 0)
    ok = (not others and not bad_429 and limit <= len(accepted) <= bound
          and per_replica_would_allow > bound and replicas_accepting >= 2)
    result = {"limit": limit, "windows": windows, "bound": bound, "sent": len(samples),
              "accepted": len(accepted), "limited": len(limited), "other": len(others),
              "other_statuses": sorted({str(s["s"]) for s in others}),
              "per_replica": per_replica, "per_replica_would_allow": per_replica_would_allow,
              "bad_429": len(bad_429), "ok": ok}
    save_json(args, "result-ratelimit.json", result)
    log(f"rate limit: {len(samples)} GETs on one key in {args.seconds} s through nginx, "
        f"accepted {len(accepted)} (bound {limit}/s x {windows} windows = {bound}; "
        f"a per-replica limiter would have let {per_replica_would_allow} through), "
        f"per replica {per_replica}: {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


# ---------------------------------------------------------------------------------------------
# revocation

def cmd_revoke(args):
    setup = load_json(args, "setup.json")
    key = setup["revocation"][args.which]
    targets = list(args.replicas) + [args.nginx]
    path = f"/v1/wallets/{uuid.uuid4()}"  # 404 wallet_not_found while the key is good
    # Warm: every replica verifies the key now, so each has it in its in-process cache.
    for base in targets:
        client = Client(base, timeout=2)
        deadline = time.time() + 10
        while True:
            answer = client.call("GET", path, key["api_key"])
            if answer["s"] == 404:
                break
            if time.time() > deadline:
                raise RuntimeError(f"warming {base}: {answer['s']} {answer['b'] or answer['e']}")
            time.sleep(0.05)
    t_start = time.time()
    cli(args, "key", "revoke", key["key_id"])
    t_revoked = time.time()
    results = {}

    def poll(base):
        client = Client(base, timeout=2)
        first = None
        flaps = 0
        statuses = {}
        end = t_revoked + args.bound_ms / 1000 + 3
        while time.time() < end:
            answer = client.call("GET", path, key["api_key"])
            statuses[str(answer["s"])] = statuses.get(str(answer["s"]), 0) + 1
            if answer["s"] == 401:
                if first is None:
                    first = answer["t0"]
                    end = min(end, time.time() + 1.5)  # keep asking: it must stay refused
            elif first is not None and answer["s"] is not None:
                flaps += 1
            time.sleep(0.01)
        client.close()
        results[base] = {"ms": None if first is None else round((first - t_revoked) * 1000),
                         "flaps": flaps, "statuses": statuses}

    threads = [threading.Thread(target=guarded(poll), args=(b,)) for b in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Bound: auth.cache_ttl_ms after the CLI returned, plus the measurement's own slack (the
    # poll interval and the round trip of the request that sees the refusal).
    limit_ms = args.bound_ms + args.slack_ms
    ok = all(r["ms"] is not None and r["ms"] <= limit_ms and r["flaps"] == 0
             for r in results.values())
    worst = max((r["ms"] if r["ms"] is not None else 10**9) for r in results.values())
    result = {"label": args.label, "cli_ms": round((t_revoked - t_start) * 1000),
              "max_ms": worst, "limit_ms": limit_ms, "targets": results, "ok": ok}
    save_json(args, f"result-revoke-{args.label}.json", result)
    log(f"revocation ({args.label}): CLI took {result['cli_ms']} ms; refused after "
        + ", ".join(f"{b.split('//')[1]}={r['ms']} ms" for b, r in results.items())
        + f" (bound {limit_ms} ms): {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


# ---------------------------------------------------------------------------------------------
# metrics

# What an operator looks at after such a run: decisions by outcome, the Redis nodes as each
# replica sees them, quorum failures and database-only fallbacks, retries, replays, rate limits.
METRIC_FAMILIES = ("walletd_decisions_total", "walletd_redis_node_up", "walletd_redis_quorum",
                   "walletd_redlock_quorum_failures_total", "walletd_lock_database_only_total",
                   "walletd_transaction_retries_total", "walletd_idempotent_replays_total",
                   "walletd_rate_limited_total", "walletd_admission_unchecked_total")
GAUGE_FAMILIES = ("walletd_redis_node_up", "walletd_redis_quorum")


def cmd_metrics(args):
    """Scrapes every replica's /metrics and prints the families above: counters summed over
    replicas (a restarted replica counts from its restart; series still at 0 are left out),
    gauges as each replica reports them."""
    counters, gauges = {}, {}
    for base in args.replicas:
        url = urlsplit(base)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        try:
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
        except OSError as error:
            log(f"metrics: {base}: {error}")
            return 1
        finally:
            conn.close()
        for line in text.splitlines():
            if line.startswith("#") or not line.startswith(METRIC_FAMILIES):
                continue
            series, _, value = line.rpartition(" ")
            family = series.split("{")[0]
            if family not in METRIC_FAMILIES:
                continue
            if family in GAUGE_FAMILIES:
                gauges.setdefault(series, []).append(f"{float(value):g}")
            else:
                counters[series] = counters.get(series, 0.0) + float(value)
    log(f"metrics after the run: counters summed over {len(args.replicas)} replicas, "
        "gauges per replica")
    for series in sorted(s for s, total in counters.items() if total):
        log(f"  {series} {counters[series]:g}")
    for series in sorted(gauges):
        log(f"  {series} {'/'.join(gauges[series])}")
    return 0


# ---------------------------------------------------------------------------------------------
# summary

def cmd_summary(args):
    def get(name):
        try:
            return load_json(args, name)
        except (OSError, ValueError):
            return None

    load, settle, verify = get("result-load.json"), get("result-settle.json"), get("result-verify.json")
    rate = get("result-ratelimit.json")
    revokes = [get(f"result-revoke-{label}.json") for label in args.revocations]
    failures = []
    v = verify or {}
    if not verify or not verify["ok"]:
        failures.append("ledger")
    if not settle or not settle["reuse_ok"]:
        failures.append("key_reuse")
    if not rate or not rate["ok"]:
        failures.append("rate_limit")
    if any(not r or not r["ok"] for r in revokes):
        failures.append("revocation")
    if args.replica_kills < 1 or args.redis_stops < 1:
        failures.append("faults")
    if args.victim_served < 1:
        failures.append("restarted_replica_unused")
    if args.inflight_killed < 1:
        failures.append("kill_missed_in_flight_requests")
    fields = [
        f"requests={v.get('requests', '?')}",
        f"acknowledged={v.get('acknowledged', '?')}",
        f"declined={v.get('declined', '?')}",
        f"in_ledger={v.get('in_ledger', '?')}",
        f"lost={v.get('lost', '?')}",
        f"duplicated={v.get('duplicated', '?')}",
        f"unattempted={v.get('unattempted', '?')}",
        f"unresolved={v.get('unresolved', '?')}",
        f"violations={v.get('violations', '?')}",
        f"double_clicks={v.get('double_clicks', '?')}",
        f"replays={v.get('replays', '?')}",
        f"fault_answers={(load or {}).get('fault_answers', '?')}",
        f"invariants={'ok' if v.get('invariants') else 'FAILED'}",
        f"audit={'ok' if v.get('audit_cli') and v.get('audited') == v.get('wallets') else 'FAILED'}",
        f"replica_kills={args.replica_kills}",
        f"killed_in_flight={args.inflight_killed}",
        f"restarted_replica_served={args.victim_served}",
        f"nginx_next_upstream={args.next_upstream}",
        f"redis_stops={args.redis_stops}",
        "rate_limit=" + ("ok" if rate and rate["ok"] else "FAILED")
        + (f"(accepted={rate['accepted']}/{rate['sent']},bound={rate['bound']})" if rate else ""),
        "revocation=" + ("ok" if all(r and r["ok"] for r in revokes) else "FAILED")
        + "(" + ",".join(f"{r['label']}={r['max_ms']}ms" for r in revokes if r) + ")",
        f"seconds={args.seconds}",
    ]
    print("cluster: " + " ".join(fields), flush=True)
    if failures:
        log(f"FAILED: {', '.join(failures)}")
        return 1
    return 0


# ---------------------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--state", required=True, help="directory shared by the phases")
    parser.add_argument("--nginx", default=os.environ.get("CLUSTER_NGINX_URL"))
    parser.add_argument("--replicas", nargs="*",
                        default=os.environ.get("CLUSTER_REPLICA_URLS", "").split())
    parser.add_argument("--walletd", default=os.environ.get("WALLETD_BIN"))
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    sub = parser.add_subparsers(dest="phase", required=True)
    p = sub.add_parser("setup")
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--wallets", type=int, default=8)
    p.add_argument("--funding", default="40.00")
    p = sub.add_parser("load")
    p.add_argument("--duration", type=float, default=24)
    p.add_argument("--worker-rate", type=float, default=12, help="sends per second per worker")
    p.add_argument("--double-click", type=float, default=0.08)
    p.add_argument("--client-retry", type=float, default=0.08)
    p = sub.add_parser("settle")
    p.add_argument("--retry-pass-s", type=float, default=60)
    p.add_argument("--replay-sample", type=int, default=200)
    sub.add_parser("verify")
    p = sub.add_parser("ratelimit")
    p.add_argument("--limit", type=int, required=True)
    p.add_argument("--seconds", type=float, default=1.9)
    p.add_argument("--threads", type=int, default=24)
    p = sub.add_parser("revoke")
    p.add_argument("--which", type=int, required=True, help="index of the revocation key")
    p.add_argument("--label", required=True)
    p.add_argument("--bound-ms", type=int, default=1000)
    p.add_argument("--slack-ms", type=int, default=150)
    sub.add_parser("metrics")
    p = sub.add_parser("summary")
    p.add_argument("--replica-kills", type=int, default=0)
    p.add_argument("--redis-stops", type=int, default=0)
    p.add_argument("--seconds", type=int, default=0)
    p.add_argument("--revocations", nargs="*", default=[])
    p.add_argument("--victim-served", type=int, default=0,
                   help="requests the killed replica answered after its restart")
    p.add_argument("--inflight-killed", type=int, default=0,
                   help="requests in flight on the replica when it was killed")
    p.add_argument("--next-upstream", type=int, default=0,
                   help="requests nginx moved to another replica")
    args = parser.parse_args()
    handler = {"setup": cmd_setup, "load": cmd_load, "settle": cmd_settle, "verify": cmd_verify,
               "ratelimit": cmd_ratelimit, "revoke": cmd_revoke, "metrics": cmd_metrics,
               "summary": cmd_summary}[args.phase]
    return handler(args) or 0


if __name__ == "__main__":
    sys.exit(main())
