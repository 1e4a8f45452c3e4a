-- wrk script: signed conversion postbacks, each sent once (a signature may not be replayed).
-- POSTBACKS_FILE holds one "<body>\t<signature>" per line; MERCHANT_ID names the merchant;
-- POSTBACKS_START (default 0) skips the lines earlier runs sent.
local bodies, signatures = {}, {}
local i = tonumber(os.getenv("POSTBACKS_START") or "0")
local merchant = os.getenv("MERCHANT_ID")

function init(args)
  for line in io.lines(os.getenv("POSTBACKS_FILE")) do
    local body, signature = line:match("^(.-)\t(.*)$")
    bodies[#bodies + 1] = body
    signatures[#signatures + 1] = signature
  end
end

function request()
  i = i + 1
  if i > #bodies then i = 1 end  -- only when the file is too short: replays are then refused
  return wrk.format("POST", "/v1/conversions", {
    ["Content-Type"] = "application/json",
    ["X-Referral-Merchant"] = merchant,
    ["X-Referral-Signature"] = signatures[i],
  }, bodies[i])
end

dofile(os.getenv("LOADTESTS_DIR") .. "/common.lua")
