//! Requests to domain types, parsed once at the edge: every violation names
//! the request field that caused it.

use std::{collections::HashMap, time::Duration};

use jiff::Timestamp;
use prost::Message;
use prost_types::Struct;

use super::json::struct_to_json;
use crate::domain::{
    BatchError, BatchFilter, BatchGet, BatchId, BatchLabels, Correction, Cursor, Detail, Etag,
    FieldViolation, Finish, Idempotency, InvalidValue, JsonObject, Label, ListQuery,
    MAX_ENTRIES_PER_REPORT, MAX_KEPT_ERROR_BYTES, MAX_KEPT_ERRORS, MAX_KEPT_SWITCH_BYTES,
    MAX_KEPT_SWITCHES, ModelSwitch, NewBatch, NonNegative, Order, PageSize, Progress, Prose, Purge,
    RequestId, Save, StaleThreshold, State, TerminalState, TextFilters, keep_newest,
    with_text_filters,
};
use crate::proto;

impl TryFrom<proto::CreateBatchRequest> for NewBatch {
    type Error = FieldViolation;

    fn try_from(request: proto::CreateBatchRequest) -> Result<Self, Self::Error> {
        let mut batch = required(request.batch, "batch")?;
        let batch_id = match (request.batch_id.is_empty(), batch.batch_id.is_empty()) {
            (true, true) => None,
            (false, true) => Some(parse_batch_id(request.batch_id, "batch_id")?),
            (true, false) => Some(parse_batch_id(
                std::mem::take(&mut batch.batch_id),
                "batch.batch_id",
            )?),
            (false, false) if request.batch_id == batch.batch_id => {
                Some(parse_batch_id(request.batch_id, "batch_id")?)
            }
            (false, false) => {
                return Err(InvalidValue(format!(
                    "{:?} differs from batch.batch_id {:?}; set one of them, or both to the same id",
                    request.batch_id, batch.batch_id
                ))
                .at("batch_id"));
            }
        };
        new_batch(batch_id, batch)
    }
}

/// The fields of a create, taken from `batch` (the request's `batch` field).
fn new_batch(batch_id: Option<BatchId>, batch: proto::Batch) -> Result<NewBatch, FieldViolation> {
    Ok(NewBatch {
        batch_id,
        provider: label(batch.provider, "batch.provider")?,
        model: label(batch.model, "batch.model")?,
        topic_filter: label(batch.topic_filter, "batch.topic_filter")?,
        difficulty_filter: label(batch.difficulty_filter, "batch.difficulty_filter")?,
        reasoning_instruction: prose(batch.reasoning_instruction, "batch.reasoning_instruction")?,
        target_count: non_negative(batch.target_count, "batch.target_count")?,
        metadata: json_object(batch.metadata, "batch.metadata")?,
        labels: BatchLabels::parse(batch.labels, "batch.labels")?,
        start_time: batch
            .start_time
            .map(|time| timestamp(time, "batch.start_time"))
            .transpose()?,
    })
}

impl TryFrom<proto::SaveBatchRequest> for Save {
    type Error = FieldViolation;

