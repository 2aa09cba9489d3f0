//! The page addresses' query strings, parsed once into what a page shows.
//! Field names match `ListBatches`' so that an error reads the same in both.

use jiff::{Timestamp, civil::DateTime, tz::TimeZone};

use crate::domain::{
    BatchFilter, BatchId, BatchLabels, Cursor, FieldViolation, InvalidValue, Label, Order,
    PageSize, State, TextFilters,
};

/// Which part of a listing a history page shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Position {
    /// The newest batches.
    Newest,
    /// The batches just older than the cursor, newest first.
    OlderThan(Cursor),
    /// The batches just newer than the cursor (shown newest first).
    NewerThan(Cursor),
}

/// A history page: its filter and where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HistoryQuery {
    pub(crate) filter: BatchFilter,
    pub(crate) position: Position,
}

/// What the live event stream follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LiveQuery {
    /// A history page: the batches it shows, and new ones its filter keeps.
    History {
        filter: BatchFilter,
        shown: Vec<BatchId>,
    },
    /// One batch's detail.
    Batch(BatchId),
}

/// The name and value pairs of a query string, decoded.
pub(crate) fn pairs(query: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

impl HistoryQuery {
    pub(crate) fn parse(pairs: &[(String, String)]) -> Result<Self, FieldViolation> {
        let filter = filter(pairs)?;
        let token = |name: &str, order: Order| {
            value(pairs, name)
                .map(|token| Cursor::from_token(token, &filter, order).map_err(|e| e.at(name)))
                .transpose()
        };
        let position = match (
            token("older", Order::NewestFirst)?,
            token("newer", Order::OldestFirst)?,
        ) {
            (None, None) => Position::Newest,
            (Some(cursor), None) => Position::OlderThan(cursor),
            (None, Some(cursor)) => Position::NewerThan(cursor),
            (Some(_), Some(_)) => {
                return Err(InvalidValue("cannot be given with older".into()).at("newer"));
            }
        };
        Ok(Self { filter, position })
    }
}

impl LiveQuery {
    pub(crate) fn parse(pairs: &[(String, String)]) -> Result<Self, FieldViolation> {
        match value(pairs, "batch_id") {
            Some(id) => Ok(Self::Batch(
                BatchId::parse(id.to_owned()).map_err(|e| e.at("batch_id"))?,
            )),
            None => Ok(Self::History {
                filter: filter(pairs)?,
                shown: value(pairs, "shown")
                    .unwrap_or_default()
                    .split(',')
                    .filter(|id| !id.is_empty())
                    .take(usize::from(PageSize::MAX))
                    .map(|id| BatchId::parse(id.to_owned()).map_err(|e| e.at("shown")))
                    .collect::<Result<_, _>>()?,
            }),
        }
    }
}

/// The filter form's fields; empty ones match everything.
pub(crate) fn filter(pairs: &[(String, String)]) -> Result<BatchFilter, FieldViolation> {
    let label = |name: &str| {
        value(pairs, name)
            .map(|text| Label::parse(text.to_owned()).map_err(|e| e.at(name)))
            .transpose()
    };
    let time = |name: &str| {
        value(pairs, name)
            .map(|text| timestamp(text).map_err(|e| e.at(name)))
            .transpose()
    };
    Ok(BatchFilter {
        states: pairs
            .iter()
            .filter(|(name, text)| name == "states" && !text.is_empty())
            .map(|(_, text)| {
                State::from_name(text).ok_or_else(|| {
                    InvalidValue(format!(
                        "{text:?} is not RUNNING, COMPLETED, STOPPED or FAILED"
                    ))
                    .at("states")
                })
            })
            .collect::<Result<_, _>>()?,
        texts: TextFilters::try_from_names(label)?,
        labels: labels(value(pairs, "labels").unwrap_or_default())?,
        started_after: time("started_after")?,
        started_before: time("started_before")?,
    })
}

/// The query string that gives `filter` back to [`filter`], without a
/// leading `?`; empty for the filter that keeps everything.
pub(crate) fn filter_query(filter: &BatchFilter) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for state in &filter.states {
        query.append_pair("states", state.as_str());
    }
    for (name, _, label) in filter.texts.each() {
        if let Some(label) = label {
            query.append_pair(name, label.as_str());
        }
    }
    if !filter.labels.is_empty() {
        query.append_pair("labels", &labels_text(&filter.labels));
    }
    for (name, time) in [
        ("started_after", filter.started_after),
        ("started_before", filter.started_before),
    ] {
        if let Some(time) = time {
            query.append_pair(name, &form_time(time));
        }
    }
    query.finish()
}

