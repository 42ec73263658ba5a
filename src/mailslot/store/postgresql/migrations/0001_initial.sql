-- mailslot schema version 1: accounts, messages, bodies, leases (docs/postgresql.md).

-- One row per maildrop (its user name).  next_seq only grows: a message's seq, and so its UIDL, is never
-- reused in an account (RFC 1939 section 7).
CREATE TABLE mailslot_accounts (
    account_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE,
    next_seq bigint NOT NULL DEFAULT 1,
    -- Starts every UIDL of the account: an account deleted and made again, or a database
    -- rebuilt from scratch, never hands a client a UIDL it has seen for another message.
    uid_prefix text NOT NULL DEFAULT substr(md5(random()::text || clock_timestamp()::text), 1, 12)
);

-- One row per message, in arrival order (seq).  The covering primary key lets a login's
-- snapshot (seq, uidl, wire_size) be an index-only scan.
CREATE TABLE mailslot_messages (
    account_id bigint NOT NULL REFERENCES mailslot_accounts ON DELETE CASCADE,
    seq bigint NOT NULL,
    uidl text NOT NULL CHECK (uidl ~ '^[\x21-\x7e]{1,70}$'),
    wire_size bigint NOT NULL CHECK (wire_size >= 0),
    stored_size bigint NOT NULL CHECK (stored_size >= 0),
    header_size bigint NOT NULL CHECK (header_size >= 0),
    delivered timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, seq) INCLUDE (uidl, wire_size),
    UNIQUE (account_id, uidl)
);

-- The stored bytes (LF or CRLF line ends, as delivered), apart from the listing.  EXTERNAL:
-- TOASTed uncompressed, so substring() reads only the chunks it needs (RETR and TOP stream).
CREATE TABLE mailslot_bodies (
    account_id bigint NOT NULL,
    seq bigint NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (account_id, seq),
    FOREIGN KEY (account_id, seq) REFERENCES mailslot_messages ON DELETE CASCADE
);
ALTER TABLE mailslot_bodies ALTER COLUMN body SET STORAGE EXTERNAL;

-- The maildrop lease (RFC 1939 section 8's exclusive lock across nodes).  expires is set
-- by the database's clock; token is the fencing token QUIT's deletion checks.
CREATE SEQUENCE mailslot_lease_tokens;
CREATE TABLE mailslot_leases (
    account_id bigint PRIMARY KEY REFERENCES mailslot_accounts ON DELETE CASCADE,
    token bigint NOT NULL,
    node text NOT NULL,
    acquired timestamptz NOT NULL DEFAULT now(),
    expires timestamptz NOT NULL
);
CREATE INDEX mailslot_leases_node ON mailslot_leases (node);
