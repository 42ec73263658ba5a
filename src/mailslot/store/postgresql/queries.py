"""The SQL the PostgreSQL store sends, in one place (schema: ``migrations/``).

Every statement is one round trip.  A login is two (account and lease, snapshot; four at a
user's first login); a RETR is one per 256 KiB, or none when a pipelined RETR before it
brought its message along (READ_BODIES); a QUIT with deletions is one transaction of
two statements (four round trips with BEGIN and COMMIT); a delivery is one transaction
(account, then one statement inserting the listing and the body).
"""

ACCOUNT = "SELECT account_id FROM mailslot_accounts WHERE name = $1"

# DO UPDATE (not DO NOTHING) so that RETURNING gives the row also when a concurrent first
# delivery or login created it; taken only on a miss of ACCOUNT, so rows are not rewritten.
CREATE_ACCOUNT = """
INSERT INTO mailslot_accounts (name) VALUES ($1)
ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
RETURNING account_id
"""

# The lease: taken if nobody holds it or the holder's lease has expired by the database's
# clock.  A conflicting row whose lease is alive is left alone and nothing is returned.
ACQUIRE_LEASE = """
INSERT INTO mailslot_leases (account_id, token, node, expires)
VALUES ($1, nextval('mailslot_lease_tokens'), $2, now() + make_interval(secs => $3))
ON CONFLICT (account_id) DO UPDATE
    SET token = EXCLUDED.token, node = EXCLUDED.node, acquired = now(), expires = EXCLUDED.expires
    WHERE mailslot_leases.expires < now()
RETURNING token
"""

# A login's first round trip: the account's id and, if the lease could be taken, its token
# (ACQUIRE_LEASE's statement on the looked-up account).  No row: no account yet (made with
# CREATE_ACCOUNT, then ACQUIRE_LEASE).  A row with a NULL token: the maildrop is in use.
ACCOUNT_AND_LEASE = """
WITH account AS (
    SELECT account_id FROM mailslot_accounts WHERE name = $1
), lease AS (
    INSERT INTO mailslot_leases (account_id, token, node, expires)
    SELECT account_id, nextval('mailslot_lease_tokens'), $2, now() + make_interval(secs => $3)
    FROM account
    ON CONFLICT (account_id) DO UPDATE
        SET token = EXCLUDED.token, node = EXCLUDED.node, acquired = now(),
            expires = EXCLUDED.expires
        WHERE mailslot_leases.expires < now()
    RETURNING token
)
SELECT account.account_id, (SELECT token FROM lease) AS token FROM account
"""

RENEW_LEASE = """
UPDATE mailslot_leases SET expires = now() + make_interval(secs => $3)
WHERE account_id = $1 AND token = $2
RETURNING token
"""

RELEASE_LEASE = "DELETE FROM mailslot_leases WHERE account_id = $1 AND token = $2"

# A node (re)starting: no session of its earlier life is alive any more.
CLEAR_NODE_LEASES = "DELETE FROM mailslot_leases WHERE node = $1"

# Inside QUIT's transaction: the row lock makes a concurrent acquirer wait for our commit, so
# it snapshots after the deletion; a changed token means another session owns the maildrop.
FENCE = """
SELECT token FROM mailslot_leases WHERE account_id = $1 AND token = $2 FOR UPDATE
"""

# An index-only scan of the covering primary key.
SNAPSHOT = """
SELECT seq, uidl, wire_size FROM mailslot_messages WHERE account_id = $1 ORDER BY seq
"""

# substring() of an EXTERNAL (uncompressed TOAST) bytea fetches only the chunks it covers.
READ_CHUNK = """
SELECT substring(body FROM $3::integer FOR $4::integer)
FROM mailslot_bodies WHERE account_id = $1 AND seq = $2
"""

# Several small messages in one round trip: the one a RETR asked for and those after it,
# while the client has pipelined more commands (PostgresMaildrop.read).
READ_BODIES = """
SELECT seq, body FROM mailslot_bodies WHERE account_id = $1 AND seq = ANY($2::bigint[])
"""

DELETE_MESSAGES = """
DELETE FROM mailslot_messages WHERE account_id = $1 AND seq = ANY($2::bigint[])
"""

# The lease node name of ``mailslot migrate``'s hold on an account it is filling: a lease
# that never expires (until the migration releases it), so logins get [IN-USE] and
# deliveries are deferred (DELIVER returns no row) until the account is complete.
MIGRATION_NODE = "mailslot-migrate"

# The row lock taken on the account by the UPDATE orders deliveries: seq order is commit
# order, so a snapshot never misses an earlier seq that commits later.  No row comes back
# while ``mailslot migrate`` holds the account: the delivery is deferred.
DELIVER = """
WITH account AS (
    UPDATE mailslot_accounts SET next_seq = next_seq + 1
    WHERE account_id = $1 AND NOT EXISTS (
        SELECT 1 FROM mailslot_leases WHERE account_id = $1 AND node = 'mailslot-migrate'
    )
    RETURNING next_seq - 1 AS seq, uid_prefix
), message AS (
    INSERT INTO mailslot_messages (account_id, seq, uidl, wire_size, stored_size, header_size)
    SELECT $1, seq, uid_prefix || '.' || seq, $2, $3, $4 FROM account
    RETURNING seq
)
INSERT INTO mailslot_bodies (account_id, seq, body) SELECT $1, seq, $5 FROM message
RETURNING seq
"""

USAGE = """
SELECT count(*), coalesce(sum(stored_size), 0)::bigint FROM mailslot_messages
WHERE account_id = $1
"""
