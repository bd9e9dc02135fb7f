-- GET with an optional bearer token from $TOKEN, and the header the
-- sidecar's /api/* requires (the upstream ignores it).
dofile(os.getenv("BENCH_DIR") .. "/wrk/common.lua")
wrk.headers["X-Authproxy-Request"] = "1"
local t = os.getenv("TOKEN")
if t and #t > 0 then wrk.headers["Authorization"] = "Bearer " .. t end
