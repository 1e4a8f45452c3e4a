-- Privacy (#15): secrets encrypted at rest, emails hashed per merchant, revocable advocate page
-- tokens, erasure and retention.

-- Merchants' postback secrets are encrypted with the server's data key (Fernet), and each
-- merchant gets its own email-hashing key (HMAC), encrypted the same way. keys_version 0 is a
-- merchant from before: plain secret, bare SHA-256 email hashes. `referral migrate` upgrades
-- each such merchant in one transaction (app/services/secrets.py): it encrypts the secret and
-- re-hashes every stored email hash under the new key (the key is applied to the old hash, so
-- nothing needs the email itself, and self-referral detection keeps matching).
ALTER TABLE merchants ALTER COLUMN webhook_secret DROP NOT NULL;
ALTER TABLE merchants ADD COLUMN webhook_secret_enc text;
ALTER TABLE merchants ADD COLUMN email_key_enc text;
ALTER TABLE merchants ADD COLUMN keys_version smallint NOT NULL DEFAULT 0;
ALTER TABLE merchants ADD CONSTRAINT merchants_secrets_at_rest CHECK (
    keys_version = 0
    OR (webhook_secret IS NULL AND webhook_secret_enc IS NOT NULL AND email_key_enc IS NOT NULL)
);

-- Advocate page tokens: opaque (random, signed so that a forged one costs no query), stored as
-- a hash, revocable, expiring.
CREATE TABLE advocate_tokens (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    merchant_id uuid NOT NULL REFERENCES merchants (id) ON DELETE CASCADE,
    advocate_id uuid NOT NULL,
    token_hash  bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz,
    FOREIGN KEY (merchant_id, advocate_id) REFERENCES advocates (merchant_id, id)
);
CREATE INDEX advocate_tokens_advocate_idx ON advocate_tokens (merchant_id, advocate_id);

-- Whether advocates see their friends' order amounts and rewards on their page (off: counts only).
ALTER TABLE programs ADD COLUMN advocate_sees_amounts boolean NOT NULL DEFAULT false;

-- Erasures done: who asked (the audit trail has the key), what kind of subject, and how many rows
-- each table had changed. The subject itself is not kept: `subject_digest` is an HMAC under the
-- merchant's email key, so a repeated request is recognised and nothing else can be read from it.
CREATE TABLE erasures (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    merchant_id    uuid NOT NULL REFERENCES merchants (id) ON DELETE CASCADE,
    kind           text NOT NULL CHECK (kind IN ('customer', 'advocate')),
    subject_digest bytea NOT NULL,
    pseudonym      text NOT NULL,        -- what the subject's ids became, e.g. 'erased:3f…'
    requested_at   timestamptz NOT NULL DEFAULT now(),
    changed        jsonb NOT NULL,       -- rows changed per table, e.g. {"conversions": 3}
    UNIQUE (merchant_id, kind, subject_digest)
);

-- The audit trail stays append-only, except that an erasure may blank a recorded request body
-- that carried the erased person's data (and nothing else of the row).
CREATE FUNCTION audit_log_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND current_setting('referral.erasure', true) = 'on'
       AND NEW.id = OLD.id AND NEW.merchant_id = OLD.merchant_id
       AND NEW.key_id IS NOT DISTINCT FROM OLD.key_id AND NEW.at = OLD.at
       AND NEW.operation = OLD.operation AND NEW.object_ids = OLD.object_ids THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$ LANGUAGE plpgsql;
DROP TRIGGER audit_log_append_only ON audit_log;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();

-- Retention: the click partitions already stripped of user agent, referer and IP data.
CREATE TABLE click_retention (
    partition_name text PRIMARY KEY,
    stripped_at    timestamptz NOT NULL DEFAULT now(),
    rows_changed   bigint NOT NULL
);
