//! The SQL text of the service's statements, next to the parameters each
//! takes (the import's own are in `store/import.rs`).

use std::fmt::Write;

use tokio_postgres::types::{ToSql, Type};

use jiff::Timestamp;

use crate::domain::{BatchFilter, Detail, ListQuery, Order};

/// A statement's text and the types of its parameters, which it is
/// prepared with (or, behind a transaction-mode pooler, sent with on every
/// call), so that no statement depends on what the server inferred on some
/// earlier connection.
#[derive(Clone, Copy)]
pub struct Statement<'s> {
    pub text: &'s str,
    pub types: &'s [Type],
}

impl<'s> Statement<'s> {
    const fn new(text: &'s str, types: &'s [Type]) -> Self {
        Self { text, types }
    }
}

/// Every column of `batches`, in order, with its type: the one list that the
/// statements below (through [`columns!`]), the import's COPY, its
/// [`COLUMN_TYPES`] and the [`column`] positions that
/// [`super::batch_from_row`] reads come from. Every statement that returns
/// whole batches starts its rows with [`columns!`].
/// Calls `$then!` with `name: TYPE` pairs.
macro_rules! with_batch_columns {
    ($then:ident) => {
        $then! {
            batch_id: TEXT, state: TEXT, provider: TEXT, model: TEXT, current_model: TEXT,
            topic_filter: TEXT, difficulty_filter: TEXT, reasoning_instruction: TEXT,
            target_count: INT4, samples_generated: INT8, total_tokens: INT8, errors: JSONB,
            error_count: INT8, model_switches: JSONB, metadata: JSONB,
            start_time: TIMESTAMPTZ, end_time: TIMESTAMPTZ, update_time: TIMESTAMPTZ,
            version: INT8
        }
    };
}

macro_rules! column_names {
    ($first:ident: $first_type:ident $(, $name:ident: $type:ident)*) => {
        concat!(stringify!($first) $(, ", ", stringify!($name))*)
    };
}

macro_rules! column_types {
    ($($name:ident: $type:ident),*) => {
        [$(Type::$type),*]
    };
}

macro_rules! column_positions {
    ($($name:ident: $type:ident),*) => {
        /// The position of each of [`columns!`] in a row: reading by
        /// position spares a search by name for each of 19 columns, in
        /// each of a page's 51 rows.
        #[allow(non_upper_case_globals)]
        pub mod column {
            #[allow(non_camel_case_types)]
            enum Position {
                $($name),*
            }
            $(pub const $name: usize = Position::$name as usize;)*
        }
    };
}

with_batch_columns!(column_positions);

/// A column of [`columns!`] as a listing in [`Detail::Basic`] reads it:
/// the bodies of errors and model switches left empty, in their places.
macro_rules! basic_column {
    (errors) => {
        "'[]'::jsonb"
    };
    (model_switches) => {
        "'[]'::jsonb"
    };
    ($name:ident) => {
        stringify!($name)
    };
}

macro_rules! basic_column_names {
    ($first:ident: $first_type:ident $(, $name:ident: $type:ident)*) => {
        concat!(basic_column!($first) $(, ", ", basic_column!($name))*)
    };
}

/// The column list of every statement that returns whole batches.
macro_rules! columns {
    () => {
        with_batch_columns!(column_names)
    };
}

/// The import's bulk load into its staging table: every column, in the
/// order `BulkLoad::write` writes them.
pub const COPY_TO_STAGE: &str = concat!(
    "COPY import_batches (",
    columns!(),
    ") FROM STDIN (FORMAT binary)"
);

/// The type of each of [`columns!`], in its order.
pub const COLUMN_TYPES: &[Type] = &with_batch_columns!(column_types);

/// Inserts a batch unless its id exists; returns the new or the existing row
/// and whether this statement created it. $1 id, $2–$6 texts, $7 target
/// count, $8 metadata, $9 start time or NULL for now.
pub const CREATE: Statement = Statement::new(
    concat!(
        "WITH inserted AS (
        INSERT INTO batches (batch_id, state, provider, model, current_model, topic_filter,
                             difficulty_filter, reasoning_instruction, target_count, metadata,
                             start_time, update_time)
        VALUES ($1, 'RUNNING', $2, $3, $3, $4, $5, $6, $7, $8, COALESCE($9::timestamptz, now()),
                now())
        ON CONFLICT (batch_id) DO NOTHING
        RETURNING ",
        columns!(),
        "
    )
    SELECT ",
        columns!(),
        ", true AS created FROM inserted
    UNION ALL
    SELECT ",
        columns!(),
        ", false AS created FROM batches
    WHERE batch_id = $1 AND NOT EXISTS (SELECT FROM inserted)"
    ),
    &[
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::INT4,
        Type::JSONB,
        Type::TIMESTAMPTZ,
    ],
);

