-- wrk script for the feature-serving benchmark (see WORKLOADS.md).
--
-- Copied unchanged (apart from this note) from the project's shared benchmark kit
-- (../shared/bench/get_online_features.lua), which defines the workloads and the request format
-- every figure of docs/benchmarks.md is quoted on; keep the two in step. Here the entity pool is
-- the ids.txt that `python -m serving.sample` writes.
--
-- usage: wrk -t T -c C -d 15s --latency --timeout 10s -s get_online_features.lua \
--            http://127.0.0.1:6566 -- <w1|w2> <entities.txt> [path] [feature_view]
--
--   w1: 1 random entity,                features f000..f099 (100 features)
--   w2: 100 random distinct entities,   features f000..f199 (200 features)
--
-- entities.txt is the pre-generated entity-id pool (one id per line, written by
-- datagen.py); every request draws its ids at random from it. Each wrk thread has
-- its own Lua state and a fixed seed derived from its thread number, so runs are
-- reproducible for a given thread count.
--
-- The body is the JSON that Feast's feature server expects on POST /get-online-features:
--   {"features":["user_profile:f000",...],"entities":{"user_id":[...]}}
--
-- At the end one machine-readable line is printed:
--   WRKJSON {"requests":...,"rps":...,"p50_ms":...,"p90_ms":...,"p99_ms":...,...}

local thread_counter = 0

function setup(thread)
  thread_counter = thread_counter + 1
  thread:set("tid", thread_counter)
end

local pool = {}
local npool = 0
local batch = 1
local prefix = ""
local suffix = "]}}"
local path = "/get-online-features"
local headers = { ["Content-Type"] = "application/json" }
-- optional API key: FS_API_KEY=... wrk ... sends "Authorization: Bearer <key>"
local api_key = os.getenv("FS_API_KEY")
if api_key and api_key ~= "" then headers["Authorization"] = "Bearer " .. api_key end
local seen = {}
local gen = 0
local ids = {}

function init(args)
  local workload = args[1] or "w1"
  local entities_file = args[2] or "entities.txt"
  path = args[3] or path
  local fv = args[4] or "user_profile"

  local f = assert(io.open(entities_file, "r"), "cannot open " .. entities_file)
  for line in f:lines() do
    if line ~= "" then
      npool = npool + 1
      pool[npool] = line
    end
  end
  f:close()
  assert(npool > 0, "empty entity pool")

  local nfeat
  if workload == "w1" then
    nfeat, batch = 100, 1
  elseif workload == "w2" then
    nfeat, batch = 200, 100
  else
    error("unknown workload " .. tostring(workload))
  end
  assert(npool >= batch, "entity pool smaller than batch")

  local feats = {}
  for i = 0, nfeat - 1 do
    feats[#feats + 1] = string.format('"%s:f%03d"', fv, i)
  end
  prefix = '{"features":[' .. table.concat(feats, ",") .. '],"entities":{"user_id":['
  -- FS_FEATURE_SERVICE=bench_{workload}: ask for a feature service of the same features
  -- instead (loadtest/bench_feature_log.sh: served-feature logging logs services only)
  local service = os.getenv("FS_FEATURE_SERVICE")
  if service and service ~= "" then
    service = string.gsub(service, "{workload}", workload)
    prefix = '{"feature_service":"' .. service .. '","entities":{"user_id":['
  end
  math.randomseed(1000003 * (tid or 1) + 17)
  -- discard the first few numbers (weak seeding on some Lua builds)
  for _ = 1, 10 do math.random() end
end

function request()
  local body
  if batch == 1 then
    body = prefix .. pool[math.random(npool)] .. suffix
  else
    gen = gen + 1
    local n = 0
    while n < batch do
      local k = math.random(npool)
      if seen[k] ~= gen then
        seen[k] = gen
        n = n + 1
        ids[n] = pool[k]
      end
    end
    body = prefix .. table.concat(ids, ",", 1, batch) .. suffix
  end
  return wrk.format("POST", path, headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  local dur_s = summary.duration / 1e6
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_s":%.3f,"rps":%.2f,"mean_ms":%.3f,"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f,"bytes":%d,"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d}\n',
    summary.requests, dur_s, summary.requests / dur_s, latency.mean / 1000.0,
    latency:percentile(50) / 1000.0, latency:percentile(90) / 1000.0,
    latency:percentile(99) / 1000.0, latency.max / 1000.0, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout))
end
