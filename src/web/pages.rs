//! The pages' HTML, rendered on the server: one function per page or part,
//! so that a live update sends exactly what a reload would show.

use std::fmt::{self, Display};

use jiff::{Timestamp, tz::TimeZone};

use super::query::{filter_query, form_time, labels_text};
use crate::domain::{Batch, BatchFilter, BatchId, BatchStats, FieldViolation, Label, State};

/// The states, in the order pages list them.
const STATES: [State; 4] = [
    State::Running,
    State::Completed,
    State::Stopped,
    State::Failed,
];

/// Text made safe for HTML element content and quoted attribute values.
pub(crate) struct Escaped<'a>(pub &'a str);

impl Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..at])?;
            f.write_str(match rest.as_bytes()[at] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[at + 1..];
        }
        f.write_str(rest)
    }
}

/// Which of the navigation's pages is showing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    History,
    Stats,
    /// Neither of those: a batch, an error.
    None,
    /// The sign-in form, which offers nothing else.
    SignIn,
}

/// A whole page around `main`. `live` is the event stream address that
/// keeps it current, if any.
pub(crate) fn layout(
    title: &str,
    section: Section,
    live: Option<&str>,
    signed_in: bool,
    main: &str,
) -> String {
    let current = |page| {
        if section == page {
            r#" aria-current="page""#
        } else {
            ""
        }
    };
    let live = live
        .map(|url| {
            format!(
                r#"<p class="live" id="live-status" role="status" data-live="{}">Connecting…</p>"#,
                Escaped(url)
            )
        })
        .unwrap_or_default();
    let nav = if section == Section::SignIn {
        String::new()
    } else {
        format!(
            r#"<nav aria-label="Pages"><a href="/"{}>History</a> <a href="/stats"{}>Stats</a></nav>"#,
            current(Section::History),
            current(Section::Stats)
        )
    };
    let sign_out = if signed_in && section != Section::SignIn {
        r#"<form method="post" action="/logout" class="sign-out"><button type="submit">Sign out</button></form>"#
    } else {
        ""
    };
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · batch-history</title>
<link rel="stylesheet" href="/assets/app.css">
<script src="/assets/app.js" defer></script>
</head>
<body>
<header class="top">
<a class="brand" href="/">batch-history</a>
{nav}
{live}{sign_out}
</header>
<main id="main">
{main}
</main>
</body>
</html>
"#,
        title = Escaped(title),
    )
}

/// The filter form, filled in with `filter`.
pub(crate) fn filter_form(action: &str, filter: &BatchFilter) -> String {
    let states: String = STATES
        .iter()
        .map(|state| {
            let checked = if filter.states.contains(state) { " checked" } else { "" };
            format!(
                r#"<label class="check"><input type="checkbox" name="states" value="{name}"{checked}> {name}</label>"#,
                name = state.as_str()
            )
        })
        .collect();
    let text = |name: &str, label: &str, value: Option<&str>| {
        format!(
            r#"<label>{label} <input type="text" name="{name}" value="{}" autocomplete="off"></label>"#,
            Escaped(value.unwrap_or_default())
        )
    };
    let time = |name: &str, label: &str, value: Option<Timestamp>| {
        format!(
            r#"<label>{label} <input type="datetime-local" step="1" name="{name}" value="{}"></label>"#,
            value.map(form_time).unwrap_or_default()
        )
    };
    // Folded away until a filter is in use, so that a phone shows the batches first.
    let open = if *filter == BatchFilter::default() {
        ""
    } else {
        " open"
    };
    format!(
        r#"<details class="filter-box"{open}><summary>Filters</summary>
<form class="filters" method="get" action="{action}" aria-label="Filters">
<fieldset><legend>State</legend>{states}</fieldset>
{texts}{labels}{after}{before}
<div class="buttons"><button type="submit">Apply filters</button> <a href="{action}">Clear</a></div>
</form>
</details>"#,
        texts = filter
            .texts
            .each()
            .map(|(name, title, wanted)| text(name, title, wanted.map(Label::as_str)))
            .collect::<String>(),
        labels = text(
            "labels",
            "Labels (key=value, …)",
            (!filter.labels.is_empty())
                .then(|| labels_text(&filter.labels))
                .as_deref()
        ),
        after = time("started_after", "Started from (UTC)", filter.started_after),
        before = time(
            "started_before",
            "Started before (UTC)",
            filter.started_before
        ),
    )
}

/// Links to the neighbouring pages of a history listing: page tokens.
pub(crate) struct Paging {
    pub(crate) newer: Option<String>,
    pub(crate) older: Option<String>,
}