/// $1 id.
pub const GET: Statement = Statement::new(
    concat!("SELECT ", columns!(), " FROM batches WHERE batch_id = $1"),
    &[Type::TEXT],
);

/// Batches per state; an index-only scan of the state index.
pub const COUNT_BY_STATE: Statement =
    Statement::new("SELECT state, count(*) FROM batches GROUP BY state", &[]);

/// Stops running batches not updated for $1 seconds, appending an error
/// that says how long each was idle, and keeping the newest $3 errors within
/// $4 bytes, unless another replica holds sweep lock $2.
pub const SWEEP_STALE: Statement = Statement::new(
    concat!(
        "WITH sweeper AS (SELECT pg_try_advisory_xact_lock($2) AS holds)
    UPDATE batches SET
        state = 'STOPPED',
        end_time = greatest(now(), start_time),
        errors = jsonb_append_keep_newest(errors, jsonb_build_array(jsonb_build_object(
            'message', format(
                'stopped by the stale-batch sweep: no update for %s (since %s UTC), '
                'more than the threshold of %s',
                justify_hours(date_trunc('second', now() - update_time)),
                to_char(update_time AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'),
                justify_hours(make_interval(secs => $1::float8))),
            'time', now())), $3, $4),
        error_count = error_count + 1,
        update_time = now(),
        version = version + 1
    FROM sweeper
    WHERE sweeper.holds AND state = 'RUNNING'
      AND update_time < now() - make_interval(secs => $1::float8)
    RETURNING ",
        columns!()
    ),
    &[Type::FLOAT8, Type::INT8, Type::INT4, Type::INT4],
);

/// Finished batches that ended before $1, in states $2: counted.
pub const COUNT_PURGEABLE: Statement = Statement::new(
    "SELECT count(*) FROM batches
    WHERE state <> 'RUNNING' AND state = ANY($2) AND end_time < $1",
    &[Type::TIMESTAMPTZ, Type::TEXT_ARRAY],
);

/// Deletes up to $3 finished batches that ended before $1, in states $2.
/// Bounded so that a large purge never holds many row locks at once.
pub const PURGE_CHUNK: Statement = Statement::new(
    "DELETE FROM batches WHERE batch_id IN (
        SELECT batch_id FROM batches
        WHERE state <> 'RUNNING' AND state = ANY($2) AND end_time < $1
        LIMIT $3)",
    &[Type::TIMESTAMPTZ, Type::TEXT_ARRAY, Type::INT8],
);

/// Takes or extends replica $1's watch lease by $2 seconds, and clears
/// the lapsed leases of others: every process start names a new replica,
/// and every write reads this table.
pub const RENEW_WATCH_LEASE: Statement = Statement::new(
    "WITH lapsed AS (
        DELETE FROM batch_watch_leases WHERE expires_at < now() AND replica <> $1
    )
    INSERT INTO batch_watch_leases (replica, expires_at)
    VALUES ($1, now() + make_interval(secs => $2::float8))
    ON CONFLICT (replica) DO UPDATE SET expires_at = EXCLUDED.expires_at",
    &[Type::TEXT, Type::FLOAT8],
);

/// The other transactions that hold a write lock on `batches` (writes take
/// ROW EXCLUSIVE and keep it until they end); $1 narrows them to these, or
/// NULL for all.
pub const WRITERS_IN_PROGRESS: Statement = Statement::new(
    "SELECT coalesce(array_agg(DISTINCT virtualtransaction), '{}')
    FROM pg_locks
    WHERE locktype = 'relation' AND relation = 'batches'::regclass
      AND mode = 'RowExclusiveLock' AND granted AND pid <> pg_backend_pid()
      AND ($1::text[] IS NULL OR virtualtransaction = ANY($1))",
    &[Type::TEXT_ARRAY],
);

