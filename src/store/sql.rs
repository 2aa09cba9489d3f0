//! The SQL text of the service's statements, next to the parameters each
//! takes (the import's own are in `store/import.rs`).

use std::fmt::Write;

use jiff::Timestamp;
use serde_json::{Map, Value};
use tokio_postgres::types::{Json, ToSql, Type};

use super::params::{Bind, statement};
use crate::domain::{
    BatchError, BatchFilter, BatchLabels, Detail, ListQuery, ModelSwitch, Order, PageSize,
    TextFilters,
};

/// A statement's text and the types of its parameters, which it is
/// prepared with (or, behind a transaction-mode pooler, sent with on every
/// call), so that no statement depends on what the server inferred on some
/// earlier connection.
#[derive(Clone, Copy)]
pub(crate) struct Statement<'s> {
    pub(crate) text: &'s str,
    pub(crate) types: &'s [Type],
}

/// Every column of `batches`, in order, with its type: the one list that the
/// statements below (through [`columns!`]), the import's COPY, its
/// [`COLUMN_TYPES`] and the [`column`] positions that
/// `rows::batch` reads come from. Every statement that returns
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
            version: INT8, labels: JSONB
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
        pub(crate) mod column {
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

/// Finds batch `:batch_id` in its month alone: its start time, from the
/// ids' registry (migration V11), prunes every other month as the statement
/// starts, before any is opened (migration V18).
macro_rules! this_batch {
    () => {
        "batch_id = :batch_id AND start_time = batch_start_time(:batch_id)"
    };
}

/// Whether the registry row `i` is of no batch: its month was dropped, or
/// the batch was deleted by hand.
macro_rules! registered_to_no_batch {
    () => {
        "NOT EXISTS (SELECT FROM batches b \
         WHERE b.start_time = i.start_time AND b.batch_id = i.batch_id)"
    };
}

/// The CTE that registers a new batch's id (see [`this_batch!`]) unless it
/// is taken, and returns its start time (`:start_time`, or now) if it did:
/// the insert of the batch selects from it.
macro_rules! registered {
    () => {
        "WITH registered AS (
        INSERT INTO batch_ids (batch_id, start_time)
        VALUES (:batch_id, COALESCE(:start_time::timestamptz, now()))
        ON CONFLICT (batch_id) DO NOTHING
        RETURNING start_time
    )"
    };
}

/// The end of a conditional write whose CTE `$cte` returns the rows it
/// changed: the changed row with `applied` true, or, when it changed none,
/// the stored row as it is with `applied` false (none: there is no batch
/// `:batch_id`), so that one round trip tells the three apart.
macro_rules! changed_or_stored {
    ($cte:literal) => {
        concat!(
            " SELECT ",
            columns!(),
            ", true AS applied FROM ",
            $cte,
            " UNION ALL SELECT ",
            columns!(),
            ", false AS applied FROM batches WHERE ",
            this_batch!(),
            " AND NOT EXISTS (SELECT FROM ",
            $cte,
            ")"
        )
    };
}

/// The import's bulk load into its months and staging table: every
/// column, in the order `StagedRows::push` encodes them.
pub(crate) const COPY_TO_STAGE: &str = concat!(
    "COPY import_months (",
    columns!(),
    ") FROM STDIN (FORMAT binary)"
);

/// The type of each of [`columns!`], in its order.
pub(crate) const COLUMN_TYPES: &[Type] = &with_batch_columns!(column_types);

/// JSON of the batch's metadata object.
type Metadata<'a> = Json<&'a Map<String, Value>>;

statement! {
    /// Inserts a batch unless its id is registered; returns the new or the
    /// existing row and whether this statement created it. No start time:
    /// now. No row: the id is registered to a batch this statement cannot
    /// see (committed since it began, or gone).
    pub(crate) struct Create<'a> {
        batch_id: &'a str,
        provider: &'a str,
        model: &'a str,
        topic_filter: &'a str,
        difficulty_filter: &'a str,
        reasoning_instruction: &'a str,
        target_count: i32,
        metadata: Metadata<'a>,
        labels: Json<&'a BatchLabels>,
        start_time: Option<Timestamp>,
    } = concat!(
        registered!(),
        ", inserted AS (
        INSERT INTO batches (batch_id, state, provider, model, current_model, topic_filter,
                             difficulty_filter, reasoning_instruction, target_count, metadata,
                             labels, start_time, update_time)
        SELECT :batch_id, 'RUNNING', :provider, :model, :model, :topic_filter,
               :difficulty_filter, :reasoning_instruction, :target_count, :metadata, :labels,
               start_time, now()
        FROM registered
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
        ", false AS created FROM batches WHERE ",
        this_batch!(),
        " AND NOT EXISTS (SELECT FROM inserted)"
    );
}

