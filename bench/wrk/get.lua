-- GET with an optional bearer token from $TOKEN.
dofile(os.getenv("BENCH_DIR") .. "/wrk/common.lua")
local t = os.getenv("TOKEN")
if t and #t > 0 then wrk.headers["Authorization"] = "Bearer " .. t end
