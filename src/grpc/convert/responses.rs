//! Domain types to the messages the service sends.

use jiff::Timestamp;

use super::json::json_to_struct;
use crate::domain::{Batch, BatchError, BatchStats, ModelSwitch, State};
use crate::proto;
use crate::watch::Event;

impl From<Event> for proto::BatchEvent {
    fn from(event: Event) -> Self {
        use proto::batch_event::Kind;
        let (kind, batch) = match event {
            Event::Snapshot(batch) => (Kind::Snapshot, batch.into()),
            Event::Created(batch) => (Kind::Created, batch.into()),
            Event::Updated(batch) => (Kind::Updated, batch.into()),
            Event::Deleted(batch_id) => (
                Kind::Deleted,
                proto::Batch {
                    batch_id: batch_id.to_string(),
                    ..Default::default()
                },
            ),
        };
        Self {
            kind: kind as i32,
            batch: Some(batch),
        }
    }
}

impl From<BatchStats> for proto::BatchStats {
    fn from(stats: BatchStats) -> Self {
        Self {
            batch_count: stats.batch_count,
            samples_generated: stats.samples_generated,
            total_tokens: stats.total_tokens,
            by_state: stats
                .by_state
                .into_iter()
                .map(|(state, batch_count)| proto::StateCount {
                    state: proto_state(state) as i32,
                    batch_count,
                })
                .collect(),
            by_model: stats
                .by_model
                .into_iter()
                .map(|model| proto::ModelStats {
                    provider: model.provider,
                    model: model.model,
                    batch_count: model.batch_count,
                    samples_generated: model.samples_generated,
                    total_tokens: model.total_tokens,
                })
                .collect(),
        }
    }
}

/// The filter fields that ListBatches, WatchBatches and GetBatchStats share.
impl From<Batch> for proto::Batch {
    fn from(batch: Batch) -> Self {
        let etag = batch.etag();
        Self {
            batch_id: batch.batch_id.into_string(),
            state: proto_state(batch.state) as i32,
            provider: batch.provider,
            model: batch.model,
            current_model: batch.current_model,
            topic_filter: batch.topic_filter,
            difficulty_filter: batch.difficulty_filter,
            reasoning_instruction: batch.reasoning_instruction,
            target_count: batch.target_count,
            samples_generated: batch.samples_generated,
            total_tokens: batch.total_tokens,
            errors: batch.errors.into_iter().map(Into::into).collect(),
            error_count: batch.error_count,
            model_switches: batch.model_switches.into_iter().map(Into::into).collect(),
            metadata: Some(json_to_struct(batch.metadata)),
            labels: batch.labels.into_map(),
            start_time: Some(proto_timestamp(batch.start_time)),
            end_time: batch.end_time.map(proto_timestamp),
            update_time: Some(proto_timestamp(batch.update_time)),
            etag,
        }
    }
}

impl From<BatchError> for proto::BatchError {
    fn from(error: BatchError) -> Self {
        Self {
            message: error.message.into_string(),
            time: error.time.map(proto_timestamp),
            details: Some(json_to_struct(error.details.into_map())),
        }
    }
}

impl From<ModelSwitch> for proto::ModelSwitch {
    fn from(switch: ModelSwitch) -> Self {
        Self {
            from_model: switch.from_model.into_string(),
            to_model: switch.to_model.into_string(),
            provider: switch.provider.into_string(),
            reason: switch.reason.into_string(),
            at_sample: switch.at_sample.get(),
            time: switch.time.map(proto_timestamp),
            details: Some(json_to_struct(switch.details.into_map())),
        }
    }
}

fn proto_state(state: State) -> proto::batch::State {
    match state {
        State::Running => proto::batch::State::Running,
        State::Completed => proto::batch::State::Completed,
        State::Stopped => proto::batch::State::Stopped,
        State::Failed => proto::batch::State::Failed,
    }
}

fn proto_timestamp(time: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.as_second(),
        nanos: time.subsec_nanosecond(),
    }
}
