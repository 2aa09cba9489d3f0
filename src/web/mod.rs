//! The operator's web page, on its own address (`UI_ADDR`): the history with
//! the listing's filters and keyset paging, each batch's detail (errors and
//! model switches), live updates while batches run, and stats as charts.
//! Read-only, rendered on the server, with its stylesheet and script
//! embedded in the binary; behind a sign-in form when `AUTH_TOKEN` is set.
//!
//! - [`query`]: page addresses parsed into what a page shows.
//! - [`pages`]: the HTML.
//! - [`live`]: server-sent events fed by the watch streams.
//! - [`auth`]: the sign-in form's session cookie.

mod auth;
mod live;
mod pages;
mod query;

use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{self, HeaderValue},
};
use jiff::Timestamp;
use tokio::net::TcpListener;

use crate::domain::{BatchId, Cursor, Detail, FieldViolation, ListQuery, Order, PageSize};
use crate::grpc::{Reason, Retry};
use crate::http_endpoint::{self, Body, Peer};
use crate::shutdown::Shutdown;
use crate::store::{Store, StoreError};
use crate::telemetry::cause_chain;
use crate::tls::ReloadingTls;
use crate::watch::Hub;
use auth::Sessions;
use pages::{Paging, Section};
use query::{HistoryQuery, LiveQuery, Position};

const STYLESHEET: &str = include_str!("assets/app.css");
const SCRIPT: &str = include_str!("assets/app.js");

/// The largest sign-in form accepted.
const MAX_FORM_BYTES: usize = 4_096;

/// What the page reads from, and who may see it.
pub(crate) struct WebPage {
    store: Store,
    hub: Hub,
    /// `None` when the service has no `AUTH_TOKEN`.
    sessions: Option<Sessions>,
    tls: Option<ReloadingTls>,
}

impl WebPage {
    /// The page; over TLS (its cookie `Secure`) when `tls` is given.
    pub(crate) fn new(
        store: Store,
        hub: Hub,
        auth_token: Option<&str>,
        tls: Option<ReloadingTls>,
    ) -> Self {
        let secure = tls.is_some();
        Self {
            store,
            hub,
            sessions: auth_token
                .filter(|token| !token.is_empty())
                .map(|token| Sessions::new(token, secure)),
            tls,
        }
    }

