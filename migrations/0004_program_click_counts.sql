-- A program's clicks per day, kept by the flusher in the same transaction as the clicks
-- themselves, so that a program's statistics read a few hundred rows instead of every click.
-- (Unique visitors are not additive: they are a HyperLogLog per program in Redis, see
-- app/storage/visitors.py.) Upgrade with the flushers stopped: clicks wait in the Redis stream,
-- and a flusher of the previous version would store clicks without counting them here.
CREATE TABLE program_click_counts (
    program_id  uuid NOT NULL REFERENCES programs (id) ON DELETE CASCADE,
    day         date NOT NULL,          -- UTC
    merchant_id uuid NOT NULL,
    human       bigint NOT NULL DEFAULT 0,
    bot         bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (program_id, day)
);

LOCK TABLE clicks IN SHARE MODE;  -- no click stored while the counts are taken
INSERT INTO program_click_counts (program_id, day, merchant_id, human, bot)
SELECT program_id, (clicked_at AT TIME ZONE 'UTC')::date, merchant_id,
       count(*) FILTER (WHERE NOT is_bot), count(*) FILTER (WHERE is_bot)
FROM clicks
GROUP BY program_id, (clicked_at AT TIME ZONE 'UTC')::date, merchant_id;
