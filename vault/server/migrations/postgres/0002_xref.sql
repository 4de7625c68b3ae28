-- Cross-reference tokens: entities and the blind-index links to them.
-- Every entity and link belongs to the partner that imported it: each
-- partner has its own blind-index key, tokens and merges (no cross-partner
-- linkage through this table).
CREATE TABLE xref_entities (
    token          TEXT    PRIMARY KEY,
    owner          TEXT    NOT NULL,
    alias_of       TEXT,
    created_at_ms  BIGINT  NOT NULL
);

CREATE INDEX xref_entities_alias ON xref_entities (alias_of);

CREATE TABLE xref_links (
    blind_index  BYTEA   PRIMARY KEY CHECK (length(blind_index) = 32),
    key_version  BIGINT  NOT NULL,
    id_type      TEXT    NOT NULL,
    owner        TEXT    NOT NULL,
    token        TEXT    NOT NULL,
    -- The identifier itself, AES-256-GCM under the xref seal key (aad = blind index),
    -- for role-gated detokenization inside the vault.
    sealed       BYTEA    NOT NULL
);

CREATE INDEX xref_links_token ON xref_links (token);

-- Bumped by every import that changes links or merges entities, so that
-- every replica's lookup cache notices and drops what it holds.
CREATE TABLE xref_generation (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    value  BIGINT  NOT NULL
);

INSERT INTO xref_generation (id, value) VALUES (1, 0);
