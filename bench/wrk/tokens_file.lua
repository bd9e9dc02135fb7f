-- GET with a different token on every request, from $TOKENS_FILE; each wrk
-- thread takes every n-th line so no token is sent twice (until the file
-- runs out, which the bench sizes against).
dofile(os.getenv("BENCH_DIR") .. "/wrk/common.lua")
local threads = {}
local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end
function init(args)
  tokens = {}
  local n = 0
  local nthreads = tonumber(os.getenv("WRK_THREADS") or "1")
  for line in io.lines(os.getenv("TOKENS_FILE")) do
    if n % nthreads == id then table.insert(tokens, line) end
    n = n + 1
  end
  i = 0
end
function request()
  i = i + 1
  local t = tokens[((i - 1) % #tokens) + 1]
  return wrk.format(nil, nil, { ["Authorization"] = "Bearer " .. t })
end