    fn try_from(request: proto::SaveBatchRequest) -> Result<Self, Self::Error> {
        let mut batch = required(request.batch, "batch")?;
        if batch.batch_id.is_empty() {
            return Err(
                InvalidValue("is required: a save names its batch".into()).at("batch.batch_id")
            );
        }
        let batch_id = parse_batch_id(std::mem::take(&mut batch.batch_id), "batch.batch_id")?;
        let state = state(batch.state).map_err(|e| e.at("batch.state"))?;
        let end_time = match (state, batch.end_time.take()) {
            (State::Running, Some(_)) => {
                return Err(InvalidValue("must be unset while state is RUNNING".into())
                    .at("batch.end_time"));
            }
            (_, end_time) => end_time
                .map(|time| timestamp(time, "batch.end_time"))
                .transpose()?,
        };
        let mut errors = std::mem::take(&mut batch.errors)
            .into_iter()
            .enumerate()
            .map(|(i, error)| batch_error(error, &format!("batch.errors[{i}]"), None))
            .collect::<Result<Vec<_>, _>>()?;
        let error_count = errors.len() as i64;
        keep_newest(&mut errors, MAX_KEPT_ERRORS, MAX_KEPT_ERROR_BYTES);
        let mut model_switches = std::mem::take(&mut batch.model_switches)
            .into_iter()
            .enumerate()
            .map(|(i, switch)| model_switch(switch, &format!("batch.model_switches[{i}]"), None))
            .collect::<Result<Vec<_>, _>>()?;
        let switch_count = model_switches.len() as i64;
        keep_newest(
            &mut model_switches,
            MAX_KEPT_SWITCHES,
            MAX_KEPT_SWITCH_BYTES,
        );
        Ok(Self {
            state,
            current_model: label(
                std::mem::take(&mut batch.current_model),
                "batch.current_model",
            )?,
            samples_generated: non_negative(batch.samples_generated, "batch.samples_generated")?,
            total_tokens: non_negative(batch.total_tokens, "batch.total_tokens")?,
            errors,
            error_count,
            model_switches,
            switch_count,
            end_time,
            created: new_batch(Some(batch_id.clone()), batch)?,
            batch_id,
        })
    }
}

impl TryFrom<proto::RecordProgressRequest> for Progress {
    type Error = FieldViolation;

    fn try_from(mut request: proto::RecordProgressRequest) -> Result<Self, Self::Error> {
        let idempotency = idempotency(&mut request)?;
        let received = now();
        limit_entries(request.errors.len(), "errors")?;
        limit_entries(request.model_switches.len(), "model_switches")?;
        Ok(Self {
            batch_id: parse_batch_id(request.batch_id, "batch_id")?,
            samples_delta: non_negative(request.samples_delta, "samples_delta")?,
            tokens_delta: non_negative(request.tokens_delta, "tokens_delta")?,
            errors: request
                .errors
                .into_iter()
                .enumerate()
                .map(|(i, error)| batch_error(error, &format!("errors[{i}]"), Some(received)))
                .collect::<Result<_, _>>()?,
            model_switches: request
                .model_switches
                .into_iter()
                .enumerate()
                .map(|(i, switch)| {
                    model_switch(switch, &format!("model_switches[{i}]"), Some(received))
                })
                .collect::<Result<_, _>>()?,
            idempotency,
        })
    }
}

/// The report's request id, if it has one, with a digest of the rest of the
/// report. prost encodes a message canonically (fields in order, `Struct`
/// keys sorted), so a retry of the same report has the same digest.
fn idempotency(
    request: &mut proto::RecordProgressRequest,
) -> Result<Option<Idempotency>, FieldViolation> {
    let request_id = std::mem::take(&mut request.request_id);
    if request_id.is_empty() {
        return Ok(None);
    }
    let request_id = RequestId::parse(&request_id).map_err(|e| e.at("request_id"))?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &request.encode_to_vec());
    let mut fingerprint = [0; 32];
    fingerprint.copy_from_slice(digest.as_ref());
    Ok(Some(Idempotency {
        request_id,
        fingerprint,
    }))
}

impl TryFrom<proto::FinishBatchRequest> for Finish {
    type Error = FieldViolation;

    fn try_from(request: proto::FinishBatchRequest) -> Result<Self, Self::Error> {
        let state = state(request.state)
            .and_then(TerminalState::try_from)
            .map_err(|e| e.at("state"))?;
        Ok(Self {
            batch_id: parse_batch_id(request.batch_id, "batch_id")?,
            state,
            end_time: request
                .end_time
                .map(|time| timestamp(time, "end_time"))
                .transpose()?,
            error: request
                .error
                .map(|error| batch_error(error, "error", Some(now())))
                .transpose()?,
        })
    }
}

/// The text filters of a request that carries the ListBatches filters, as
/// their own fields of the same names.
macro_rules! texts_of_request {
    ($request:ident; $($name:ident: $title:literal),*) => {
        TextFilters {
            $($name: optional_label($request.$name, stringify!($name))?,)*
        }
    };
}

