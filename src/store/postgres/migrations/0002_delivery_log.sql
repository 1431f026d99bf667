-- Step 2: the delivery log of every replica (store/delivery_log/mod.rs has the record).
-- Times are Unix milliseconds; keys are the addresses lower-cased; `replica` names the
-- `postern serve` that made the attempt. `id` orders the rows of one millisecond.
CREATE TABLE delivery_log (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    time_ms bigint NOT NULL, replica text NOT NULL, queue_id text NOT NULL,
    sender text NOT NULL, sender_key text NOT NULL,
    recipient text NOT NULL, recipient_key text NOT NULL,
    mx text, ip text, tls_mode text, tls_version text, tls_cipher text,
    reply text NOT NULL, dsn text NOT NULL,
    state text NOT NULL CHECK (state IN ('delivered', 'deferred', 'bounced')),
    attempt integer NOT NULL);
-- `postern log ADDRESS` (sender or recipient, with --since), `--queue-id`, and the purge.
CREATE INDEX delivery_log_by_recipient ON delivery_log(recipient_key, time_ms);
CREATE INDEX delivery_log_by_sender ON delivery_log(sender_key, time_ms);
CREATE INDEX delivery_log_by_queue_id ON delivery_log(queue_id, time_ms);
CREATE INDEX delivery_log_by_time ON delivery_log(time_ms);