statement! {
    /// One batch.
    pub(crate) struct Get<'a> { batch_id: &'a str }
        = concat!("SELECT ", columns!(), " FROM batches WHERE ", this_batch!());
}

statement! {
    /// Batches per state, from the daily totals (migration V9).
    pub(crate) struct CountByState {}
        = "SELECT state, sum(batches)::bigint FROM (
        SELECT state, batches FROM batch_totals
        UNION ALL SELECT state, batches FROM batch_total_changes
    ) counted GROUP BY state";
}

statement! {
    /// Folds the changes to the daily totals recorded since the last fold
    /// into them; returns how many it folded.
    pub(crate) struct FoldTotals {} = "SELECT batch_totals_fold()";
}

statement! {
    /// Frees the rows folded away. Autovacuum looks once a minute: by then
    /// a minute of writes (420,000 rows at 7,000 writes/s) would lie dead in
    /// the table that every statistic scans.
    pub(crate) struct VacuumTotalChanges {} = "VACUUM batch_total_changes";
}

statement! {
    /// The oldest transaction running now (of the whole server: ids are
    /// shared by its databases), as text.
    pub(crate) struct OldestRunning {}
        = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text";
}

statement! {
    /// Deletes up to `limit` rows of the change log that every feed has read:
    /// those of transactions older than `below`.
    pub(crate) struct TrimChangeLog<'a> { below: &'a str, limit: i64 }
        = "DELETE FROM batch_change_log WHERE (xid, position) IN (
        SELECT xid, position FROM batch_change_log WHERE xid < :below::xid8 LIMIT :limit)";
}

statement! {
    /// Stops running batches not updated for `stale_after` seconds, appending
    /// an error that says how long each was idle, and keeping the newest
    /// `keep_errors` errors within `keep_error_bytes`, unless another replica
    /// holds advisory lock `lock_key`.
    pub(crate) struct SweepStale {
        stale_after: f64,
        lock_key: i64,
        keep_errors: i32,
        keep_error_bytes: i32,
    } = concat!(
        "WITH sweeper AS (SELECT pg_try_advisory_xact_lock(:lock_key) AS holds)
    UPDATE batches SET
        state = 'STOPPED',
        end_time = greatest(now(), start_time),
        errors = jsonb_append_keep_newest(errors, jsonb_build_array(jsonb_build_object(
            'message', format(
                'stopped by the stale-batch sweep: no update for %s (since %s UTC), '
                'more than the threshold of %s',
                justify_hours(date_trunc('second', now() - update_time)),
                to_char(update_time AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'),
                justify_hours(make_interval(secs => :stale_after::float8))),
            'time', now())), :keep_errors, :keep_error_bytes),
        error_count = error_count + 1,
        update_time = now(),
        version = version + 1
    FROM sweeper
    WHERE sweeper.holds AND state = 'RUNNING'
      AND update_time < now() - make_interval(secs => :stale_after::float8)
    RETURNING ",
        columns!()
    );
}

statement! {
    /// Finished batches in `states` that ended before `ended_before`: counted.
    pub(crate) struct CountPurgeable<'a> { ended_before: Timestamp, states: &'a [&'a str] }
        = "SELECT count(*) FROM batches
    WHERE state <> 'RUNNING' AND state = ANY(:states) AND end_time < :ended_before";
}

statement! {
    /// Deletes up to `limit` finished batches in `states` that ended before
    /// `ended_before`. Bounded so that a large purge never holds many row
    /// locks at once.
    pub(crate) struct PurgeChunk<'a> {
        ended_before: Timestamp,
        states: &'a [&'a str],
        limit: i64,
    } = "WITH doomed AS (
        SELECT batch_id, start_time FROM batches
        WHERE state <> 'RUNNING' AND state = ANY(:states) AND end_time < :ended_before
        LIMIT :limit
    ), forgotten AS (
        DELETE FROM batch_ids i USING doomed d
        WHERE i.batch_id = d.batch_id AND i.start_time = d.start_time
    )
    DELETE FROM batches b USING doomed d
    WHERE b.start_time = d.start_time AND b.batch_id = d.batch_id";
}