impl TryFrom<proto::ListBatchesRequest> for ListQuery {
    type Error = FieldViolation;

    fn try_from(request: proto::ListBatchesRequest) -> Result<Self, Self::Error> {
        let filter = filter(
            &request.states,
            with_text_filters!(texts_of_request request),
            request.labels,
            request.started_after,
            request.started_before,
        )?;
        let order = match proto::list_batches_request::Order::try_from(request.order) {
            Ok(proto::list_batches_request::Order::Unspecified)
            | Ok(proto::list_batches_request::Order::StartTimeDesc) => Order::NewestFirst,
            Ok(proto::list_batches_request::Order::StartTimeAsc) => Order::OldestFirst,
            Err(_) => {
                return Err(InvalidValue(format!(
                    "unknown value {}; use START_TIME_DESC or START_TIME_ASC",
                    request.order
                ))
                .at("order"));
            }
        };
        let after = if request.page_token.is_empty() {
            None
        } else {
            Some(
                Cursor::from_token(&request.page_token, &filter, order)
                    .map_err(|e| e.at("page_token"))?,
            )
        };
        Ok(Self {
            page_size: PageSize::parse(request.page_size).map_err(|e| e.at("page_size"))?,
            filter,
            order,
            after,
            detail: detail(request.view)?,
        })
    }
}

impl TryFrom<proto::UpdateBatchRequest> for Correction {
    type Error = FieldViolation;

    fn try_from(request: proto::UpdateBatchRequest) -> Result<Self, Self::Error> {
        let batch = required(request.batch, "batch")?;
        if batch.batch_id.is_empty() {
            return Err(
                InvalidValue("is required: an update names its batch".into()).at("batch.batch_id"),
            );
        }
        let fields: Vec<&str> = match &request.update_mask {
            None => Correction::FIELDS
                .into_iter()
                .filter(|field| match *field {
                    "topic_filter" => !batch.topic_filter.is_empty(),
                    "difficulty_filter" => !batch.difficulty_filter.is_empty(),
                    "reasoning_instruction" => !batch.reasoning_instruction.is_empty(),
                    "target_count" => batch.target_count != 0,
                    "labels" => !batch.labels.is_empty(),
                    _ => batch.metadata.is_some(),
                })
                .collect(),
            Some(mask) if mask.paths.iter().any(|path| path == "*") => Correction::FIELDS.into(),
            Some(mask) => mask
                .paths
                .iter()
                .enumerate()
                .map(|(i, path)| {
                    correctable(path).map_err(|e| e.at(format!("update_mask.paths[{i}]")))
                })
                .collect::<Result<_, _>>()?,
        };
        if fields.is_empty() {
            return Err(InvalidValue(format!(
                "names no field to correct; name some of {}",
                Correction::FIELDS.join(", ")
            ))
            .at("update_mask"));
        }
        let wanted = |field: &str| fields.contains(&field);
        Ok(Self {
            batch_id: parse_batch_id(batch.batch_id, "batch.batch_id")?,
            topic_filter: wanted("topic_filter")
                .then(|| label(batch.topic_filter, "batch.topic_filter"))
                .transpose()?,
            difficulty_filter: wanted("difficulty_filter")
                .then(|| label(batch.difficulty_filter, "batch.difficulty_filter"))
                .transpose()?,
            reasoning_instruction: wanted("reasoning_instruction")
                .then(|| prose(batch.reasoning_instruction, "batch.reasoning_instruction"))
                .transpose()?,
            target_count: wanted("target_count")
                .then(|| non_negative(batch.target_count, "batch.target_count"))
                .transpose()?,
            metadata: wanted("metadata")
                .then(|| json_object(batch.metadata, "batch.metadata"))
                .transpose()?,
            labels: wanted("labels")
                .then(|| BatchLabels::parse(batch.labels, "batch.labels"))
                .transpose()?,
            expected: (!batch.etag.is_empty())
                .then(|| Etag::parse(&batch.etag).map_err(|e| e.at("batch.etag")))
                .transpose()?,
        })
    }
}