/// Where the primary's WAL ends now.
pub const WAL_POSITION: Statement = Statement::new("SELECT pg_current_wal_lsn()::text", &[]);

/// How far a replica has replayed the primary's WAL; NULL once it is no
/// longer in recovery (promoted).
pub const REPLAY_POSITION: Statement = Statement::new(
    "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text END",
    &[],
);

/// $1 ids.
pub const GET_MANY: Statement = Statement::new(
    concat!(
        "SELECT ",
        columns!(),
        " FROM batches WHERE batch_id = ANY($1)"
    ),
    &[Type::TEXT_ARRAY],
);

/// $1 id.
pub const DELETE: Statement =
    Statement::new("DELETE FROM batches WHERE batch_id = $1", &[Type::TEXT]);

/// Adds to a running batch's counters and appends to its lists; returns the
/// row, changed or not, and whether it changed (so that a missing batch and
/// a finished one are told apart in the same round trip). $1 id, $2 samples,
/// $3 tokens, $4 errors (JSON array), $5 model switches (JSON array),
/// $6 and $9 errors and their bytes to keep, $10 and $11 model switches and
/// their bytes to keep, $7 request id or NULL, $8 the request's fingerprint,
/// $12 the model switched to last, or NULL to keep the current model.
///
/// Lists a report adds nothing to are left as they are: the function that
/// appends costs microseconds, and a rewritten list is stored again (TOAST
/// and all) even when equal.
///
/// A report whose request id is already recorded is not applied, and
/// `replay_matches` says whether the record is of this same report. Two
/// retries racing past the check both update, but the second one's claim
/// of the request id then fails on the primary key, undoing its update.
pub const RECORD_PROGRESS: Statement = Statement::new(
    concat!(
        "WITH prior AS (
        SELECT batch_id, fingerprint FROM batch_requests WHERE request_id = $7::text::uuid
    ), updated AS (
        UPDATE batches SET
            samples_generated = samples_generated + $2,
            total_tokens = total_tokens + $3,
            errors = CASE WHEN jsonb_array_length($4::jsonb) = 0 THEN errors
                ELSE jsonb_append_keep_newest(errors, $4::jsonb, $6, $9) END,
            error_count = error_count + jsonb_array_length($4::jsonb),
            model_switches = CASE WHEN jsonb_array_length($5::jsonb) = 0 THEN model_switches
                ELSE jsonb_append_keep_newest(model_switches, $5::jsonb, $10, $11) END,
            current_model = coalesce($12, current_model),
            update_time = now(),
            version = version + 1
        WHERE batch_id = $1 AND state = 'RUNNING' AND NOT EXISTS (SELECT FROM prior)
        RETURNING ",
        columns!(),
        "
    ), claimed AS (
        INSERT INTO batch_requests (request_id, batch_id, fingerprint)
        SELECT $7::text::uuid, batch_id, $8 FROM updated WHERE $7::text IS NOT NULL
    )
    SELECT ",
        columns!(),
        ", true AS applied, NULL::boolean AS replay_matches FROM updated
    UNION ALL
    SELECT ",
        columns!(),
        ", false AS applied,
        (SELECT batch_id = $1 AND fingerprint = $8 FROM prior) AS replay_matches
    FROM batches
    WHERE batch_id = $1 AND NOT EXISTS (SELECT FROM updated)"
    ),
    &[
        Type::TEXT,
        Type::INT8,
        Type::INT8,
        Type::JSONB,
        Type::JSONB,
        Type::INT4,
        Type::TEXT,
        Type::BYTEA,
        Type::INT4,
        Type::INT4,
        Type::INT4,
        Type::TEXT,
    ],
);

/// Forgets up to $2 request ids recorded before $1 seconds ago.
pub const FORGET_REQUESTS: Statement = Statement::new(
    "DELETE FROM batch_requests WHERE request_id IN (
        SELECT request_id FROM batch_requests
        WHERE created_at < now() - make_interval(secs => $1::float8)
        LIMIT $2)",
    &[Type::FLOAT8, Type::INT8],
);