/// Labels as the form writes them: `env=prod, team=a`.
pub(crate) fn labels_text(labels: &BatchLabels) -> String {
    labels
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The labels of the form's `env=prod, team=a`.
fn labels(text: &str) -> Result<BatchLabels, FieldViolation> {
    let pairs = text
        .split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) => Ok((key.trim().to_owned(), value.trim().to_owned())),
            None => Err(InvalidValue(format!("{pair:?} is not key=value")).at("labels")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    BatchLabels::parse(pairs, "labels")
}

/// A time as a `datetime-local` input shows it, in UTC.
pub(crate) fn form_time(time: Timestamp) -> String {
    time.to_zoned(TimeZone::UTC)
        .datetime()
        .strftime("%Y-%m-%dT%H:%M:%S")
        .to_string()
}

/// The value of the first non-empty field called `name`.
fn value<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(field, text)| field == name && !text.trim().is_empty())
        .map(|(_, text)| text.trim())
}

/// A `datetime-local` value (`2026-11-26T09:30`, seconds optional), read as
/// UTC, or an RFC 3339 time with its offset.
fn timestamp(text: &str) -> Result<Timestamp, InvalidValue> {
    text.parse::<Timestamp>()
        .ok()
        .or_else(|| {
            text.parse::<DateTime>()
                .ok()
                .and_then(|local| local.to_zoned(TimeZone::UTC).ok())
                .map(|zoned| zoned.timestamp())
        })
        .ok_or_else(|| {
            InvalidValue(format!(
                "{text:?} is not a time such as 2026-11-26T09:30 (UTC) or 2026-11-26T09:30:00+01:00"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(text: &str) -> Vec<(String, String)> {
        pairs(Some(text))
    }

    #[test]
    fn a_filter_survives_its_own_query_string() {
        let filter = filter(&query(
            "states=RUNNING&states=FAILED&provider=groq&model=llama+3&topic_filter=contracts\
             &difficulty_filter=&started_after=2026-11-01T08%3A30&started_before=2026-11-26T10:00:00%2B01:00",
        ))
        .unwrap();
        assert_eq!(filter.states, [State::Running, State::Failed].into());
        assert_eq!(
            filter.texts.model.as_ref().map(Label::as_str),
            Some("llama 3")
        );
        assert_eq!(filter.texts.difficulty_filter, None);
        assert_eq!(
            filter.started_after,
            Some("2026-11-01T08:30:00Z".parse().unwrap())
        );
        assert_eq!(
            filter.started_before,
            Some("2026-11-26T09:00:00Z".parse().unwrap())
        );
        assert_eq!(
            super::filter(&query(&filter_query(&filter))).unwrap(),
            filter
        );
        assert_eq!(filter_query(&BatchFilter::default()), "");
    }

    #[test]
    fn errors_name_the_field() {
        for (text, field) in [
            ("states=DONE", "states"),
            ("started_after=yesterday", "started_after"),
            ("older=xyz", "older"),
            ("batch_id=a%20b", "batch_id"),
            ("shown=ok,not%20ok", "shown"),
        ] {
            let error = if text.starts_with("batch_id") || text.starts_with("shown") {
                LiveQuery::parse(&query(text)).unwrap_err()
            } else {
                HistoryQuery::parse(&query(text)).unwrap_err()
            };
            assert_eq!(error.field, field, "{text}: {error}");
        }
    }

    #[test]
    fn page_tokens_belong_to_their_filter_and_direction() {
        let cursor = Cursor {
            start_time: "2026-11-26T10:00:00Z".parse().unwrap(),
            batch_id: BatchId::parse("batch_1".into()).unwrap(),
        };
        let running = filter(&query("states=RUNNING")).unwrap();
        let older = cursor.to_token(&running, Order::NewestFirst);
        let newer = cursor.to_token(&running, Order::OldestFirst);
        assert_eq!(
            HistoryQuery::parse(&query(&format!("states=RUNNING&older={older}")))
                .unwrap()
                .position,
            Position::OlderThan(cursor.clone())
        );
        assert_eq!(
            HistoryQuery::parse(&query(&format!("states=RUNNING&newer={newer}")))
                .unwrap()
                .position,
            Position::NewerThan(cursor)
        );
        assert!(HistoryQuery::parse(&query(&format!("states=FAILED&older={older}"))).is_err());
        assert!(HistoryQuery::parse(&query(&format!("states=RUNNING&older={newer}"))).is_err());
    }
}