statement! {
    /// Adds the month holding `at` (no time: now) to the batches, unless it
    /// is there; says whether it added it.
    pub(crate) struct AddMonth { at: Option<Timestamp> }
        = "SELECT batches_add_month(COALESCE(:at::timestamptz, now()))";
}

statement! {
    /// Adds this month and the `ahead` next ones to the batches, where
    /// missing; returns how many it added.
    pub(crate) struct AddMonthsAhead { ahead: i32 }
        = "SELECT count(*) FILTER (WHERE batches_add_month(now() + make_interval(months => m)))
    FROM generate_series(0, :ahead) AS m";
}

statement! {
    /// Takes the oldest month whose every batch finished and ended before
    /// `ended_before` out of the batches, with its totals (its table is
    /// left to [`DropDetachedMonths`]); returns its start, or NULL when
    /// there is none (or its lock was not had within a second).
    pub(crate) struct DropMonth { ended_before: Timestamp }
        = "SELECT batches_drop_month(:ended_before)";
}

statement! {
    /// Drops the tables of the months [`DropMonth`] took out; returns how
    /// many.
    pub(crate) struct DropDetachedMonths {} = "SELECT batches_drop_detached()";
}

statement! {
    /// The oldest month dropped whole whose ids are still registered.
    pub(crate) struct OldestDroppedMonth {}
        = "SELECT first, next FROM batch_dropped_months ORDER BY first LIMIT 1";
}

statement! {
    /// Clears up to `limit` ids of batches in the dropped month [`first`,
    /// `next`) from the ids' registry, and the month from those to clear
    /// once none is left. The bounds are given, and repeated on the
    /// batches, so that only that month's batches are planned and read (a
    /// write may have added the month back since). Read inside the
    /// statement, they left the planner every month to join: at 100M
    /// batches it took over 5 s with no month to clear.
    pub(crate) struct ForgetDroppedIds { first: Timestamp, next: Timestamp, limit: i64 }
        = "WITH doomed AS (
        SELECT i.batch_id FROM batch_ids i
        WHERE i.start_time >= :first AND i.start_time < :next
          AND NOT EXISTS (SELECT FROM batches b
                          WHERE b.start_time >= :first AND b.start_time < :next
                            AND b.start_time = i.start_time AND b.batch_id = i.batch_id)
        LIMIT :limit
    ), cleared AS (
        DELETE FROM batch_dropped_months
        WHERE first = :first AND (SELECT count(*) FROM doomed) < :limit
          -- Kept while its table waits to be dropped, which it names.
          AND detached IS NULL
    )
    DELETE FROM batch_ids WHERE batch_id IN (SELECT batch_id FROM doomed)";
}

statement! {
    /// Clears `batch_id` from the ids' registry if no batch holds it (its
    /// month was dropped, or it was deleted by hand), so that it can be
    /// used again.
    pub(crate) struct ForgetStaleId<'a> { batch_id: &'a str }
        = concat!(
            "DELETE FROM batch_ids i WHERE batch_id = :batch_id AND ",
            registered_to_no_batch!()
        );
}

statement! {
    /// Takes or extends `replica`'s watch lease by `ttl` seconds, and clears
    /// the lapsed leases of others: every process start names a new replica,
    /// and every write reads this table.
    pub(crate) struct RenewWatchLease<'a> { replica: &'a str, ttl: f64 }
        = "WITH lapsed AS (
        DELETE FROM batch_watch_leases WHERE expires_at < now() AND replica <> :replica
    )
    INSERT INTO batch_watch_leases (replica, expires_at)
    VALUES (:replica, now() + make_interval(secs => :ttl::float8))
    ON CONFLICT (replica) DO UPDATE SET expires_at = EXCLUDED.expires_at";
}

statement! {
    /// The other transactions that hold a write lock on `batches` (writes
    /// take ROW EXCLUSIVE and keep it until they end), narrowed to `among`,
    /// or all of them.
    pub(crate) struct WritersInProgress<'a> { among: Option<&'a [String]> }
        = "SELECT coalesce(array_agg(DISTINCT virtualtransaction), '{}')
    FROM pg_locks
    WHERE locktype = 'relation' AND relation = 'batches'::regclass
      AND mode = 'RowExclusiveLock' AND granted AND pid <> pg_backend_pid()
      AND (:among::text[] IS NULL OR virtualtransaction = ANY(:among))";
}

