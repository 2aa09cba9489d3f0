//! Signing in to the page when the service has an `AUTH_TOKEN`: the token is
//! typed into a form (never put in an address), and the session cookie holds
//! an HMAC of a fixed label keyed by the token. Every replica that shares the
//! token accepts the same cookie, and changing the token signs everyone out.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hyper::header::{COOKIE, HeaderMap};
use ring::hmac;

const COOKIE_NAME: &str = "bh_session";
const LABEL: &[u8] = b"batch-history web session v1";

/// Who may see the page.
pub struct Sessions {
    key: hmac::Key,
    tag: hmac::Tag,
}

impl Sessions {
    pub fn new(token: &str) -> Self {
        let key = hmac::Key::new(hmac::HMAC_SHA256, token.as_bytes());
        let tag = hmac::sign(&key, LABEL);
        Self { key, tag }
    }

    /// Whether `presented` is the token, compared in constant time.
    pub fn token_matches(&self, presented: &str) -> bool {
        let key = hmac::Key::new(hmac::HMAC_SHA256, presented.as_bytes());
        hmac::verify(&key, LABEL, self.tag.as_ref()).is_ok()
    }

    /// Whether the request carries a session cookie this token signed.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        cookies(headers)
            .filter(|(name, _)| *name == COOKIE_NAME)
            .filter_map(|(_, value)| URL_SAFE_NO_PAD.decode(value).ok())
            .any(|tag| hmac::verify(&self.key, LABEL, &tag).is_ok())
    }

    /// The `Set-Cookie` value that signs a browser in. `HttpOnly` keeps it
    /// from scripts; `SameSite=Strict` from other sites' forms and links.
    pub fn sign_in_cookie(&self) -> String {
        format!(
            "{COOKIE_NAME}={}; Path=/; HttpOnly; SameSite=Strict",
            URL_SAFE_NO_PAD.encode(self.tag.as_ref())
        )
    }
}

/// The `Set-Cookie` value that signs a browser out.
pub fn sign_out_cookie() -> String {
    format!("{COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
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

    fn with_cookie(cookie: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, cookie.parse().unwrap());
        headers
    }

    #[test]
    fn only_the_token_signs_in_and_only_its_cookie_admits() {
        let sessions = Sessions::new("s3cret");
        assert!(sessions.token_matches("s3cret"));
        for wrong in ["", "s3cre", "s3cret ", "S3CRET"] {
            assert!(!sessions.token_matches(wrong), "{wrong:?}");
        }
        let cookie = sessions.sign_in_cookie();
        let pair = cookie.split(';').next().unwrap();
        assert!(sessions.admits(&with_cookie(&format!("theme=dark; {pair}"))));
        assert!(!sessions.admits(&HeaderMap::new()));
        assert!(!sessions.admits(&with_cookie("bh_session=AAAA")));
        assert!(!Sessions::new("other").admits(&with_cookie(pair)));
        assert!(!cookie.contains("s3cret"));
    }
}
