-- The text an advocate's share buttons prefill (#19), with {link} standing for their link.
ALTER TABLE programs ADD COLUMN share_text text NOT NULL
    DEFAULT 'I shop here and think you will like it too: {link}'
    CHECK (length(share_text) BETWEEN 1 AND 500);