/// The history page's content.
pub(crate) fn history(
    filter: &BatchFilter,
    batches: &[Batch],
    paging: &Paging,
    now: Timestamp,
) -> String {
    let rows: String = batches.iter().map(|batch| row(batch, now)).collect();
    let empty = if batches.is_empty() {
        r#"<p class="empty">No batches match.</p>"#
    } else {
        ""
    };
    let base = filter_query(filter);
    let link = |name: &str, token: &Option<String>, label: &str, rel: &str| match token {
        Some(token) => {
            let mut query = form_urlencoded::Serializer::new(base.clone());
            query.append_pair(name, token);
            format!(
                r#"<a href="/?{}" rel="{rel}">{label}</a>"#,
                Escaped(&query.finish())
            )
        }
        None => format!(r#"<span aria-disabled="true">{label}</span>"#),
    };
    let stats_link = if base.is_empty() {
        "/stats".to_owned()
    } else {
        format!("/stats?{base}")
    };
    format!(
        r#"<h1>Batch history</h1>
{form}
<p class="aside"><a href="{stats}">Stats for these filters</a></p>
<div class="table-wrap">
<table class="batches" aria-label="Batches, newest first" data-first-page="{first}">
<thead><tr><th scope="col">State</th><th scope="col">Batch</th><th scope="col">Model</th><th scope="col">Progress</th><th scope="col" class="num">Tokens</th><th scope="col" class="num">Errors</th><th scope="col">Started (UTC)</th><th scope="col">Duration</th></tr></thead>
<tbody id="batch-rows">
{rows}</tbody>
</table>
</div>
{empty}
<nav class="paging" aria-label="Pages of batches">{newer} {older}</nav>"#,
        form = filter_form("/", filter),
        stats = Escaped(&stats_link),
        first = paging.newer.is_none(),
        newer = link("newer", &paging.newer, "← Newer", "prev"),
        older = link("older", &paging.older, "Older →", "next"),
    )
}

/// One batch as a history row; its id is `row_id`.
pub(crate) fn row(batch: &Batch, now: Timestamp) -> String {
    let id = batch.batch_id.as_str();
    format!(
        r#"<tr id="{row_id}" data-state="{state}">
<td>{badge}</td>
<td><a href="/batches/{id}">{id}</a><div class="sub">{provider}{topic}</div></td>
<td>{model}</td>
<td>{progress}</td>
<td class="num">{tokens}</td>
<td class="num">{errors}</td>
<td>{start}</td>
<td>{duration}</td>
</tr>
"#,
        row_id = row_id(&batch.batch_id),
        state = batch.state,
        badge = badge(batch.state),
        provider = Escaped(&batch.provider),
        topic = if batch.topic_filter.is_empty() {
            String::new()
        } else {
            format!(" · {}", Escaped(&batch.topic_filter))
        },
        model = model(batch),
        progress = progress(batch),
        tokens = grouped(batch.total_tokens),
        errors = grouped(batch.error_count),
        start = time(batch.start_time),
        duration = duration(batch, now),
    )
}

/// The element id of a batch's history row.
pub(crate) fn row_id(batch_id: &BatchId) -> String {
    format!("batch-{}", batch_id.as_str())
}

/// The element id of the detail page's live part.
pub(crate) const DETAIL_ID: &str = "batch-detail";

/// The detail page's content.
pub(crate) fn detail(batch: &Batch, now: Timestamp) -> String {
    let field = |name: &str, value: String| format!("<dt>{name}</dt><dd>{value}</dd>");
    let text = |value: &str| {
        if value.is_empty() {
            "—".to_owned()
        } else {
            Escaped(value).to_string()
        }
    };
    let fields = [
        field("State", badge(batch.state)),
        field("Progress", progress(batch)),
        field("Provider", text(&batch.provider)),
        field("Model", model(batch)),
        field("Topic", text(&batch.topic_filter)),
        field("Difficulty", text(&batch.difficulty_filter)),
        field("Labels", text(&labels_text(&batch.labels))),
        field("Tokens", grouped(batch.total_tokens)),
        field("Errors", grouped(batch.error_count)),
        field("Started (UTC)", time(batch.start_time)),
        field(
            "Ended (UTC)",
            batch.end_time.map(time).unwrap_or_else(|| "—".into()),
        ),
        field("Duration", duration(batch, now)),
        field("Updated (UTC)", time(batch.update_time)),
        field("Reasoning instruction", text(&batch.reasoning_instruction)),
    ]
    .concat();
    let errors = if batch.errors.is_empty() {
        r#"<p class="empty">No errors.</p>"#.to_owned()
    } else {
        let shown = if (batch.errors.len() as i64) < batch.error_count {
            format!(
                r#"<p class="aside">The newest {} of {} errors are kept.</p>"#,
                batch.errors.len(),
                batch.error_count
            )
        } else {
            String::new()
        };
        let items: String = batch
            .errors
            .iter()
            .rev()
            .map(|error| {
                format!(
                    r#"<li><div class="when">{}</div><div class="message">{}</div>{}</li>"#,
                    error
                        .time
                        .map(time)
                        .unwrap_or_else(|| "time unknown".into()),
                    Escaped(error.message.as_str()),
                    json_block(error.details.as_map()),
                )
            })
            .collect();
        format!(r#"{shown}<ol class="errors" reversed>{items}</ol>"#)
    };
    let switches = if batch.model_switches.is_empty() {
        r#"<p class="empty">No model switches.</p>"#.to_owned()
    } else {
        let items: String = batch
            .model_switches
            .iter()
            .map(|switch| {
                let when = match switch.time {
                    Some(at) => format!("{} · sample {}", time(at), grouped(switch.at_sample.get())),
                    None => format!("sample {}", grouped(switch.at_sample.get())),
                };
                format!(
                    r#"<li><div class="when">{when}</div><div><strong>{}</strong> → <strong>{}</strong>{}</div>{}{}</li>"#,
                    Escaped(switch.from_model.as_str()),
                    Escaped(switch.to_model.as_str()),
                    if switch.provider.as_str().is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", Escaped(switch.provider.as_str()))
                    },
                    if switch.reason.as_str().is_empty() {
                        String::new()
                    } else {
                        format!(r#"<div class="message">{}</div>"#, Escaped(switch.reason.as_str()))
                    },
                    json_block(switch.details.as_map()),
                )
            })
            .collect();
        format!(r#"<ol class="timeline">{items}</ol>"#)
    };
    format!(
        r#"<section id="{DETAIL_ID}" data-state="{state}">
<dl class="fields">{fields}</dl>
<h2>Errors</h2>
{errors}
<h2>Model switches</h2>
{switches}
<h2>Metadata</h2>
{metadata}
</section>"#,
        state = batch.state,
        metadata = if batch.metadata.is_empty() {
            r#"<p class="empty">No metadata.</p>"#.to_owned()
        } else {
            json_block(&batch.metadata)
        },
    )
}

/// The stats page's content: counts per state and tokens per model, as bars.
pub(crate) fn stats(filter: &BatchFilter, stats: &BatchStats) -> String {
    let states: Vec<(String, i64)> = STATES
        .iter()
        .map(|state| {
            (
                state.as_str().to_owned(),
                stats.by_state.get(state).copied().unwrap_or(0),
            )
        })
        .collect();
    let mut models: Vec<(String, i64)> = stats
        .by_model
        .iter()
        .map(|model| {
            (
                format!("{} / {}", model.provider, model.model),
                model.total_tokens,
            )
        })
        .collect();
    models.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    format!(
        r#"<h1>Stats</h1>
{form}
<p class="totals">{batches} batches · {samples} samples · {tokens} tokens</p>
<h2 id="by-state">Batches per state</h2>
{by_state}
<h2 id="by-model">Tokens per model</h2>
{by_model}"#,
        form = filter_form("/stats", filter),
        batches = grouped(stats.batch_count),
        samples = grouped(stats.samples_generated),
        tokens = grouped(stats.total_tokens),
        by_state = bar_chart("by-state", &states),
        by_model = if models.is_empty() {
            r#"<p class="empty">No batches match.</p>"#.to_owned()
        } else {
            bar_chart("by-model", &models)
        },
    )
}

/// A horizontal bar chart as inline SVG, with the figures as text too.
fn bar_chart(labelled_by: &str, bars: &[(String, i64)]) -> String {
    const ROW: usize = 28;
    let largest = bars
        .iter()
        .map(|(_, value)| *value)
        .max()
        .unwrap_or(0)
        .max(1);
    let rows: String = bars
        .iter()
        .enumerate()
        .map(|(i, (label, value))| {
            let width = (*value as f64 / largest as f64 * 100.0).max(0.0);
            let y = i * ROW;
            format!(
                r#"<g><title>{label}: {figure}</title><text x="0" y="{ty}" class="label">{label}</text><rect x="40%" y="{y}" width="{bar:.2}%" height="20" class="bar"></rect><text x="99%" y="{ty}" text-anchor="end" class="figure">{figure}</text></g>"#,
                label = Escaped(label),
                figure = grouped(*value),
                ty = y + 15,
                bar = width * 0.45,
            )
        })
        .collect();
    format!(
        r#"<svg class="chart" role="img" aria-labelledby="{labelled_by}" width="100%" height="{height}">{rows}</svg>"#,
        height = bars.len() * ROW,
    )
}

/// The sign-in form; `failed` after a wrong token.
pub(crate) fn login(failed: bool) -> String {
    let error = if failed {
        r#"<p class="error" role="alert">That token is not the one this service was given.</p>"#
    } else {
        ""
    };
    format!(
        r#"<h1>Sign in</h1>
<p>This service needs its access token (its <code>AUTH_TOKEN</code>).</p>
{error}
<form method="post" action="/login" class="login">
<label>Access token <input type="password" name="token" autocomplete="current-password" required autofocus></label>
<button type="submit">Sign in</button>
</form>"#
    )
}

/// A request the page cannot show, and why.
pub(crate) fn invalid(violation: &FieldViolation) -> String {
    format!(
        r#"<h1>Cannot show that</h1><p class="error" role="alert"><code>{}</code>: {}</p><p><a href="/">Back to the history</a></p>"#,
        Escaped(&violation.field),
        Escaped(&violation.description)
    )
}

/// A message page: not found, or the database cannot answer.
pub(crate) fn message(heading: &str, text: &str) -> String {
    format!(
        r#"<h1>{}</h1><p class="error" role="alert">{}</p><p><a href="/">Back to the history</a></p>"#,
        Escaped(heading),
        Escaped(text)
    )
}

fn badge(state: State) -> String {
    format!(
        r#"<span class="state state-{}">{}</span>"#,
        state.as_str().to_ascii_lowercase(),
        state.as_str()
    )
}

fn model(batch: &Batch) -> String {
    if batch.current_model == batch.model || batch.current_model.is_empty() {
        Escaped(&batch.model).to_string()
    } else {
        format!(
            r#"{} <span class="now" title="current model">→ {}</span>"#,
            Escaped(&batch.model),
            Escaped(&batch.current_model)
        )
    }
}

fn progress(batch: &Batch) -> String {
    let id = Escaped(batch.batch_id.as_str());
    if batch.target_count <= 0 {
        return format!(
            r#"<span class="count" aria-label="{id}: {samples} samples, no target">{samples}</span>"#,
            samples = grouped(batch.samples_generated)
        );
    }
    format!(
        r#"<progress max="{target}" value="{value}" aria-label="Progress of {id}"></progress> <span class="count">{samples} / {target_text}</span>"#,
        target = batch.target_count,
        value = batch.samples_generated.min(i64::from(batch.target_count)),
        samples = grouped(batch.samples_generated),
        target_text = grouped(i64::from(batch.target_count)),
    )
}

fn time(at: Timestamp) -> String {
    let zoned = at.to_zoned(TimeZone::UTC);
    format!(
        r#"<time datetime="{}">{}</time>"#,
        at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        zoned.strftime("%Y-%m-%d %H:%M:%S")
    )
}

/// How long a batch ran, or has been running.
fn duration(batch: &Batch, now: Timestamp) -> String {
    let end = batch.end_time.unwrap_or(now);
    let seconds = end
        .as_second()
        .saturating_sub(batch.start_time.as_second())
        .max(0);
    let (hours, minutes, seconds) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    let text = match (hours, minutes) {
        (0, 0) => format!("{seconds}s"),
        (0, _) => format!("{minutes}m {seconds:02}s"),
        _ => format!("{hours}h {minutes:02}m"),
    };
    if batch.end_time.is_none() && batch.state == State::Running {
        format!("{text} so far")
    } else {
        text
    }
}

/// A number with thin spaces between thousands, as people read them.
fn grouped(value: i64) -> String {
    let digits = value.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if value < 0 {
        out.push('-');
    }
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('\u{202f}');
        }
        out.push(digit);
    }
    out
}

fn json_block(value: &serde_json::Map<String, serde_json::Value>) -> String {
    if value.is_empty() {
        return String::new();
    }
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    format!(r#"<pre class="json">{}</pre>"#, Escaped(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            Escaped(r#"<a href="x">Tom's & co</a>"#).to_string(),
            "&lt;a href=&quot;x&quot;&gt;Tom&#39;s &amp; co&lt;/a&gt;"
        );
        assert_eq!(Escaped("plain").to_string(), "plain");
    }

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1_000), "1\u{202f}000");
        assert_eq!(grouped(-1_234_567), "-1\u{202f}234\u{202f}567");
    }
}
