-- mark_sent.lua records that a task's email went out, so a rerun of the
-- task (asynq after a crash, before it recorded success) does not send it
-- again.
--
-- KEYS[1] the task's sent mark ({uid}:sent:<task>)
-- ARGV[1] how long to keep it, ms (notifier.retention)
--
-- returns OK
return redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
