// The Redis side of the module: a Redis 7 function library every node loads (FUNCTION LOAD
// REPLACE) when it connects. Publishing through it keeps a channel's history in Redis and its
// pub/sub message in one atomic step, so every node and every reader of the history sees the
// same events in the same order. Other services publish with the same function:
//   FCALL sse_publish <n> <prefix><channel>... <data> [<event> [<history> [<ttl-ms>]]]
// (a node adds <id> <origin> [resent]: "1" when the event may already be there, sent before a
// connection broke with its acknowledgement on the way; it is then not added or published again)
// A channel's history is the list at key <prefix><channel>; its messages go to the pub/sub
// channel of the same name. Each entry is JSON: i (id), o (origin node), t (Redis time, ms),
// l (the newest id no longer retained when it was added), e (event name), d (data), and c (every
// channel's key) when the event has several channels.
// Ids are decimal strings: Lua's numbers cannot hold 64 bits.
//
// In a Redis Cluster the library is loaded on every primary with messages published by SPUBLISH
// (sharded pub/sub: a message stays in the shard that owns its channel's slot). An event whose
// channels lie in several slots is published by one call per slot; each call then also gets every
// channel's key after <resent> so that its entries name them all. sse_history without a channel
// to publish to answers with the history itself.
#pragma once

#include <string>
#include <string_view>

namespace sse {

constexpr std::string_view kRedisFunctionLibrary = R"lua(#!lua name=sse

-- a >= b, for decimal strings without leading zeros
local function at_least(a, b)
  if #a ~= #b then return #a > #b end
  return a >= b
end

-- hi and lo of a decimal string: a = hi * 1e9 + lo, both exact in Lua's numbers
local function split(a)
  local hi = 0
  if #a > 9 then hi = tonumber(string.sub(a, 1, -10)) end
  return hi, tonumber(string.sub(a, -9))
end

local function join(hi, lo)
  hi = hi + math.floor(lo / 1e9)
  lo = lo % 1e9
  if hi == 0 then return string.format('%d', lo) end
  return string.format('%.0f%09d', hi, lo)
end

-- an id Redis gives: (microseconds << 10) | 1023, after every id of the channels
local function redis_id(keys, time)
  local a = tonumber(time[1]) * 1024
  local q = math.floor(a / 1000)
  local id = join(q, (a - q * 1000) * 1e6 + tonumber(time[2]) * 1024 + 1023)
  for _, key in ipairs(keys) do
    local tail = redis.call('LINDEX', key, -1)
    if tail then
      local last = cjson.decode(tail).i
      if at_least(last, id) then
        local hi, lo = split(last)
        local low_bits = ((hi % 2) * 512 + lo) % 1024
        id = join(hi, lo + 2047 - low_bits)
      end
    end
  end
  return id
end

local publish_command = 'PUBLISH'

local usage = 'usage: FCALL sse_publish <number of channels> <prefix><channel>... <data> [<event> [<history> [<ttl-ms>]]]'

local function publish(keys, args)
  if #keys == 0 or args[1] == nil then return redis.error_reply(usage) end
  local data = args[1]
  local name = args[2] or ''
  local limit = tonumber(args[3] or '100')
  local ttl = tonumber(args[4] or '3600000')
  if limit == nil or ttl == nil or limit < 0 or ttl < 0 then return redis.error_reply(usage) end
  if string.find(name, '[\r\n]') or #name > 128 then
    return redis.error_reply('sse_publish: an event name is at most 128 bytes without CR or LF')
  end
  local time = redis.call('TIME')
  local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  local id = args[5]
  if id == nil or id == '' then id = redis_id(keys, time) end
  local origin = args[6] or ''
  -- A node sending again what a lost connection may have applied already: the id is looked for
  -- in the last entries (a node has at most 1024 events unacknowledged).
  local resent = args[7] == '1'
  local needle = '"i":"' .. id .. '"'
  -- An event of several channels names them all, so that a node listening to more than one
  -- of them takes it once.
  local channels = nil
  if #args >= 8 then
    channels = {}
    for i = 8, #args do channels[#channels + 1] = args[i] end
  elseif #keys > 1 then
    channels = keys
  end
  for _, key in ipairs(keys) do
    local there = false
    if resent and limit > 0 then
      for _, e in ipairs(redis.call('LRANGE', key, -4096, -1)) do
        if string.find(e, needle, 1, true) then there = true break end
      end
    end
    if not there then
      local lost = '0'
      if limit > 0 then
        local tail = redis.call('LINDEX', key, -1)
        if tail then lost = cjson.decode(tail).l or '0' end
        if ttl > 0 then
          while true do
            local head = redis.call('LINDEX', key, 0)
            if not head then break end
            local h = cjson.decode(head)
            if h.t + ttl > now_ms then break end
            redis.call('LPOP', key)
            if at_least(h.i, lost) then lost = h.i end
          end
        end
        while redis.call('LLEN', key) >= limit do
          local h = cjson.decode(redis.call('LPOP', key))
          if at_least(h.i, lost) then lost = h.i end
        end
      end
      local entry = cjson.encode({i = id, o = origin, t = now_ms, l = lost, e = name, d = data, c = channels})
      if limit > 0 then
        redis.call('RPUSH', key, entry)
        if ttl > 0 then redis.call('PEXPIRE', key, ttl) else redis.call('PERSIST', key) end
      end
      redis.call(publish_command, key, entry)
    end
  end
  return id
end

-- Sends a channel's history to the asking node's own pub/sub channel: on the connection that
-- carries the channel's messages, so the node sees it in order with them.
local function history(keys, args)
  local entries = redis.call('LRANGE', keys[1], 0, -1)
  local whole = '{"k":' .. cjson.encode(keys[1]) .. ',"e":[' .. table.concat(entries, ',') .. ']}'
  if args[1] == nil or args[1] == '' then return whole end
  redis.call('PUBLISH', args[1], whole)
  return #entries
end

redis.register_function('sse_publish', publish)
redis.register_function('sse_history', history)
)lua";

// The library as a cluster's primaries load it: the same, publishing by SPUBLISH.
inline std::string redis_cluster_function_library() {
    std::string library(kRedisFunctionLibrary);
    const std::string_view classic = "local publish_command = 'PUBLISH'";
    library.replace(library.find(classic), classic.size(), "local publish_command = 'SPUBLISH'");
    return library;
}

}  // namespace sse
