//! Optional shared-secret authentication of BatchHistory calls.

use std::sync::Arc;

use tonic::{Request, Status, service::Interceptor};

use super::status::{Reason, failed};

/// Admits a call only if it carries `authorization: Bearer <token>`, when a
/// token is configured; admits everything otherwise. Health and reflection
/// are not behind it, so probes and grpcurl listings keep working.
#[derive(Clone, Default)]
pub(crate) struct BearerAuth {
    token: Option<Arc<[u8]>>,
}

impl BearerAuth {
    /// `None` (or an empty token) turns authentication off.
    pub(crate) fn new(token: Option<&str>) -> Self {
        Self {
            token: token
                .filter(|token| !token.is_empty())
                .map(|token| Arc::from(token.as_bytes())),
        }
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.token else {
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or_default();
        if constant_time_eq(presented.as_bytes(), expected) {
            Ok(request)
        } else {
            Err(failed(
                Reason::Unauthenticated,
                "missing or wrong bearer token in the authorization metadata".into(),
                &[],
            ))
        }
    }
}

/// Compares without an early exit, so that timing does not reveal how much
/// of the token a guess got right (only its length, which is not secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0_u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(auth: &mut BearerAuth, header: Option<&str>) -> Result<(), tonic::Code> {
        let mut request = Request::new(());
        if let Some(header) = header {
            request
                .metadata_mut()
                .insert("authorization", header.parse().unwrap());
        }
        auth.call(request).map(drop).map_err(|status| status.code())
    }

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let mut auth = BearerAuth::new(Some("s3cret"));
        assert_eq!(call(&mut auth, Some("Bearer s3cret")), Ok(()));
        for wrong in [
            None,
            Some("Bearer s3cre"),
            Some("Bearer s3cret!"),
            Some("s3cret"),
            Some("bearer s3cret"),
        ] {
            assert_eq!(
                call(&mut auth, wrong),
                Err(tonic::Code::Unauthenticated),
                "{wrong:?}"
            );
        }
    }

    #[test]
    fn without_a_token_everything_passes() {
        assert_eq!(call(&mut BearerAuth::new(None), None), Ok(()));
        assert_eq!(call(&mut BearerAuth::new(Some("")), None), Ok(()));
    }
}