/// Creates a batch from its whole state, or brings the stored one up to
/// date unless it is ahead (more samples, tokens, errors or switches): a
/// finished batch keeps its state and end time. Returns the row, changed or
/// not, like [`RECORD_PROGRESS`]. $1 id, $2 state, $3 provider, $4 model,
/// $5 current model, $6 topic, $7 difficulty, $8 reasoning instruction,
/// $9 target count, $10 samples, $11 tokens, $12 errors (JSON array, as
/// kept), $13 error count, $14 model switches (as kept), $15 switch count,
/// $16 metadata, $17 start time or NULL for now, $18 end time or NULL for
/// now (used only if $2 is not RUNNING).
pub const SAVE: Statement = Statement::new(
    concat!(
        "WITH saved AS (
        INSERT INTO batches AS b (batch_id, state, provider, model, current_model, topic_filter,
                                  difficulty_filter, reasoning_instruction, target_count,
                                  samples_generated, total_tokens, errors, error_count,
                                  model_switches, metadata, start_time, end_time, update_time)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $16,
                COALESCE($17::timestamptz, now()),
                CASE WHEN $2 <> 'RUNNING' THEN COALESCE($18::timestamptz, now()) END, now())
        ON CONFLICT (batch_id) DO UPDATE SET
            samples_generated = EXCLUDED.samples_generated,
            total_tokens = EXCLUDED.total_tokens,
            -- Lists only grow: one of the same length is the stored one, and
            -- is not written (and TOASTed) again.
            errors = CASE WHEN EXCLUDED.error_count = b.error_count THEN b.errors
                ELSE EXCLUDED.errors END,
            error_count = EXCLUDED.error_count,
            model_switches = CASE
                WHEN $15::bigint = jsonb_array_length(b.model_switches) THEN b.model_switches
                ELSE EXCLUDED.model_switches END,
            current_model = EXCLUDED.current_model,
            state = CASE WHEN b.state = 'RUNNING' THEN EXCLUDED.state ELSE b.state END,
            end_time = CASE WHEN b.state = 'RUNNING' THEN EXCLUDED.end_time ELSE b.end_time END,
            update_time = now(),
            version = b.version + 1
        WHERE EXCLUDED.samples_generated >= b.samples_generated
          AND EXCLUDED.total_tokens >= b.total_tokens
          AND EXCLUDED.error_count >= b.error_count
          AND $15::bigint >= jsonb_array_length(b.model_switches)
        RETURNING ",
        columns!(),
        "
    )
    SELECT ",
        columns!(),
        ", true AS applied FROM saved
    UNION ALL
    SELECT ",
        columns!(),
        ", false AS applied FROM batches
    WHERE batch_id = $1 AND NOT EXISTS (SELECT FROM saved)"
    ),
    &[
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::INT4,
        Type::INT8,
        Type::INT8,
        Type::JSONB,
        Type::INT8,
        Type::JSONB,
        Type::INT8,
        Type::JSONB,
        Type::TIMESTAMPTZ,
        Type::TIMESTAMPTZ,
    ],
);

/// Moves a running batch to a final state, like [`RECORD_PROGRESS`]. $1 id,
/// $2 state, $3 end time or NULL for now, $4 errors to append (JSON array),
/// $5 and $6 errors and their bytes to keep.
pub const FINISH: Statement = Statement::new(
    concat!(
        "WITH updated AS (
        UPDATE batches SET
            state = $2,
            end_time = COALESCE($3::timestamptz, now()),
            errors = CASE WHEN jsonb_array_length($4::jsonb) = 0 THEN errors
                ELSE jsonb_append_keep_newest(errors, $4::jsonb, $5, $6) END,
            error_count = error_count + jsonb_array_length($4::jsonb),
            update_time = now(),
            version = version + 1
        WHERE batch_id = $1 AND state = 'RUNNING'
        RETURNING ",
        columns!(),
        "
    )
    SELECT ",
        columns!(),
        ", true AS applied FROM updated
    UNION ALL
    SELECT ",
        columns!(),
        ", false AS applied FROM batches
    WHERE batch_id = $1 AND NOT EXISTS (SELECT FROM updated)"
    ),
    &[
        Type::TEXT,
        Type::TEXT,
        Type::TIMESTAMPTZ,
        Type::JSONB,
        Type::INT4,
        Type::INT4,
    ],
);