statement! {
    /// Where the primary's WAL ends now.
    pub(crate) struct WalPosition {} = "SELECT pg_current_wal_lsn()::text";
}

statement! {
    /// How far a replica has replayed the primary's WAL; NULL once it is no
    /// longer in recovery (promoted).
    pub(crate) struct ReplayPosition {}
        = "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text END";
}

statement! {
    /// The batches with these ids.
    pub(crate) struct GetMany<'a> { batch_ids: &'a [&'a str] }
        = concat!(
            "SELECT ",
            columns!(),
            " FROM batch_ids JOIN batches USING (batch_id, start_time) \
             WHERE batch_id = ANY(:batch_ids)"
        );
}

statement! {
    /// The batches with these ids, as [`Detail::Basic`] reads them.
    pub(crate) struct GetManyBasic<'a> { batch_ids: &'a [&'a str] }
        = concat!(
            "SELECT ",
            with_batch_columns!(basic_column_names),
            " FROM batch_ids JOIN batches USING (batch_id, start_time) \
             WHERE batch_id = ANY(:batch_ids)"
        );
}

statement! {
    /// Deletes one batch unless it is RUNNING and `force` is false; says
    /// whether it did, and the state the batch was in (NULL: there was none).
    pub(crate) struct Delete<'a> { batch_id: &'a str, force: bool }
        = concat!(
        "WITH deleted AS (
        DELETE FROM batches
        WHERE ",
        this_batch!(),
        " AND (:force OR state <> 'RUNNING')
        RETURNING batch_id
    ), forgotten AS (
        DELETE FROM batch_ids WHERE batch_id IN (SELECT batch_id FROM deleted)
    )
    SELECT EXISTS (SELECT FROM deleted),
        (SELECT state FROM batches WHERE ",
        this_batch!(),
        ")"
    );
}

statement! {
    /// Adds to a running batch's counters and appends to its lists (keeping
    /// the newest `keep_*` entries within `keep_*_bytes`); returns the row,
    /// changed or not, and whether it changed (so that a missing batch and a
    /// finished one are told apart in the same round trip). `switched_to` is
    /// the model switched to last, or NULL to keep the current model.
    ///
    /// Lists a report adds nothing to are left as they are: the function that
    /// appends costs microseconds, and a rewritten list is stored again (TOAST
    /// and all) even when equal.
    ///
    /// A report whose request id is already recorded is not applied, and
    /// `replay_matches` says whether the record is of this same report (same
    /// `fingerprint`). Two retries racing past the check both update, but the
    /// second one's claim of the request id then fails on the primary key,
    /// undoing its update.
    pub(crate) struct RecordProgress<'a> {
        batch_id: &'a str,
        samples_delta: i64,
        tokens_delta: i64,
        errors: Json<&'a [BatchError]>,
        model_switches: Json<&'a [ModelSwitch]>,
        keep_errors: i32,
        keep_error_bytes: i32,
        keep_switches: i32,
        keep_switch_bytes: i32,
        request_id: Option<&'a str>,
        fingerprint: Option<&'a [u8]>,
        switched_to: Option<&'a str>,
    } = concat!(
        "WITH prior AS (
        SELECT batch_id, fingerprint FROM batch_requests
        WHERE request_id = :request_id::text::uuid
    ), updated AS (
        UPDATE batches SET
            samples_generated = samples_generated + :samples_delta,
            total_tokens = total_tokens + :tokens_delta,
            errors = CASE WHEN jsonb_array_length(:errors::jsonb) = 0 THEN errors
                ELSE jsonb_append_keep_newest(errors, :errors::jsonb, :keep_errors,
                                              :keep_error_bytes) END,
            error_count = error_count + jsonb_array_length(:errors::jsonb),
            model_switches = CASE
                WHEN jsonb_array_length(:model_switches::jsonb) = 0 THEN model_switches
                ELSE jsonb_append_keep_newest(model_switches, :model_switches::jsonb,
                                              :keep_switches, :keep_switch_bytes) END,
            current_model = coalesce(:switched_to, current_model),
            update_time = now(),
            version = version + 1
        WHERE ",
        this_batch!(),
        " AND state = 'RUNNING' AND NOT EXISTS (SELECT FROM prior)
        RETURNING ",
        columns!(),
        "
    ), claimed AS (
        INSERT INTO batch_requests (request_id, batch_id, fingerprint)
        SELECT :request_id::text::uuid, batch_id, :fingerprint FROM updated
        WHERE :request_id::text IS NOT NULL
    )
    SELECT ",
        columns!(),
        ", true AS applied, NULL::boolean AS replay_matches FROM updated
    UNION ALL
    SELECT ",
        columns!(),
        ", false AS applied,
        (SELECT batch_id = :batch_id AND fingerprint = :fingerprint FROM prior) AS replay_matches
    FROM batches
    WHERE ",
        this_batch!(),
        " AND NOT EXISTS (SELECT FROM updated)"
    );
}

