-- numbers.lua is prepended to the scripts that add to what the meter
-- keeps. It is allot's number rule (pkg/events numbers.go) in Lua: a kept
-- number is at most 1e15 and has at most 6 decimal places. Lua numbers
-- are doubles, exact for integers below 2^53 but not for decimal
-- fractions, so a number is worked on as two integers, whole units and
-- millionths, and Redis holds the plain decimal they make ("12.5"). Sums
-- are exact, and the same on Redis and on the dev store's Lua.
--
-- Never tonumber() an exponent form without a point ("1e+15": the dev
-- store's Lua, gopher-lua, reads it as nil), and never pass a long Lua
-- number to redis.call (Redis writes it in exponent form, "1e+15" on
-- Redis 6) or to tostring: pass strings.

local MICRO = 1000000
local MAX_WHOLE = 1000000000000000 -- 1e15, events.MaxNumber

-- plain returns the whole and fraction digits of s in exponent form
-- ("1.5e+06": "1500000", ""), or nil.
local function plain(s)
  local w, f, sign, x = string.match(s, '^(%d+)%.?(%d*)[eE]([+-]?)(%d+)$')
  if not w or #x > 2 then return nil end
  local digits, point = w .. f, #w + tonumber(x)
  if sign == '-' then point = #w - tonumber(x) end
  if point <= 0 then return '0', string.rep('0', -point) .. digits end
  if point >= #digits then return digits .. string.rep('0', point - #digits), '' end
  return string.sub(digits, 1, point), string.sub(digits, point + 1)
end

-- dec returns the whole units and millionths of s, or nil when s is not
-- a number from 0 to 1e15. Nil, false and '' are 0. An argument (strict)
-- is the Go store's plain decimal of at most 6 places. What Redis holds
-- may be older: digits past the sixth place (left by HINCRBYFLOAT) are
-- rounded, and an exponent form ("1e+06", a grant override set by an
-- older version) is read too.
local function dec(s, strict)
  if s == nil or s == false or s == '' then return 0, 0 end
  local w, f = string.match(s, '^(%d+)%.?(%d*)$')
  if not w and not strict then
    w, f = plain(s)
  end
  if not w or #w > 16 or (strict and #f > 6) then return nil end
  local m = 0
  if f ~= '' then
    m = tonumber(string.sub(f .. '00000', 1, 6))
    if #f > 6 and string.byte(f, 7) >= 53 then m = m + 1 end -- '5'
  end
  w = tonumber(w)
  if m >= MICRO then w, m = w + 1, m - MICRO end
  if w > MAX_WHOLE or (w == MAX_WHOLE and m > 0) then return nil end
  return w, m
end

-- dec_string writes whole units w and millionths m as a plain decimal.
local function dec_string(w, m)
  if m == 0 then return string.format('%d', w) end
  local f = string.gsub(string.format('%06d', m), '0+$', '')
  return string.format('%d', w) .. '.' .. f
end

-- dec_add returns held + v as a plain decimal, where held is what Redis
-- holds and v an argument; nil when either is not a number or the sum
-- passes 1e15.
local function dec_add(held, v)
  local hw, hm = dec(held)
  local vw, vm = dec(v, true)
  if not hw or not vw then return nil end
  local w, m = hw + vw, hm + vm
  if m >= MICRO then w, m = w + 1, m - MICRO end
  if w > MAX_WHOLE or (w == MAX_WHOLE and m > 0) then return nil end
  return dec_string(w, m)
end

-- dec_above reports whether a > b, both numbers dec reads; b that is not
-- one (a corrupt grant limit) raises an error naming it.
local function dec_above(a, b)
  local aw, am = dec(a)
  local bw, bm = dec(b)
  if not bw then error('the grant limit ' .. tostring(b) .. ' is not a number from 0 to 1e15') end
  return aw > bw or (aw == bw and am > bm)
end

-- dec_signed_ok reports whether s, an argument, is a number from -1e15 to
-- 1e15 of at most 6 decimal places (a gauge's value).
local function dec_signed_ok(s)
  if string.sub(s, 1, 1) == '-' then s = string.sub(s, 2) end
  return s ~= '' and dec(s, true) ~= nil
end