/// A keyset-paginated listing: the statement text depends on which filters
/// are set, so there are at most a few hundred shapes, each prepared once
/// per connection.
pub struct Listing<'q> {
    sql: String,
    params: Vec<Param<'q>>,
    types: Vec<Type>,
}

/// A listing parameter, borrowed from the query where possible.
enum Param<'q> {
    Text(&'q str),
    Time(&'q Timestamp),
    States(Vec<&'static str>),
    Limit(i64),
}

impl<'q> Listing<'q> {
    pub fn new(query: &'q ListQuery) -> Self {
        let select = match query.detail {
            Detail::Full => concat!("SELECT ", columns!(), " FROM batches WHERE true"),
            Detail::Basic => concat!(
                "SELECT ",
                with_batch_columns!(basic_column_names),
                " FROM batches WHERE true"
            ),
        };
        let mut listing = Listing::filtered(select, &query.filter);
        let (direction, past) = match query.order {
            Order::NewestFirst => ("DESC", "<"),
            Order::OldestFirst => ("ASC", ">"),
        };
        if let Some(cursor) = &query.after {
            let time = listing.bind(Param::Time(&cursor.start_time));
            let id = listing.bind(Param::Text(cursor.batch_id.as_str()));
            let _ = write!(
                listing.sql,
                " AND (start_time, batch_id) {past} ({time}, {id})"
            );
        }
        let limit = listing.bind(Param::Limit(i64::from(query.page_size.get()) + 1));
        let _ = write!(
            listing.sql,
            " ORDER BY start_time {direction}, batch_id {direction} LIMIT {limit}"
        );
        listing
    }

    /// Totals per (state, provider, model) of the batches `filter` keeps,
    /// in one scan; the caller sums them up per state and per model.
    pub fn stats(filter: &'q BatchFilter) -> Self {
        let mut listing = Listing::filtered(
            // The sums saturate, as the per-state and per-model totals do:
            // no caller should see an error for an overflowing total.
            "SELECT state, provider, model, count(*), \
             least(coalesce(sum(samples_generated), 0), 9223372036854775807)::bigint, \
             least(coalesce(sum(total_tokens), 0), 9223372036854775807)::bigint \
             FROM batches WHERE true",
            filter,
        );
        listing.sql.push_str(" GROUP BY state, provider, model");
        listing
    }

    /// `select` (ending in a WHERE clause) narrowed to the batches `filter` keeps.
    fn filtered(select: &str, filter: &'q BatchFilter) -> Self {
        let mut listing = Listing {
            sql: select.to_owned(),
            params: Vec::new(),
            types: Vec::new(),
        };
        for (column, value) in [
            ("provider", &filter.provider),
            ("model", &filter.model),
            ("topic_filter", &filter.topic_filter),
            ("difficulty_filter", &filter.difficulty_filter),
        ] {
            if let Some(label) = value {
                listing.condition(column, "=", Param::Text(label.as_str()));
            }
        }
        if !filter.states.is_empty() {
            let states = filter.states.iter().map(|s| s.as_str()).collect();
            listing.condition("state", "= ANY", Param::States(states));
        }
        if let Some(after) = &filter.started_after {
            listing.condition("start_time", ">=", Param::Time(after));
        }
        if let Some(before) = &filter.started_before {
            listing.condition("start_time", "<", Param::Time(before));
        }
        listing
    }

    /// Adds `param` and returns its placeholder.
    fn bind(&mut self, param: Param<'q>) -> String {
        self.types.push(match param {
            Param::Text(_) => Type::TEXT,
            Param::Time(_) => Type::TIMESTAMPTZ,
            Param::States(_) => Type::TEXT_ARRAY,
            Param::Limit(_) => Type::INT8,
        });
        self.params.push(param);
        format!("${}", self.params.len())
    }

    fn condition(&mut self, column: &str, operator: &str, param: Param<'q>) {
        let placeholder = self.bind(param);
        let _ = write!(self.sql, " AND {column} {operator}({placeholder})");
    }

    pub fn statement(&self) -> Statement<'_> {
        Statement::new(&self.sql, &self.types)
    }

    pub fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|param| -> &(dyn ToSql + Sync) {
                match param {
                    Param::Text(text) => text,
                    Param::Time(time) => *time,
                    Param::States(states) => states,
                    Param::Limit(limit) => limit,
                }
            })
            .collect()
    }
}