statement! {
    /// Corrects the descriptive fields whose `set_*` is true, unless the
    /// batch is no longer at `expected_version` and `expected_update_time`
    /// (both NULL: whatever it is at); counters, state and times stay.
    /// Returns the row, changed or not, like [`RecordProgress`].
    pub(crate) struct Update<'a> {
        batch_id: &'a str,
        set_topic_filter: bool,
        topic_filter: &'a str,
        set_difficulty_filter: bool,
        difficulty_filter: &'a str,
        set_reasoning_instruction: bool,
        reasoning_instruction: &'a str,
        set_target_count: bool,
        target_count: i32,
        set_metadata: bool,
        metadata: Option<Metadata<'a>>,
        set_labels: bool,
        labels: Option<Json<&'a BatchLabels>>,
        expected_version: Option<i64>,
        expected_update_time: Option<Timestamp>,
    } = concat!(
        "WITH updated AS (
        UPDATE batches SET
            topic_filter = CASE WHEN :set_topic_filter THEN :topic_filter
                ELSE topic_filter END,
            difficulty_filter = CASE WHEN :set_difficulty_filter THEN :difficulty_filter
                ELSE difficulty_filter END,
            reasoning_instruction = CASE WHEN :set_reasoning_instruction
                THEN :reasoning_instruction ELSE reasoning_instruction END,
            target_count = CASE WHEN :set_target_count THEN :target_count
                ELSE target_count END,
            metadata = CASE WHEN :set_metadata THEN :metadata::jsonb ELSE metadata END,
            labels = CASE WHEN :set_labels THEN :labels::jsonb ELSE labels END,
            version = version + 1
        WHERE ",
        this_batch!(),
        "
          AND (:expected_version::bigint IS NULL OR version = :expected_version)
          AND (:expected_update_time::timestamptz IS NULL
               OR update_time = :expected_update_time)
        RETURNING ",
        columns!(),
        "
    )",
        changed_or_stored!("updated")
    );
}

statement! {
    /// Forgets up to `limit` request ids recorded more than `age` seconds ago.
    pub(crate) struct ForgetRequests { age: f64, limit: i64 }
        = "DELETE FROM batch_requests WHERE request_id IN (
        SELECT request_id FROM batch_requests
        WHERE created_at < now() - make_interval(secs => :age::float8)
        LIMIT :limit)";
}

