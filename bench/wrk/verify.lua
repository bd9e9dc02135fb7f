-- A forward-auth check as nginx's auth_request sends it: the original method
-- and URI ($ORIGINAL_METHOD, $ORIGINAL_URI; default GET /environment) and the
-- client's bearer token from $TOKEN. Used against other paths too, so that
-- every compared run sends the same bytes but for the path.
dofile(os.getenv("BENCH_DIR") .. "/wrk/common.lua")
wrk.headers["X-Original-Method"] = os.getenv("ORIGINAL_METHOD") or "GET"
wrk.headers["X-Original-URI"] = os.getenv("ORIGINAL_URI") or "/environment"
local t = os.getenv("TOKEN")
if t and #t > 0 then wrk.headers["Authorization"] = "Bearer " .. t end