/// The field a mask path names, if a correction may change it.
fn correctable(path: &str) -> Result<&'static str, InvalidValue> {
    if let Some(field) = Correction::FIELDS.into_iter().find(|field| *field == path) {
        return Ok(field);
    }
    Err(InvalidValue(match path {
        "batch_id" | "provider" | "model" | "start_time" => {
            format!(
                "{path} is immutable; correctable: {}",
                Correction::FIELDS.join(", ")
            )
        }
        "state" | "samples_generated" | "total_tokens" | "errors" | "error_count"
        | "model_switches" | "end_time" | "update_time" | "etag" | "current_model" => format!(
            "{path} changes only through progress and finishing; correctable: {}",
            Correction::FIELDS.join(", ")
        ),
        _ => format!("{path:?} is not a field of Batch"),
    }))
}

impl TryFrom<proto::BatchGetBatchesRequest> for BatchGet {
    type Error = FieldViolation;

    fn try_from(request: proto::BatchGetBatchesRequest) -> Result<Self, Self::Error> {
        let count = request.batch_ids.len();
        if !(1..=BatchGet::MAX_IDS).contains(&count) {
            return Err(InvalidValue(format!(
                "holds {count} ids; ask for 1 to {}",
                BatchGet::MAX_IDS
            ))
            .at("batch_ids"));
        }
        Ok(Self {
            batch_ids: request
                .batch_ids
                .into_iter()
                .enumerate()
                .map(|(i, id)| parse_batch_id(id, &format!("batch_ids[{i}]")))
                .collect::<Result<_, _>>()?,
            detail: detail(request.view)?,
        })
    }
}

/// WatchBatches and GetBatchStats carry the ListBatches filters and nothing
/// else.
macro_rules! filter_request {
    ($($request:ty),*) => {$(
        impl TryFrom<$request> for BatchFilter {
            type Error = FieldViolation;

            fn try_from(request: $request) -> Result<Self, Self::Error> {
                filter(
                    &request.states,
                    with_text_filters!(texts_of_request request),
                    request.labels,
                    request.started_after,
                    request.started_before,
                )
            }
        }
    )*};
}

filter_request!(proto::WatchBatchesRequest, proto::GetBatchStatsRequest);

impl TryFrom<proto::PurgeBatchesRequest> for Purge {
    type Error = FieldViolation;