statement! {
    /// Creates a batch from its whole state, or brings the stored one up to
    /// date unless it is ahead (more samples, tokens, errors or switches): a
    /// finished batch keeps its state and end time. Returns the row, changed
    /// or not, like [`RecordProgress`], or none, like [`Create`]. `errors`
    /// and `model_switches` are the lists as kept; no start time means now,
    /// and no end time means now (used only when `state` is not RUNNING).
    pub struct Save<'a> {
        batch_id: &'a str,
        state: &'a str,
        provider: &'a str,
        model: &'a str,
        current_model: &'a str,
        topic_filter: &'a str,
        difficulty_filter: &'a str,
        reasoning_instruction: &'a str,
        target_count: i32,
        samples_generated: i64,
        total_tokens: i64,
        errors: Json<&'a [BatchError]>,
        error_count: i64,
        model_switches: Json<&'a [ModelSwitch]>,
        switch_count: i64,
        metadata: Metadata<'a>,
        labels: Json<&'a BatchLabels>,
        start_time: Option<Timestamp>,
        end_time: Option<Timestamp>,
    } = concat!(
        registered!(),
        ", inserted AS (
        INSERT INTO batches (batch_id, state, provider, model, current_model, topic_filter,
                             difficulty_filter, reasoning_instruction, target_count,
                             samples_generated, total_tokens, errors, error_count,
                             model_switches, metadata, labels, start_time, end_time,
                             update_time)
        SELECT :batch_id, :state, :provider, :model, :current_model, :topic_filter,
               :difficulty_filter, :reasoning_instruction, :target_count, :samples_generated,
               :total_tokens, :errors, :error_count, :model_switches, :metadata, :labels,
               start_time,
               CASE WHEN :state <> 'RUNNING' THEN COALESCE(:end_time::timestamptz, now()) END,
               now()
        FROM registered
        RETURNING ",
        columns!(),
        "
    ), updated AS (
        UPDATE batches SET
            samples_generated = :samples_generated,
            total_tokens = :total_tokens,
            -- Lists only grow: one of the same length is the stored one, and
            -- is not written (and TOASTed) again.
            errors = CASE WHEN :error_count = error_count THEN errors ELSE :errors END,
            error_count = :error_count,
            model_switches = CASE
                WHEN :switch_count::bigint = jsonb_array_length(model_switches)
                    THEN model_switches
                ELSE :model_switches END,
            current_model = :current_model,
            end_time = CASE WHEN state = 'RUNNING' AND :state <> 'RUNNING'
                THEN COALESCE(:end_time::timestamptz, now()) ELSE end_time END,
            state = CASE WHEN state = 'RUNNING' THEN :state ELSE state END,
            update_time = now(),
            version = version + 1
        WHERE ",
        this_batch!(),
        " AND NOT EXISTS (SELECT FROM registered)
          AND :samples_generated >= samples_generated
          AND :total_tokens >= total_tokens
          AND :error_count >= error_count
          AND :switch_count::bigint >= jsonb_array_length(model_switches)
        RETURNING ",
        columns!(),
        "
    ), saved AS (
        SELECT * FROM inserted UNION ALL SELECT * FROM updated
    )",
        changed_or_stored!("saved")
    );
}

statement! {
    /// Moves a running batch to final state `state`, like [`RecordProgress`],
    /// appending `errors` (keeping the newest `keep_errors` within
    /// `keep_error_bytes`). No end time means now.
    pub struct Finish<'a> {
        batch_id: &'a str,
        state: &'a str,
        end_time: Option<Timestamp>,
        errors: Json<&'a [&'a BatchError]>,
        keep_errors: i32,
        keep_error_bytes: i32,
    } = concat!(
        "WITH updated AS (
        UPDATE batches SET
            state = :state,
            end_time = COALESCE(:end_time::timestamptz, now()),
            errors = CASE WHEN jsonb_array_length(:errors::jsonb) = 0 THEN errors
                ELSE jsonb_append_keep_newest(errors, :errors::jsonb, :keep_errors,
                                              :keep_error_bytes) END,
            error_count = error_count + jsonb_array_length(:errors::jsonb),
            update_time = now(),
            version = version + 1
        WHERE ",
        this_batch!(),
        " AND state = 'RUNNING'
        RETURNING ",
        columns!(),
        "
    )",
        changed_or_stored!("updated")
    );
}

/// A keyset-paginated listing: the statement text depends on which filters
/// are set, so there are at most a few hundred shapes, each prepared once
/// per connection.
pub(crate) struct Listing<'q> {
    sql: String,
    params: Vec<Param<'q>>,
    types: Vec<Type>,
}

