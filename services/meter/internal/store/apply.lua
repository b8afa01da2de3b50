-- apply.lua applies one usage event: see apply_event.lua, which is
-- prepended, for the keys, arguments and reply.
return apply_event(KEYS, ARGV)
