"""The SQL the PostgreSQL store sends, in one place (schema: ``migrations/``).

Every statement is one round trip, and each runs in its own implicit transaction.  A login is
one (:data:`LOGIN`: the penalty's reset, the account, the lease and the listing; two when a
concurrent QUIT's deletion committed while it waited for the lease; four at a user's first
login); a RETR is one per 256 KiB, or none when a pipelined RETR before it brought its
message along (:data:`READ_BODIES`); QUIT is one (:data:`RELEASE_LEASE`, or with deletions
:data:`QUIT_DELETE`: the fence, the deletion, the generation's bump and the release); a
delivery is one transaction (account, then one statement inserting the listing and the
body).
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

# A login, after the password was verified, in one statement: $4's failed-login penalty
# forgotten (mailslot_penalty, NULL: none), the account looked up, its lease taken
# (ACQUIRE_LEASE's statement) and, if it was, the listing read (SNAPSHOT's, as arrays).
# No row: no account yet (made with CREATE_ACCOUNT, then ACQUIRE_LEASE, SNAPSHOT).  A NULL
# token: the maildrop is in use.
#
# The listing is read with the statement's snapshot, taken before the lease: if the lease
# was held by a QUIT deleting (its row locked by QUIT_DELETE), the insert waited for that
# QUIT to commit, and the snapshot still lists what it deleted.  So the account's generation
# (bumped by every QUIT_DELETE) comes twice: as the snapshot saw it (``seen``) and as the row
# lock taken after the lease returns it (``latest``, the newest committed version, READ
# COMMITTED's rule for locking reads).  If they differ the caller reads SNAPSHOT again, in a
# statement of its own whose snapshot follows that commit.  FOR SHARE, not FOR KEY SHARE:
# a KEY SHARE lock is granted on the old version of a row whose update changed no key, and
# returns it.  So a delivery in flight for the account (its UPDATE of next_seq) and this
# statement wait for each other, for the length of one.
# The listing's order is the subquery's; the caller checks it (a plan may not keep it).
LOGIN = """
WITH forgive AS (
    DELETE FROM mailslot_penalty WHERE key = $4
), account AS (
    SELECT account_id, generation FROM mailslot_accounts WHERE name = $1
), lease AS (
    INSERT INTO mailslot_leases (account_id, token, node, expires)
    SELECT account_id, nextval('mailslot_lease_tokens'), $2, now() + make_interval(secs => $3)
    FROM account
    ON CONFLICT (account_id) DO UPDATE
        SET token = EXCLUDED.token, node = EXCLUDED.node, acquired = now(),
            expires = EXCLUDED.expires
        WHERE mailslot_leases.expires < now()
    RETURNING account_id, token
), latest AS (
    SELECT a.generation FROM mailslot_accounts AS a JOIN lease USING (account_id)
    FOR SHARE OF a
)
SELECT account.account_id, lease.token, account.generation AS seen,
    (SELECT generation FROM latest) AS latest, listing.seqs, listing.uidls, listing.sizes
FROM account
LEFT JOIN lease ON true
LEFT JOIN LATERAL (
    SELECT array_agg(m.seq), array_agg(m.uidl), array_agg(m.wire_size)
    FROM (
        SELECT seq, uidl, wire_size FROM mailslot_messages
        WHERE account_id = lease.account_id ORDER BY seq
    ) AS m
) AS listing (seqs, uidls, sizes) ON lease.token IS NOT NULL
"""

RENEW_LEASE = """
UPDATE mailslot_leases SET expires = now() + make_interval(secs => $3)
WHERE account_id = $1 AND token = $2
RETURNING token
"""

RELEASE_LEASE = "DELETE FROM mailslot_leases WHERE account_id = $1 AND token = $2"

# A node (re)starting: no session of its earlier life is alive any more.
CLEAR_NODE_LEASES = "DELETE FROM mailslot_leases WHERE node = $1"

# ``mailslot migrate``'s check of its hold, inside its transaction (migration.copy): the row
# lock makes a concurrent acquirer wait for its commit; a changed token: the hold was lost.
FENCE = """
SELECT token FROM mailslot_leases WHERE account_id = $1 AND token = $2 FOR UPDATE
"""

# QUIT with deletions, one statement and so one transaction: the lease row is deleted (and
# so locked) only if the token is still ours, which fences a holder that lost the lease
# (READ COMMITTED re-checks the token on the newest version of a row updated meanwhile);
# only then are the messages deleted (their bodies by the cascade) and the account's
# generation bumped (LOGIN's check).  A login that tries the lease meanwhile waits for the
# row lock, so for the commit.  ``ours``: false if the lease was lost (nothing changed).
QUIT_DELETE = """
WITH release AS (
    DELETE FROM mailslot_leases WHERE account_id = $1 AND token = $2 RETURNING account_id
), gone AS (
    DELETE FROM mailslot_messages
    WHERE account_id = (SELECT account_id FROM release) AND seq = ANY($3::bigint[])
    RETURNING seq
), bump AS (
    UPDATE mailslot_accounts SET generation = generation + 1
    WHERE account_id = (SELECT account_id FROM release)
    RETURNING generation
)
SELECT EXISTS (SELECT FROM release) AS ours, (SELECT count(*) FROM gone) AS deleted,
    (SELECT count(*) FROM bump) AS bumped
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