/// A listing parameter, borrowed from the query where possible.
enum Param<'q> {
    Text(&'q str),
    Time(Timestamp),
    States(Vec<&'static str>),
    Labels(Json<&'q BatchLabels>),
}

impl<'q> Listing<'q> {
    pub(crate) fn new(query: &'q ListQuery) -> Self {
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
            let time = listing.bind(Param::Time(cursor.start_time));
            let id = listing.bind(Param::Text(cursor.batch_id.as_str()));
            // The plain bound on start_time is redundant, but only it lets
            // the planner skip the months past the cursor.
            let _ = write!(
                listing.sql,
                " AND (start_time, batch_id) {past} ({time}, {id}) AND start_time {past}= {time}"
            );
        }
        // One row past the page tells whether another follows.
        let limit = fetched_page(query.page_size.get()) + 1;
        let _ = write!(
            listing.sql,
            " ORDER BY start_time {direction}, batch_id {direction} LIMIT {limit}"
        );
        listing
    }

    /// Totals per (state, provider, model) of the batches `filter` keeps;
    /// the caller sums them up per state and per model.
    ///
    /// The daily totals (migration V9) answer for the whole UTC days the
    /// filter spans, and only the batches of a part day at either end are
    /// counted one by one. A filter on what the totals are not kept by
    /// (topic, difficulty, labels), or a span within a day or two, counts
    /// every batch it keeps, in one scan.
    pub(crate) fn stats(filter: &'q BatchFilter) -> Self {
        let Some(days) = WholeDays::within(filter) else {
            // The sums saturate, as the per-state and per-model totals do:
            // no caller should see an error for an overflowing total.
            let mut listing = Listing::filtered(
                "SELECT state, provider, model, count(*), \
                 least(coalesce(sum(samples_generated), 0), 9223372036854775807)::bigint, \
                 least(coalesce(sum(total_tokens), 0), 9223372036854775807)::bigint \
                 FROM batches WHERE true",
                filter,
            );
            listing.sql.push_str(" GROUP BY state, provider, model");
            return listing;
        };
        let mut listing = Listing::empty(
            "SELECT state, provider, model, sum(batches)::bigint, \
             least(sum(samples), 9223372036854775807)::bigint, \
             least(sum(tokens), 9223372036854775807)::bigint FROM (",
        );
        for table in ["batch_totals", "batch_total_changes"] {
            let _ = write!(
                listing.sql,
                "SELECT state, provider, model, batches, samples, tokens FROM {table} WHERE true"
            );
            listing.grouped_by(filter);
            if let Some(first) = days.first {
                let first = listing.bind(Param::Time(first));
                let _ = write!(
                    listing.sql,
                    " AND day >= ({first} AT TIME ZONE 'UTC')::date"
                );
            }
            if let Some(end) = days.end {
                let end = listing.bind(Param::Time(end));
                let _ = write!(listing.sql, " AND day < ({end} AT TIME ZONE 'UTC')::date");
            }
            listing.sql.push_str(" UNION ALL ");
        }
        for (from, to) in days.part_days(filter) {
            listing.sql.push_str(
                "SELECT state, provider, model, 1, samples_generated::numeric, \
                 total_tokens::numeric FROM batches WHERE true",
            );
            listing.grouped_by(filter);
            listing.condition("start_time", ">=", Param::Time(from));
            listing.condition("start_time", "<", Param::Time(to));
            listing.sql.push_str(" UNION ALL ");
        }
        listing
            .sql
            .truncate(listing.sql.len() - " UNION ALL ".len());
        listing
            .sql
            .push_str(") counted GROUP BY state, provider, model HAVING sum(batches) > 0");
        listing
    }

    fn empty(select: &str) -> Self {
        Listing {
            sql: select.to_owned(),
            params: Vec::new(),
            types: Vec::new(),
        }
    }

    /// `select` (ending in a WHERE clause) narrowed to the batches `filter` keeps.
    fn filtered(select: &str, filter: &'q BatchFilter) -> Self {
        let mut listing = Listing::empty(select);
        for (column, _, wanted) in filter.texts.each() {
            if let Some(label) = wanted {
                listing.condition(column, "=", Param::Text(label.as_str()));
            }
        }
        listing.in_states(filter);
        if let Some(after) = filter.started_after {
            listing.condition("start_time", ">=", Param::Time(after));
        }
        if let Some(before) = filter.started_before {
            listing.condition("start_time", "<", Param::Time(before));
        }
        if !filter.labels.is_empty() {
            // Containment, which the labels' GIN index answers (migration V8).
            listing.condition("labels", "@>", Param::Labels(Json(&filter.labels)));
        }
        listing
    }

    /// Narrows the rows to the states, providers and models `filter` keeps:
    /// all the daily totals are kept by, with the day.
    fn grouped_by(&mut self, filter: &'q BatchFilter) {
        if let Some(provider) = &filter.texts.provider {
            self.condition("provider", "=", Param::Text(provider.as_str()));
        }
        if let Some(model) = &filter.texts.model {
            self.condition("model", "=", Param::Text(model.as_str()));
        }
        self.in_states(filter);
    }

    fn in_states(&mut self, filter: &BatchFilter) {
        if !filter.states.is_empty() {
            let states = filter.states.iter().map(|s| s.as_str()).collect();
            self.condition("state", "= ANY", Param::States(states));
        }
    }

    /// Adds `param` and returns its placeholder.
    fn bind(&mut self, param: Param<'q>) -> String {
        self.types.push(match param {
            Param::Text(_) => Type::TEXT,
            Param::Time(_) => Type::TIMESTAMPTZ,
            Param::States(_) => Type::TEXT_ARRAY,
            Param::Labels(_) => Type::JSONB,
        });
        self.params.push(param);
        format!("${}", self.params.len())
    }

    fn condition(&mut self, column: &str, operator: &str, param: Param<'q>) {
        let placeholder = self.bind(param);
        let _ = write!(self.sql, " AND {column} {operator}({placeholder})");
    }
}

impl Bind for Listing<'_> {
    fn statement(&self) -> Statement<'_> {
        Statement {
            text: &self.sql,
            types: &self.types,
        }
    }

    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|param| -> &(dyn ToSql + Sync) {
                match param {
                    Param::Text(text) => text,
                    Param::Time(time) => time,
                    Param::States(states) => states,
                    Param::Labels(labels) => labels,
                }
            })
            .collect()
    }
}

