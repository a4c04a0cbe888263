-- wrk script for scripts/bench: every write carries DEPTH requests for the
-- URL's path (wrk ... -s scripts/pipeline.lua URL -- DEPTH, default 16).
-- wrk counts each response as a request but takes one latency sample per
-- write, i.e. per batch of DEPTH.
local batch

function init(args)
  local depth = tonumber(args[1]) or 16
  local reqs = {}
  for i = 1, depth do
    reqs[i] = wrk.format("GET")
  end
  batch = table.concat(reqs)
end

function request()
  return batch
end
