-- Reward experiments: variants of a program's rules, the advocates' assignments, and the
-- variant recorded on every conversion and reward (see the README's "Reward experiments").

CREATE TABLE experiments (
    id                        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    merchant_id               uuid NOT NULL REFERENCES merchants (id) ON DELETE CASCADE,
    program_id                uuid NOT NULL,
    name                      text NOT NULL,
    status                    text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'ended')),
    -- The plan: the referral rate expected without a change, the smallest absolute difference
    -- worth detecting, the error rate and the power.
    baseline_rate             numeric NOT NULL CHECK (baseline_rate > 0 AND baseline_rate < 1),
    minimum_detectable_effect numeric NOT NULL CHECK (minimum_detectable_effect > 0
                                                      AND minimum_detectable_effect < 1),
    alpha                     numeric NOT NULL CHECK (alpha > 0 AND alpha < 0.5),
    power                     numeric NOT NULL CHECK (power >= 0.5 AND power < 1),
    started_at                timestamptz NOT NULL DEFAULT now(),
    ended_at                  timestamptz,
    results                   jsonb,        -- frozen when it ends
    promoted_variant          text,
    promoted_rules_version    integer,
    FOREIGN KEY (merchant_id, program_id) REFERENCES programs (merchant_id, id)
);
-- One running experiment per program: an advocate's offer is never in two at once.
CREATE UNIQUE INDEX experiments_one_running_idx ON experiments (program_id)
    WHERE status = 'running';
CREATE INDEX experiments_program_idx ON experiments (merchant_id, program_id, started_at);

CREATE TABLE experiment_variants (
    experiment_id uuid NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
    key           text NOT NULL,
    position      integer NOT NULL,      -- the first is the control
    weight        integer NOT NULL CHECK (weight > 0),
    rules         jsonb NOT NULL,        -- a complete rule set (app.attribution.rules)
    share_message text,
    PRIMARY KEY (experiment_id, key)
);

CREATE TABLE experiment_assignments (
    experiment_id uuid NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
    advocate_id   uuid NOT NULL,
    variant       text NOT NULL,
    assigned_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (experiment_id, advocate_id)
);
CREATE INDEX experiment_assignments_advocate_idx ON experiment_assignments (advocate_id);

ALTER TABLE conversions ADD COLUMN experiment_id uuid;
ALTER TABLE conversions ADD COLUMN variant text;
CREATE INDEX conversions_experiment_idx ON conversions (experiment_id, variant)
    WHERE experiment_id IS NOT NULL;
ALTER TABLE rewards ADD COLUMN experiment_id uuid;
ALTER TABLE rewards ADD COLUMN variant text;