/// The page sizes a listing's statement is written for, with its LIMIT in
/// the text: given as a parameter, the LIMIT kept PostgreSQL from ever
/// settling on a generic plan, so it planned every listing afresh (0.59 ms
/// a call in psql on a million batches, 0.28–0.35 ms once planned; see
/// `docs/PERFORMANCE.md`). A few sizes keep the statements few: a page of
/// another size reads up to the next, and the rest is not decoded.
const PAGE_SIZES: [u16; 7] = [10, 20, 50, 100, 200, 500, PageSize::MAX];

/// The size of page fetched for a page of `page_size`.
fn fetched_page(page_size: u16) -> u16 {
    PAGE_SIZES
        .into_iter()
        .find(|&size| size >= page_size)
        .unwrap_or(PageSize::MAX)
}

/// The whole UTC days, `[first, end)`, within a [`BatchFilter`]'s start
/// times that the daily totals can answer for; `None` for either end
/// leaves that side open.
struct WholeDays {
    first: Option<Timestamp>,
    end: Option<Timestamp>,
}

impl WholeDays {
    const DAY_NANOS: i128 = 86_400_000_000_000;

    /// `None` when the totals cannot answer for `filter`: it looks at what
    /// they are not kept by, or spans no whole day.
    fn within(filter: &BatchFilter) -> Option<Self> {
        let TextFilters {
            topic_filter,
            difficulty_filter,
            ..
        } = &filter.texts;
        if topic_filter.is_some() || difficulty_filter.is_some() || !filter.labels.is_empty() {
            return None;
        }
        let days = WholeDays {
            first: match filter.started_after {
                Some(after) => Some(Self::midnight_at_or_after(after)?),
                None => None,
            },
            end: match filter.started_before {
                Some(before) => Some(Self::midnight_at_or_before(before)?),
                None => None,
            },
        };
        match (days.first, days.end) {
            (Some(first), Some(end)) if first >= end => None,
            _ => Some(days),
        }
    }

    /// The part days at either end of the filter's span, `[from, to)`.
    fn part_days(&self, filter: &BatchFilter) -> impl Iterator<Item = (Timestamp, Timestamp)> {
        let before_first = filter.started_after.zip(self.first);
        let after_end = self.end.zip(filter.started_before);
        before_first
            .into_iter()
            .chain(after_end)
            .filter(|(from, to)| from < to)
    }

    /// `None` before the first midnight a timestamp can hold.
    fn midnight_at_or_before(time: Timestamp) -> Option<Timestamp> {
        let nanos = time.as_nanosecond();
        Timestamp::from_nanosecond(nanos - nanos.rem_euclid(Self::DAY_NANOS)).ok()
    }

    /// `None` past the last midnight a timestamp can hold.
    fn midnight_at_or_after(time: Timestamp) -> Option<Timestamp> {
        let nanos = time.as_nanosecond();
        match nanos.rem_euclid(Self::DAY_NANOS) {
            0 => Some(time),
            into_day => Timestamp::from_nanosecond(nanos - into_day + Self::DAY_NANOS).ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_fetched_at_a_few_sizes_at_least_as_large() {
        assert_eq!(fetched_page(1), 10);
        assert_eq!(fetched_page(50), 50);
        assert_eq!(fetched_page(51), 100);
        assert_eq!(fetched_page(999), 1_000);
        assert_eq!(fetched_page(PageSize::MAX), PageSize::MAX);
        for size in 1..=PageSize::MAX {
            assert!(fetched_page(size) >= size);
        }
    }
}
