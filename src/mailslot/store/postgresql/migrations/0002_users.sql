-- mailslot schema version 2: users for [auth] backend = "postgresql" (docs/postgresql.md).

-- password is "{SCHEME}data" exactly as in a passwd-file (mailslot.auth.schemes); home is the
-- passwd-file's home field ({home} in [store] maildir).
CREATE TABLE mailslot_users (
    name text PRIMARY KEY,
    password text NOT NULL,
    home text,
    created timestamptz NOT NULL DEFAULT now(),
    changed timestamptz NOT NULL DEFAULT now()
);
