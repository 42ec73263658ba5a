-- mailslot schema version 4: the account's deletion generation (docs/postgresql.md).

-- Bumped by every QUIT that deletes, in the deletion's statement.  A login reads the listing
-- in the statement that takes the lease, so with that statement's snapshot: one taken before
-- a concurrent QUIT it waited for (the lease row's lock) had committed.  The login compares
-- the generation its snapshot saw with the one its row lock returns (the latest) and reads
-- the listing again if they differ, so no deleted message is listed again.  A constant
-- default: adding the column rewrites no row.
ALTER TABLE mailslot_accounts ADD COLUMN generation bigint NOT NULL DEFAULT 0;