    fn try_from(request: proto::PurgeBatchesRequest) -> Result<Self, Self::Error> {
        let older_than = timestamp(required(request.older_than, "older_than")?, "older_than")?;
        let mut states = request
            .states
            .iter()
            .enumerate()
            .map(|(i, &number)| {
                state(number)
                    .and_then(TerminalState::try_from)
                    .map(TerminalState::state)
                    .map_err(|e| e.at(format!("states[{i}]")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if states.is_empty() {
            states = vec![State::Completed, State::Stopped, State::Failed];
        }
        Ok(Self {
            older_than,
            states,
            dry_run: request.dry_run,
        })
    }
}

/// The stale threshold a sweep request asks for, else `default`.
pub(crate) fn stale_after(
    request: &proto::SweepStaleBatchesRequest,
    default: Option<StaleThreshold>,
) -> Result<StaleThreshold, FieldViolation> {
    let Some(requested) = request.stale_after else {
        return default.ok_or_else(|| {
            InvalidValue("is required: the server's STALE_AFTER is 0 (sweeping off)".into())
                .at("stale_after")
        });
    };
    Duration::try_from(requested)
        .map_err(|_| InvalidValue("must be at least one second".into()))
        .and_then(StaleThreshold::parse)
        .map_err(|e| e.at("stale_after"))
}

fn filter(
    states: &[i32],
    texts: TextFilters,
    labels: HashMap<String, String>,
    started_after: Option<prost_types::Timestamp>,
    started_before: Option<prost_types::Timestamp>,
) -> Result<BatchFilter, FieldViolation> {
    Ok(BatchFilter {
        states: states
            .iter()
            .enumerate()
            .map(|(i, &number)| state(number).map_err(|e| e.at(format!("states[{i}]"))))
            .collect::<Result<_, _>>()?,
        texts,
        labels: BatchLabels::parse(labels, "labels")?,
        started_after: started_after
            .map(|time| timestamp(time, "started_after"))
            .transpose()?,
        started_before: started_before
            .map(|time| timestamp(time, "started_before"))
            .transpose()?,
    })
}

/// The batch id of a request that names one.
pub(crate) fn parse_batch_id(value: String, field: &str) -> Result<BatchId, FieldViolation> {
    BatchId::parse(value).map_err(|e| e.at(field))
}

fn state(number: i32) -> Result<State, InvalidValue> {
    match proto::batch::State::try_from(number) {
        Ok(proto::batch::State::Running) => Ok(State::Running),
        Ok(proto::batch::State::Completed) => Ok(State::Completed),
        Ok(proto::batch::State::Stopped) => Ok(State::Stopped),
        Ok(proto::batch::State::Failed) => Ok(State::Failed),
        Ok(proto::batch::State::Unspecified) => Err(InvalidValue(
            "is required: RUNNING, COMPLETED, STOPPED or FAILED".into(),
        )),
        Err(_) => Err(InvalidValue(format!(
            "unknown value {number}: use RUNNING, COMPLETED, STOPPED or FAILED"
        ))),
    }
}

/// An error entry; one without a time gets `received`, if given.
fn batch_error(
    error: proto::BatchError,
    field: &str,
    received: Option<Timestamp>,
) -> Result<BatchError, FieldViolation> {
    if error.message.is_empty() {
        return Err(InvalidValue("is required".into()).at(format!("{field}.message")));
    }
    Ok(BatchError {
        message: prose(error.message, &format!("{field}.message"))?,
        time: optional_time(error.time, &format!("{field}.time"), received)?,
        details: json_object(error.details, &format!("{field}.details"))?,
    })
}

/// A model switch; one without a time gets `received`, if given.
fn model_switch(
    switch: proto::ModelSwitch,
    field: &str,
    received: Option<Timestamp>,
) -> Result<ModelSwitch, FieldViolation> {
    Ok(ModelSwitch {
        from_model: label(switch.from_model, &format!("{field}.from_model"))?,
        to_model: label(switch.to_model, &format!("{field}.to_model"))?,
        provider: label(switch.provider, &format!("{field}.provider"))?,
        reason: prose(switch.reason, &format!("{field}.reason"))?,
        at_sample: non_negative(switch.at_sample, &format!("{field}.at_sample"))?,
        time: optional_time(switch.time, &format!("{field}.time"), received)?,
        details: json_object(switch.details, &format!("{field}.details"))?,
    })
}

/// A message field the request must set.
fn required<T>(value: Option<T>, field: &str) -> Result<T, FieldViolation> {
    value.ok_or_else(|| InvalidValue("is required".into()).at(field))
}

fn limit_entries(count: usize, field: &str) -> Result<(), FieldViolation> {
    if count > MAX_ENTRIES_PER_REPORT {
        Err(InvalidValue(format!(
            "has {count} entries; at most {MAX_ENTRIES_PER_REPORT} per request"
        ))
        .at(field))
    } else {
        Ok(())
    }
}

fn label(value: String, field: &str) -> Result<Label, FieldViolation> {
    Label::parse(value).map_err(|e| e.at(field))
}

fn optional_label(value: String, field: &str) -> Result<Option<Label>, FieldViolation> {
    Label::parse_optional(value).map_err(|e| e.at(field))
}

fn prose(value: String, field: &str) -> Result<Prose, FieldViolation> {
    Prose::parse(value).map_err(|e| e.at(field))
}

fn non_negative<T: Copy + Default + PartialOrd>(
    value: T,
    field: &str,
) -> Result<NonNegative<T>, FieldViolation> {
    NonNegative::parse(value).map_err(|e| e.at(field))
}

fn json_object(value: Option<Struct>, field: &str) -> Result<JsonObject, FieldViolation> {
    let Some(value) = value else {
        return Ok(JsonObject::default());
    };
    struct_to_json(value)
        .and_then(JsonObject::parse)
        .map_err(|e| e.at(field))
}

fn optional_time(
    value: Option<prost_types::Timestamp>,
    field: &str,
    default: Option<Timestamp>,
) -> Result<Option<Timestamp>, FieldViolation> {
    value.map_or(Ok(default), |time| timestamp(time, field).map(Some))
}

/// The server's clock, to the microsecond that PostgreSQL stores.
fn now() -> Timestamp {
    truncate_to_micros(Timestamp::now())
}

fn truncate_to_micros(time: Timestamp) -> Timestamp {
    Timestamp::from_microsecond(time.as_microsecond()).unwrap_or(time)
}

/// A protobuf timestamp within the years 1 to 9999 (what RFC 3339 and the
/// protobuf JSON mapping can show), truncated to the microsecond.
fn timestamp(value: prost_types::Timestamp, field: &str) -> Result<Timestamp, FieldViolation> {
    // The first second of year 1, and the last one the time library (and so
    // the service) can represent: two hours short of the end of year 9999.
    const FIRST_SECOND: i64 = -62_135_596_800;
    const LAST_SECOND: i64 = 253_402_207_200;
    const RANGE: &str = "must be between 0001-01-01T00:00:00Z and 9999-12-30T22:00:00Z";
    if !(0..1_000_000_000).contains(&value.nanos) {
        return Err(InvalidValue("nanos must be between 0 and 999,999,999".into()).at(field));
    }
    if !(FIRST_SECOND..=LAST_SECOND).contains(&value.seconds) {
        return Err(InvalidValue(RANGE.into()).at(field));
    }
    // Truncated to the microsecond, PostgreSQL's resolution.
    let micros = value.seconds * 1_000_000 + i64::from(value.nanos / 1_000);
    Timestamp::from_microsecond(micros).map_err(|_| InvalidValue(RANGE.into()).at(field))
}

/// The view a listing asked for; unset means FULL, as before views existed.
fn detail(view: i32) -> Result<Detail, FieldViolation> {
    match proto::BatchView::try_from(view) {
        Ok(proto::BatchView::Unspecified | proto::BatchView::Full) => Ok(Detail::Full),
        Ok(proto::BatchView::Basic) => Ok(Detail::Basic),
        Err(_) => Err(InvalidValue(format!("{view} is not a BatchView")).at("view")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_bounded_and_truncated_to_micros() {
        let time = timestamp(
            prost_types::Timestamp {
                seconds: 1_760_000_000,
                nanos: 123_456_789,
            },
            "t",
        )
        .unwrap();
        assert_eq!(time.as_microsecond(), 1_760_000_000_123_456);
        let last = timestamp(
            prost_types::Timestamp {
                seconds: 253_402_300_799,
                nanos: 999_999_999,
            },
            "t",
        );
        assert_eq!(
            last.unwrap_err().description,
            "must be between 0001-01-01T00:00:00Z and 9999-12-30T22:00:00Z"
        );
        for (seconds, nanos) in [
            (0, -1),
            (0, 1_000_000_000),
            (-62_135_596_801, 0),
            (i64::MAX, 0),
        ] {
            let error = timestamp(
                prost_types::Timestamp { seconds, nanos },
                "batch.start_time",
            )
            .unwrap_err();
            assert_eq!(error.field, "batch.start_time");
        }
    }

    #[test]
    fn ids_in_both_places_must_agree() {
        let request = proto::CreateBatchRequest {
            batch_id: "a".into(),
            batch: Some(proto::Batch {
                batch_id: "b".into(),
                ..Default::default()
            }),
        };
        assert_eq!(NewBatch::try_from(request).unwrap_err().field, "batch_id");
    }

    #[test]
    fn violations_name_the_nested_field() {
        let request = proto::RecordProgressRequest {
            batch_id: "b".into(),
            errors: vec![
                proto::BatchError {
                    message: "ok".into(),
                    ..Default::default()
                },
                proto::BatchError::default(),
            ],
            ..Default::default()
        };
        assert_eq!(
            Progress::try_from(request).unwrap_err().field,
            "errors[1].message"
        );
    }
}
