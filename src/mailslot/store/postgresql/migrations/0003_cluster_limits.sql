-- mailslot schema version 3: the failed-login penalty and the connection counts of every node
-- (docs/postgresql.md, "Limits and penalties across nodes").

-- One row per client key (an IPv4 address or an IPv6 network, mailslot.server.penalty):
-- strikes is the number of password checks granted, next_at the earliest time of the next,
-- both set with the database's clock, so no node's clock matters.
CREATE TABLE mailslot_penalty (
    key text PRIMARY KEY,
    strikes integer NOT NULL,
    next_at timestamptz NOT NULL,
    touched timestamptz NOT NULL
);
CREATE INDEX mailslot_penalty_touched ON mailslot_penalty (touched);

-- PenaltyPolicy.gap: seconds between the strikes-th check and the next.
CREATE FUNCTION mailslot_penalty_gap(strikes integer, base float8, cap float8, free integer)
RETURNS float8 LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN base <= 0 OR strikes <= free THEN 0::float8
                ELSE least(cap, base * power(2::float8, least(strikes - free - 1, 30))) END
$$;

-- Each worker process of each node publishes the connections and sessions it holds, by key
-- ("a:<client>", "u:<user>"), renewing expires as it does; the rows of a node or worker
-- that stopped publishing count no more once they expire.  A node clears its own at start.
CREATE TABLE mailslot_limit_counts (
    node text NOT NULL,
    process integer NOT NULL,
    keys text[] NOT NULL,
    counts integer[] NOT NULL,
    expires timestamptz NOT NULL,
    PRIMARY KEY (node, process)
);
