-- Payment providers' webhooks (#17): each merchant's signing secret per provider, encrypted
-- under the server's data keys like the postback secret.
CREATE TABLE integrations (
    merchant_id uuid NOT NULL REFERENCES merchants (id) ON DELETE CASCADE,
    provider    text NOT NULL CHECK (provider IN ('stripe', 'shopify')),
    secret_enc  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, provider)
);
