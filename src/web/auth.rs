//! Signing in to the page when the service has an `AUTH_TOKEN`: the token is
//! typed into a form (never put in an address), and the session cookie holds
//! an HMAC of a fixed label keyed by the token. Every replica that shares the
//! token accepts the same cookie, and changing the token signs everyone out.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hyper::header::{COOKIE, HeaderMap};
use ring::hmac;
use tokio::time::Instant;

const COOKIE_NAME: &str = "bh_session";
const LABEL: &[u8] = b"batch-history web session v1";

/// Who may see the page.
pub(crate) struct Sessions {
    /// Derived from the token: signs the session cookie.
    key: hmac::Key,
    /// The session cookie's value: the key's signature of [`LABEL`].
    tag: hmac::Tag,
    /// Over TLS the cookie is `Secure`: never sent over plain HTTP.
    secure: bool,
    pub(crate) throttle: Throttle,
}

impl Sessions {
    pub(crate) fn new(token: &str, secure: bool) -> Self {
        let key = hmac::Key::new(hmac::HMAC_SHA256, token.as_bytes());
        let tag = hmac::sign(&key, LABEL);
        Self {
            key,
            tag,
            secure,
            throttle: Throttle::default(),
        }
    }

    /// Whether `presented` is the token, compared in constant time.
    pub(crate) fn token_matches(&self, presented: &str) -> bool {
        let key = hmac::Key::new(hmac::HMAC_SHA256, presented.as_bytes());
        hmac::verify(&key, LABEL, self.tag.as_ref()).is_ok()
    }

    /// Whether the request carries a session cookie this token signed.
    pub(crate) fn admits(&self, headers: &HeaderMap) -> bool {
        cookies(headers)
            .filter(|(name, _)| *name == COOKIE_NAME)
            .filter_map(|(_, value)| URL_SAFE_NO_PAD.decode(value).ok())
            .any(|tag| hmac::verify(&self.key, LABEL, &tag).is_ok())
    }

    /// The `Set-Cookie` value that signs a browser in. `HttpOnly` keeps it
    /// from scripts; `SameSite=Strict` from other sites' forms and links.
    pub(crate) fn sign_in_cookie(&self) -> String {
        format!(
            "{COOKIE_NAME}={}; Path=/; HttpOnly; SameSite=Strict{}",
            URL_SAFE_NO_PAD.encode(self.tag.as_ref()),
            secure_attribute(self.secure)
        )
    }
}

/// The `Set-Cookie` value that signs a browser out.
pub(crate) fn sign_out_cookie(secure: bool) -> String {
    format!(
        "{COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        secure_attribute(secure)
    )
}

fn secure_attribute(secure: bool) -> &'static str {
    if secure { "; Secure" } else { "" }
}

/// The wait before the first answer after a wrong token; it doubles with
/// every wrong token from the same address, up to [`MAX_INTERVAL`].
const FIRST_INTERVAL: Duration = Duration::from_millis(250);
const MAX_INTERVAL: Duration = Duration::from_secs(8);
/// An attempt that would wait longer is refused at once (429).
const MAX_WAIT: Duration = Duration::from_secs(5);
/// Addresses with no attempt for this long are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Addresses remembered at most; past it the oldest are forgotten.
const MAX_ADDRESSES: usize = 10_000;

/// Sign-in attempts per client address: after a wrong token, each attempt
/// from that address waits its turn, longer after every wrong token, so a
/// guesser gets a few tries a minute however many connections it opens; a
/// right token clears the address. Behind a reverse proxy every client
/// shares the proxy's address.
#[derive(Default)]
pub(crate) struct Throttle {
    addresses: Mutex<HashMap<IpAddr, Attempts>>,
}

struct Attempts {
    wrong: u32,
    /// When the next attempt from this address may be checked.
    next_turn: Instant,
}

impl Throttle {
    /// How long an attempt from `address` waits before its token is
    /// checked, reserving its turn; `None` if that would be past
    /// [`MAX_WAIT`] (the attempt is refused and reserves nothing).
    pub(crate) fn turn(&self, address: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let mut addresses = self
            .addresses
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if addresses.len() >= MAX_ADDRESSES {
            addresses.retain(|_, attempts| now.duration_since(attempts.next_turn) < FORGET_AFTER);
            if addresses.len() >= MAX_ADDRESSES {
                addresses.clear();
            }
        }
        let Some(attempts) = addresses.get_mut(&address) else {
            return Some(Duration::ZERO);
        };
        let turn = attempts.next_turn.max(now);
        let wait = turn - now;
        if wait > MAX_WAIT {
            return None;
        }
        attempts.next_turn = turn + interval(attempts.wrong);
        Some(wait)
    }

    /// Records the outcome of an attempt from `address`.
    pub(crate) fn checked(&self, address: IpAddr, right: bool) {
        let mut addresses = self
            .addresses
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if right {
            addresses.remove(&address);
            return;
        }
        // Later attempts reserved their turns when they asked for them; a
        // first wrong token sets the first turn.
        addresses
            .entry(address)
            .and_modify(|attempts| attempts.wrong = attempts.wrong.saturating_add(1))
            .or_insert_with(|| Attempts {
                wrong: 1,
                next_turn: Instant::now() + interval(0),
            });
    }
}

/// The wait added to an address's next turn after its `wrong`-th wrong token
/// (counting from 0).
fn interval(wrong: u32) -> Duration {
    FIRST_INTERVAL
        .saturating_mul(1 << wrong.min(16))
        .min(MAX_INTERVAL)
}

fn cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_tokens_wait_longer_each_time_and_a_right_one_clears_the_address() {
        let throttle = Throttle::default();
        let (guesser, other): (IpAddr, IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        // Asked at once, one after another: each turn comes after the one
        // before, and the gaps double (250 ms, 500 ms, 1 s, 2 s).
        let mut waits = Vec::new();
        while let Some(wait) = throttle.turn(guesser) {
            waits.push(wait.as_millis());
            throttle.checked(guesser, false);
        }
        let expected = [0, 250, 750, 1_750, 3_750];
        assert_eq!(waits.len(), expected.len(), "{waits:?}");
        for (wait, expected) in waits.iter().zip(expected) {
            assert!(wait.abs_diff(expected) < 50, "{waits:?}");
        }
        assert_eq!(
            throttle.turn(other),
            Some(Duration::ZERO),
            "other addresses are not slowed"
        );
        throttle.checked(guesser, true);
        assert_eq!(
            throttle.turn(guesser),
            Some(Duration::ZERO),
            "a right token clears it"
        );
    }

    fn with_cookie(cookie: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, cookie.parse().unwrap());
        headers
    }

    #[test]
    fn only_the_token_signs_in_and_only_its_cookie_admits() {
        let sessions = Sessions::new("s3cret", false);
        assert!(sessions.token_matches("s3cret"));
        for wrong in ["", "s3cre", "s3cret ", "S3CRET"] {
            assert!(!sessions.token_matches(wrong), "{wrong:?}");
        }
        let cookie = sessions.sign_in_cookie();
        let pair = cookie.split(';').next().unwrap();
        assert!(sessions.admits(&with_cookie(&format!("theme=dark; {pair}"))));
        assert!(!sessions.admits(&HeaderMap::new()));
        assert!(!sessions.admits(&with_cookie("bh_session=AAAA")));
        assert!(!Sessions::new("other", false).admits(&with_cookie(pair)));
        assert!(!cookie.contains("s3cret"));
    }
}
