//! Aggregates over batches.

use std::collections::BTreeMap;

use super::State;

/// Totals over a set of batches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BatchStats {
    pub(crate) batch_count: i64,
    pub(crate) samples_generated: i64,
    pub(crate) total_tokens: i64,
    /// Batches per state, for the states that have any.
    pub(crate) by_state: BTreeMap<State, i64>,
    /// Most batches first.
    pub(crate) by_model: Vec<ModelStats>,
}

/// Totals for one provider and model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ModelStats {
    pub(crate) provider: String,
    pub(crate) model: String,
    pub(crate) batch_count: i64,
    pub(crate) samples_generated: i64,
    pub(crate) total_tokens: i64,
}

/// One group of batches sharing state, provider and model.
#[derive(Debug, Clone)]
pub(crate) struct StatsGroup {
    pub(crate) state: State,
    pub(crate) provider: String,
    pub(crate) model: String,
    pub(crate) batch_count: i64,
    pub(crate) samples_generated: i64,
    pub(crate) total_tokens: i64,
}

impl FromIterator<StatsGroup> for BatchStats {
    fn from_iter<I: IntoIterator<Item = StatsGroup>>(groups: I) -> Self {
        let mut stats = BatchStats::default();
        let mut models = BTreeMap::<(String, String), ModelStats>::new();
        for group in groups {
            stats.batch_count += group.batch_count;
            stats.samples_generated = stats
                .samples_generated
                .saturating_add(group.samples_generated);
            stats.total_tokens = stats.total_tokens.saturating_add(group.total_tokens);
            *stats.by_state.entry(group.state).or_default() += group.batch_count;
            let model = models
                .entry((group.provider.clone(), group.model.clone()))
                .or_insert_with(|| ModelStats {
                    provider: group.provider,
                    model: group.model,
                    ..ModelStats::default()
                });
            model.batch_count += group.batch_count;
            model.samples_generated = model
                .samples_generated
                .saturating_add(group.samples_generated);
            model.total_tokens = model.total_tokens.saturating_add(group.total_tokens);
        }
        stats.by_model = models.into_values().collect();
        stats
            .by_model
            .sort_by_key(|model| std::cmp::Reverse(model.batch_count));
        stats
    }
}
