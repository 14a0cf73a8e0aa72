-- wrk script for scripts/bench.sh: POST /v1/wallets/{id}/debit, {"amount":"0.01","currency":"EUR"}.
--
--   wrk -t2 -c16 -d10s -s scripts/bench/debit.lua http://127.0.0.1:18080 -- \
--       <api_key> <wallets_file> <mode> <run_nonce>
--
-- wallets_file: one wallet id per line. mode:
--   uniform  every request a wallet picked at random from the file, a fresh Idempotency-Key
--   hot      every request the file's first wallet, a fresh Idempotency-Key
--   replay   every request the first wallet and the same key, "<run_nonce>" (send it once before
--            the run, so that every request here is answered from the stored result)
-- A fresh key is "<run_nonce>-<thread>-<counter>": unique across threads, and across runs as
-- long as the caller passes a new nonce each run.
-- done() prints one line: "wrk: requests= duration_s= ok= rps= non2xx= replays= p50_ms=
-- p90_ms= p99_ms= max_ms=" (non2xx: "status:count,..." plus wrk's socket errors as conn:,
-- read:, write:, timeout:; "-" when none; ok and rps count 2xx only).

local threads = {}
local next_id = 1

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

local key, mode, nonce, wallets, counter, body, fixed
-- per thread, read by done() through thread:get (which copies numbers and strings, not tables):
-- replays; codes, the statuses seen ("201,409,"); s<status>, the count of each
local status_key = {}

function init(args)
  key, mode, nonce = args[1], args[3], args[4]
  assert(key and args[2] and mode and nonce, "args: <api_key> <wallets_file> <mode> <run_nonce>")
  wallets = {}
  for line in io.lines(args[2]) do
    if line ~= "" then table.insert(wallets, line) end
  end
  assert(#wallets > 0, "no wallets in " .. args[2])
  math.randomseed(os.time() * 1000 + id)
  counter, replays, codes = 0, 0, ""
  body = '{"amount":"0.01","currency":"EUR"}'
  if mode ~= "uniform" then
    fixed = "/v1/wallets/" .. wallets[1] .. "/debit"
  end
  assert(mode == "uniform" or mode == "hot" or mode == "replay", "mode: uniform|hot|replay")
end

function request()
  local path = fixed or ("/v1/wallets/" .. wallets[math.random(#wallets)] .. "/debit")
  local idem = nonce
  if mode ~= "replay" then
    counter = counter + 1
    idem = nonce .. "-" .. id .. "-" .. counter
  end
  return wrk.format("POST", path, {
    ["Authorization"] = "Bearer " .. key,
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = idem,
  }, body)
end

function response(status, headers, _)
  local k = status_key[status]
  if not k then
    k = "s" .. status
    status_key[status], _G[k], codes = k, 0, codes .. status .. ","
  end
  _G[k] = _G[k] + 1
  if headers["idempotent-replayed"] == "true" or headers["Idempotent-Replayed"] == "true" then
    replays = replays + 1
  end
end

function done(summary, latency, _)
  local all, total_replays = {}, 0
  for _, thread in ipairs(threads) do
    for status in string.gmatch(thread:get("codes"), "(%d+),") do
      status = tonumber(status)
      all[status] = (all[status] or 0) + thread:get("s" .. status)
    end
    total_replays = total_replays + thread:get("replays")
  end
  local ok, codes = 0, {}
  for status, n in pairs(all) do
    if status >= 200 and status < 300 then ok = ok + n else table.insert(codes, status) end
  end
  table.sort(codes)
  local bad = {}
  for _, status in ipairs(codes) do table.insert(bad, status .. ":" .. all[status]) end
  for _, e in ipairs({"connect", "read", "write", "timeout"}) do
    local n = summary.errors[e]
    if n > 0 then table.insert(bad, (e == "connect" and "conn" or e) .. ":" .. n) end
  end
  local seconds = summary.duration / 1e6
  io.write(string.format(
    "wrk: requests=%d duration_s=%.3f ok=%d rps=%.1f non2xx=%s replays=%d p50_ms=%.2f p90_ms=%.2f p99_ms=%.2f max_ms=%.2f\n",
    summary.requests, seconds, ok, ok / seconds, #bad > 0 and table.concat(bad, ",") or "-",
    total_replays, latency:percentile(50) / 1e3, latency:percentile(90) / 1e3,
    latency:percentile(99) / 1e3, latency.max / 1e3))
end
