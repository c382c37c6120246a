-- benches/load/zipf.lua -- wrk request generator for benches/load/disk.sh (issue 20).
--
-- Objects are /<prefix>/<id>/<k>.bin, id = 1..N. The size class k of an id is fixed by a
-- multiplicative hash, k = floor(((id * 2654435761) mod 2^32) * 321 / 2^32), and the
-- origin serves 1024 * 2^(k/32) bytes (rounded) for it: sizes log-uniform from 1 KiB to
-- 1 MiB, the same for an id in every run and every server. disk.sh computes the same k
-- in awk (all products stay below 2^53, so doubles are exact in both).
--
-- Env:
--   ZIPF_N=10000     distinct objects
--   ZIPF_MODE=zipf   zipf: rank r (= id r) with probability ~ 1/r^ZIPF_S;
--                    seq:  ids 1..N once each, then the thread stops and touches
--                          ZIPF_DONE.<thread index> (if set): fill passes
--   ZIPF_S=0.9       Zipf exponent
--   ZIPF_PREFIX=/z/  path prefix; ZIPF_K=NAME forces the file name (e.g. "small")
--   ZIPF_FIRST=1     first id of a seq pass; ZIPF_STRIDE=1 step between ids of a seq pass
--   ZIPF_AGAIN=0     seq: also request every id a second time, ZIPF_AGAIN new ids later
--                    (an object a cache saw twice, without the two requests coalescing)
--   ZIPF_THREADS=1   wrk's -t, so that seq passes split the ids between threads
--   ZIPF_SEED=1      xorshift32 seed (each thread adds its index)
--   ZIPF_LOG=FILE    append "<decisecond since epoch> <count>" lines: responses with status
--                    200 per 100 ms (costs wrk a copy of each body, as wrk hands bodies to
--                    Lua once a script has a response() function; used for restarts only)
--   HIT_HEADER=NAME  with ZIPF_LOG: also count responses whose header NAME matches
--   HIT_MATCH=hit    this Lua pattern (lower-cased), as a third column
-- Memory: one CDF table of N doubles per thread; nothing grows with the requests sent.
local bit = require("bit")
local ffi = require("ffi")

local N = tonumber(os.getenv("ZIPF_N") or "10000")
local S = tonumber(os.getenv("ZIPF_S") or "0.9")
local MODE = os.getenv("ZIPF_MODE") or "zipf"
local PREFIX = os.getenv("ZIPF_PREFIX") or "/z/"
local FORCE_K = os.getenv("ZIPF_K")
local FIRST = tonumber(os.getenv("ZIPF_FIRST") or "1")
local STRIDE = tonumber(os.getenv("ZIPF_STRIDE") or "1")
local SEED = tonumber(os.getenv("ZIPF_SEED") or "1")
local AGAIN = tonumber(os.getenv("ZIPF_AGAIN") or "0")
local LOG = os.getenv("ZIPF_LOG")
local DONE = os.getenv("ZIPF_DONE")
local done_marked = false
local HIT_HEADER = os.getenv("HIT_HEADER")
local HIT_MATCH = os.getenv("HIT_MATCH") or "hit"

local function class_of(id)
  local h = (id * 2654435761) % 4294967296
  return math.floor(h * 321 / 4294967296)
end

local function path_of(id)
  return PREFIX .. id .. "/" .. (FORCE_K or class_of(id)) .. ".bin"
end

-- Shared by every thread's Lua state: setup() runs in the main state, the rest per thread.
local threads = {}
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

local cdf, rng_state, seq_next, seq_first, seq_new, seq_old
sent = 0 -- global: read by done() through thread:get
local NTHREADS = tonumber(os.getenv("ZIPF_THREADS") or "1")
local log_file, bucket, bucket_n, bucket_hits
local ts

ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } zipf_timespec;
  int clock_gettime(int clk_id, zipf_timespec *tp);
]]

local function now()
  ffi.C.clock_gettime(0, ts)
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

function init(args)
  local tid = tid or 0
  ts = ffi.new("zipf_timespec")
  rng_state = bit.tobit(SEED * 2654435761 + tid * 40503 + 1)
  if rng_state == 0 then rng_state = 1 end
  sent = 0
  seq_next = FIRST + tid * STRIDE
  seq_first, seq_new, seq_old = seq_next, 0, 0
  if MODE == "zipf" then
    cdf = {}
    local sum = 0
    for r = 1, N do
      sum = sum + r ^ -S
      cdf[r] = sum
    end
    for r = 1, N do cdf[r] = cdf[r] / sum end
    cdf[N] = 1
  end
  if LOG then
    log_file = assert(io.open(LOG .. "." .. tid, "a"))
    bucket, bucket_n, bucket_hits = 0, 0, 0
  end
end

local function uniform()
  local x = rng_state
  x = bit.bxor(x, bit.lshift(x, 13))
  x = bit.bxor(x, bit.rshift(x, 17))
  x = bit.bxor(x, bit.lshift(x, 5))
  rng_state = x
  if x < 0 then x = x + 4294967296 end
  return x / 4294967296
end

local function zipf_id()
  local u = uniform()
  local lo, hi = 1, N
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return lo
end

request = function()
  local id
  if MODE == "seq" then
    local step = NTHREADS * STRIDE
    local fresh = seq_first + seq_new * step
    if AGAIN > 0 and seq_old < seq_new and (seq_new - seq_old >= AGAIN or fresh > N) then
      id = seq_first + seq_old * step
      seq_old = seq_old + 1
    else
      id = fresh
      seq_new = seq_new + 1
    end
    if id > N then
      -- wrk's main thread sleeps out -d whatever the threads do: tell disk.sh, which
      -- then stops wrk with SIGINT (wrk still prints its summary and calls done()).
      if DONE and not done_marked then
        local f = io.open(DONE .. "." .. (tid or 0), "w")
        if f then f:close() end
        done_marked = true
      end
      wrk.thread:stop()
      return wrk.format("GET", path_of(N))
    end
  else
    id = zipf_id()
  end
  sent = sent + 1
  return wrk.format("GET", path_of(id))
end

if LOG then
  response = function(status, headers, body)
    if status ~= 200 then return end
    local b = math.floor(now() * 10)
    if b ~= bucket then
      if bucket_n > 0 then
        log_file:write(bucket, " ", bucket_n, " ", bucket_hits, "\n")
        log_file:flush()
      end
      bucket, bucket_n, bucket_hits = b, 0, 0
    end
    bucket_n = bucket_n + 1
    if HIT_HEADER then
      local v = headers[HIT_HEADER]
      if v and string.find(string.lower(v), HIT_MATCH) then bucket_hits = bucket_hits + 1 end
    end
  end
end

function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do total = total + (t:get("sent") or 0) end
  io.write(string.format("LUA mode=%s n=%d requests_sent=%d\n", MODE, N, total))
end