    /// Serves the page on `listener` until shutdown.
    pub(crate) async fn serve(self, listener: TcpListener, shutdown: Shutdown) {
        let tls = self.tls.clone();
        let page = Arc::new(self);
        let handle = move |request| {
            let page = page.clone();
            async move { page.handle(request).await }
        };
        http_endpoint::serve(listener, "web page", handle, tls, shutdown).await;
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        let mut response = self.route(request).await;
        let headers = response.headers_mut();
        // Everything the page loads is its own; nothing may frame it.
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
            ),
        );
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        response
    }

    async fn route(&self, request: Request<Incoming>) -> Response<Body> {
        let path = request.uri().path().to_owned();
        let method = request.method().clone();
        match (&method, path.as_str()) {
            (&Method::GET, "/assets/app.css") => {
                return asset("text/css; charset=utf-8", STYLESHEET);
            }
            (&Method::GET, "/assets/app.js") => {
                return asset("text/javascript; charset=utf-8", SCRIPT);
            }
            (&Method::GET, "/login") => {
                return match self.sessions {
                    Some(_) => self.page(
                        StatusCode::OK,
                        "Sign in",
                        Section::SignIn,
                        None,
                        &pages::login(false),
                    ),
                    None => redirect("/", None),
                };
            }
            (&Method::POST, "/login") => return self.sign_in(request).await,
            (&Method::POST, "/logout") => {
                return redirect("/login", Some(auth::sign_out_cookie(self.tls.is_some())));
            }
            _ => {}
        }
        if let Some(sessions) = &self.sessions
            && !sessions.admits(request.headers())
        {
            return match path.as_str() {
                "/events" => plain(StatusCode::UNAUTHORIZED, "sign in first"),
                _ => redirect("/login", None),
            };
        }
        if method != Method::GET {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "this page is read-only");
        }
        let pairs = query::pairs(request.uri().query());
        let shown = match path.as_str() {
            "/" => self.history(&pairs).await,
            "/stats" => self.stats(&pairs).await,
            "/events" => self.events(&pairs).await,
            _ => match path.strip_prefix("/batches/") {
                Some(batch_id) => self.detail(batch_id).await,
                None => Ok(self.page(
                    StatusCode::NOT_FOUND,
                    "Not found",
                    Section::None,
                    None,
                    &pages::message("Not found", "This page does not exist."),
                )),
            },
        };
        shown.unwrap_or_else(|failure| self.failure(failure))
    }

    async fn history(&self, pairs: &[(String, String)]) -> Result<Response<Body>, Failure> {
        let query = HistoryQuery::parse(pairs)?;
        let listing = |order, after| ListQuery {
            filter: query.filter.clone(),
            order,
            page_size: PageSize::standard(),
            after,
            // A row shows the number of errors, not their bodies.
            detail: Detail::Basic,
        };
        let mut position = query.position;
        let (batches, newer, older) = loop {
            match position {
                Position::Newest => {
                    let page = self.store.list(&listing(Order::NewestFirst, None)).await?;
                    break (page.batches, None, page.next);
                }
                Position::OlderThan(cursor) => {
                    let page = self
                        .store
                        .list(&listing(Order::NewestFirst, Some(cursor.clone())))
                        .await?;
                    let newer = page.batches.first().map(Cursor::after).unwrap_or(cursor);
                    break (page.batches, Some(newer), page.next);
                }
                Position::NewerThan(cursor) => {
                    let page = self
                        .store
                        .list(&listing(Order::OldestFirst, Some(cursor)))
                        .await?;
                    // Nothing newer beyond these: the newest page is a whole one.
                    if page.next.is_none() {
                        position = Position::Newest;
                        continue;
                    }
                    let mut batches = page.batches;
                    batches.reverse();
                    let newer = batches.first().map(Cursor::after);
                    let older = batches.last().map(Cursor::after);
                    break (batches, newer, older);
                }
            }
        };
        let paging = Paging {
            newer: newer.map(|cursor| cursor.to_token(&query.filter, Order::OldestFirst)),
            older: older.map(|cursor| cursor.to_token(&query.filter, Order::NewestFirst)),
        };
        let main = pages::history(&query.filter, &batches, &paging, Timestamp::now());
        let mut live = form_urlencoded::Serializer::new(query::filter_query(&query.filter));
        let shown: Vec<&str> = batches
            .iter()
            .map(|batch| batch.batch_id.as_str())
            .collect();
        live.append_pair("shown", &shown.join(","));
        let live = format!("/events?{}", live.finish());
        Ok(self.page(
            StatusCode::OK,
            "History",
            Section::History,
            Some(&live),
            &main,
        ))
    }

    async fn detail(&self, batch_id: &str) -> Result<Response<Body>, Failure> {
        let batch_id = BatchId::parse(batch_id.to_owned()).map_err(|e| e.at("batch_id"))?;
        let batch = self.store.get(&batch_id).await?;
        let main = format!(
            "<h1>Batch <code>{}</code></h1>\n{}",
            pages::Escaped(batch_id.as_str()),
            pages::detail(&batch, Timestamp::now())
        );
        let live = (batch.state == crate::domain::State::Running)
            .then(|| format!("/events?batch_id={}", batch_id.as_str()));
        Ok(self.page(
            StatusCode::OK,
            batch_id.as_str(),
            Section::None,
            live.as_deref(),
            &main,
        ))
    }

    async fn stats(&self, pairs: &[(String, String)]) -> Result<Response<Body>, Failure> {
        let filter = query::filter(pairs)?;
        let stats = self.store.stats(&filter).await?;
        Ok(self.page(
            StatusCode::OK,
            "Stats",
            Section::Stats,
            None,
            &pages::stats(&filter, &stats),
        ))
    }

    async fn events(&self, pairs: &[(String, String)]) -> Result<Response<Body>, Failure> {
        let body = live::events(&self.store.current(), &self.hub, LiveQuery::parse(pairs)?).await?;
        Ok(Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-store")
            .body(body)
            .unwrap_or_default())
    }

    async fn sign_in(&self, request: Request<Incoming>) -> Response<Body> {
        let Some(sessions) = &self.sessions else {
            return redirect("/", None);
        };
        let peer = request.extensions().get::<Peer>().map(|peer| peer.0.ip());
        let form = match Limited::new(request.into_body(), MAX_FORM_BYTES)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(_) => {
                return plain(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "the sign-in form is too large",
                );
            }
        };
        let token = query::pairs(std::str::from_utf8(&form).ok())
            .into_iter()
            .find_map(|(name, value)| (name == "token").then_some(value))
            .unwrap_or_default();
        if let Some(peer) = peer {
            match sessions.throttle.turn(peer) {
                Some(wait) => tokio::time::sleep(wait).await,
                None => {
                    return plain(
                        StatusCode::TOO_MANY_REQUESTS,
                        "too many wrong tokens from this address; try again in a few seconds",
                    );
                }
            }
        }
        let right = sessions.token_matches(&token);
        if let Some(peer) = peer {
            sessions.throttle.checked(peer, right);
        }
        if right {
            redirect("/", Some(sessions.sign_in_cookie()))
        } else {
            self.page(
                StatusCode::UNAUTHORIZED,
                "Sign in",
                Section::SignIn,
                None,
                &pages::login(true),
            )
        }
    }

    fn page(
        &self,
        status: StatusCode,
        title: &str,
        section: Section,
        live: Option<&str>,
        main: &str,
    ) -> Response<Body> {
        let html = pages::layout(title, section, live, self.sessions.is_some(), main);
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
            .header(header::CACHE_CONTROL, "no-store")
            .body(full(html))
            .unwrap_or_default()
    }

    /// The one place a page's failure becomes a response. A store error
    /// is told by the reason a gRPC call would carry, which the response's
    /// `error-reason` header names.
    fn failure(&self, failure: Failure) -> Response<Body> {
        let reason = match &failure {
            Failure::Invalid(_) => Reason::FieldInvalid,
            Failure::Store(error) => Reason::of(error, Retry::Read),
        };
        let (status, heading, text) = match failure {
            Failure::Invalid(violation) => (
                StatusCode::BAD_REQUEST,
                "Cannot show that",
                pages::invalid(&violation),
            ),
            Failure::Store(StoreError::NotFound(batch_id)) => (
                StatusCode::NOT_FOUND,
                "Not found",
                pages::message(
                    "Not found",
                    &format!("There is no batch {batch_id}; it may have been deleted."),
                ),
            ),
            Failure::Store(error)
                if matches!(
                    reason,
                    Reason::DatabaseTimeout
                        | Reason::OutcomeUnknown
                        | Reason::DatabaseUnavailable
                        | Reason::DatabaseResourceExhausted
                ) =>
            {
                tracing::warn!(error = %cause_chain(&error), "web page: the database did not answer");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Database unavailable",
                    pages::message(
                        "Database unavailable",
                        "The database is not answering; this page will work again once it does.",
                    ),
                )
            }
            Failure::Store(error) => {
                tracing::error!(error = %cause_chain(&error), "web page failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong",
                    pages::message(
                        "Something went wrong",
                        "The page could not be shown; the service's log says why.",
                    ),
                )
            }
        };
        let mut response = self.page(status, heading, Section::None, None, &text);
        response
            .headers_mut()
            .insert("error-reason", HeaderValue::from_static(reason.name()));
        response
    }
}

/// Why a page could not be shown.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Invalid(#[from] FieldViolation),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into()).boxed()
}

fn asset(content_type: &'static str, text: &'static str) -> Response<Body> {
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "public, max-age=300")
        .body(full(text))
        .unwrap_or_default()
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(full(text))
        .unwrap_or_default()
}

/// A 303 to `location`, setting `cookie` if given.
fn redirect(location: &'static str, cookie: Option<String>) -> Response<Body> {
    let mut response = Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, location);
    if let Some(cookie) = cookie {
        response = response.header(header::SET_COOKIE, cookie);
    }
    response.body(full("")).unwrap_or_default()
}
