//! The parts of a service-account token as Kubernetes writes them: the JOSE header, the
//! claims (with `kubernetes.io`), and decoding a base64url JSON part.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::adapters::authn::AuthnError;

/// The subject prefix of a service account's token.
pub(super) const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Algorithm {
    Rs256,
    Es256,
}

#[derive(Deserialize)]
pub(super) struct Header {
    pub(super) alg: String,
    #[serde(default)]
    pub(super) kid: Option<String>,
}

#[derive(Deserialize, Serialize)]
pub(super) struct Claims {
    pub(super) iss: String,
    pub(super) sub: String,
    #[serde(default, deserialize_with = "one_or_many")]
    pub(super) aud: Vec<String>,
    #[serde(default)]
    pub(super) exp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) iat: Option<i64>,
    #[serde(
        default,
        rename = "kubernetes.io",
        skip_serializing_if = "Option::is_none"
    )]
    pub(super) kubernetes: Option<KubernetesClaim>,
}

#[derive(Deserialize, Serialize)]
pub(super) struct KubernetesClaim {
    pub(super) namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) serviceaccount: Option<NamedObject>,
    /// The pod a projected token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) pod: Option<NamedObject>,
    /// Its node (Kubernetes 1.30 and later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) node: Option<NamedObject>,
}

#[derive(Deserialize, Serialize)]
pub(super) struct NamedObject {
    pub(super) name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(super) uid: String,
}

/// RFC 7519 §4.1.3: `aud` is a string or an array of strings.
pub(super) fn one_or_many<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

pub(super) fn decode_json<T: serde::de::DeserializeOwned>(
    part: &str,
    what: &'static str,
) -> Result<T, AuthnError> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| {
        AuthnError::TokenMalformed(match what {
            "header" => "header is not base64url",
            _ => "claims are not base64url",
        })
    })?;
    serde_json::from_slice(&bytes).map_err(|_| {
        AuthnError::TokenMalformed(match what {
            "header" => "header is not the expected JSON",
            _ => "claims are not the expected JSON",
        })
    })
}
