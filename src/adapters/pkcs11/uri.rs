//! PKCS#11 URIs (RFC 7512), as they name a key: `pkcs11:token=meshroot;object=mesh-a` selects
//! the object labelled `mesh-a` in the token labelled `meshroot`. Path attributes narrow the
//! token (`token`, `serial`, `manufacturer`, `model`, `slot-id`) and the object (`object`,
//! `id`, `type`); `module-path` in the query names the module. A PIN never stands in a URI here:
//! `pin-value` and `pin-source` are refused, so no secret reaches a configuration file or a log
//! line (the PIN comes from `[pkcs11] pin_file` or `pin_env`).

use std::fmt;
use std::path::PathBuf;

use percent_encoding::percent_decode_str;

/// A parsed PKCS#11 URI that names one private key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyUri {
    pub token: Option<String>,
    pub serial: Option<String>,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub slot_id: Option<u64>,
    /// `CKA_LABEL` of the key.
    pub object: Option<String>,
    /// `CKA_ID` of the key.
    pub id: Option<Vec<u8>>,
    /// `module-path` from the query: overrides `[pkcs11] module`.
    pub module_path: Option<PathBuf>,
    /// The URI as written (it holds no secret), for messages.
    text: String,
}

/// Why a URI was refused; names the attribute.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    #[error("{0:?} is not a PKCS#11 URI (it must start with pkcs11:)")]
    NotPkcs11(String),
    #[error("{uri}: the attribute {attribute:?} is malformed: {why}")]
    Malformed {
        uri: String,
        attribute: String,
        why: String,
    },
    #[error(
        "{uri}: a PIN may not be written in a PKCS#11 URI ({attribute}); give it in [pkcs11] \
         pin_file or pin_env"
    )]
    PinInUri { uri: String, attribute: String },
    #[error("{uri}: the URI names no key: give object= (the key's label) or id=")]
    NoObject { uri: String },
    #[error("{uri}: type={value} names no private key")]
    NotPrivate { uri: String, value: String },
}

impl fmt::Display for KeyUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Whether a configured key is a PKCS#11 URI rather than a file.
pub fn is_pkcs11_uri(text: &str) -> bool {
    text.starts_with("pkcs11:")
}

impl KeyUri {
    pub fn parse(text: &str) -> Result<Self, UriError> {
        let rest = text
            .strip_prefix("pkcs11:")
            .ok_or_else(|| UriError::NotPkcs11(redacted(text)))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        // Messages show the URI with any PIN blanked, even the one that refuses it.
        let shown = redacted(text);
        let text = shown.as_str();
        let mut uri = Self {
            text: text.to_owned(),
            ..Self::default()
        };
        let malformed = |attribute: &str, why: &str| UriError::Malformed {
            uri: text.to_owned(),
            attribute: attribute.to_owned(),
            why: why.to_owned(),
        };
        for (separator, part) in [(';', path), ('&', query)] {
            for attribute in part.split(separator).filter(|a| !a.is_empty()) {
                let (name, value) = attribute
                    .split_once('=')
                    .ok_or_else(|| malformed(attribute, "expected name=value"))?;
                let bytes = percent_decode_str(value).collect::<Vec<u8>>();
                let utf8 =
                    || String::from_utf8(bytes.clone()).map_err(|_| malformed(name, "not UTF-8"));
                match (separator, name) {
                    (_, "pin-value" | "pin-source") => {
                        return Err(UriError::PinInUri {
                            uri: text.to_owned(),
                            attribute: name.to_owned(),
                        })
                    }
                    (';', "token") => uri.token = Some(utf8()?),
                    (';', "serial") => uri.serial = Some(utf8()?),
                    (';', "manufacturer") => uri.manufacturer = Some(utf8()?),
                    (';', "model") => uri.model = Some(utf8()?),
                    (';', "object") => uri.object = Some(utf8()?),
                    (';', "id") => uri.id = Some(bytes),
                    (';', "slot-id") => {
                        uri.slot_id = Some(
                            utf8()?
                                .parse()
                                .map_err(|_| malformed(name, "not a number"))?,
                        )
                    }
                    (';', "type") => {
                        let value = utf8()?;
                        if value != "private" {
                            return Err(UriError::NotPrivate {
                                uri: text.to_owned(),
                                value,
                            });
                        }
                    }
                    ('&', "module-path") => uri.module_path = Some(PathBuf::from(utf8()?)),
                    // RFC 7512 §2.3: an attribute a consumer does not know is ignored only in
                    // the query; in the path it would select something else, so it is refused.
                    ('&', _) => {}
                    _ => return Err(malformed(name, "not a PKCS#11 URI path attribute")),
                }
            }
        }
        if uri.object.is_none() && uri.id.is_none() {
            return Err(UriError::NoObject {
                uri: text.to_owned(),
            });
        }
        Ok(uri)
    }
}

impl KeyUri {
    /// The same key, selected by its `CKA_ID` as well.
    pub fn with_id(self, id: Vec<u8>) -> Self {
        Self {
            id: Some(id),
            ..self
        }
    }
}

/// `text` with the value of any `pin-value` attribute replaced by `***`.
fn redacted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("pin-value=") {
        let value_start = at + "pin-value=".len();
        out.push_str(&rest[..value_start]);
        out.push_str("***");
        let value_end = rest[value_start..]
            .find([';', '&', '?'])
            .map_or(rest.len(), |end| value_start + end);
        rest = &rest[value_end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_and_an_object_select_a_key() {
        let uri = KeyUri::parse("pkcs11:token=meshroot;object=mesh-a%20intermediate").unwrap();
        assert_eq!(uri.token.as_deref(), Some("meshroot"));
        assert_eq!(uri.object.as_deref(), Some("mesh-a intermediate"));
        assert_eq!(uri.id, None);
        assert_eq!(
            uri.to_string(),
            "pkcs11:token=meshroot;object=mesh-a%20intermediate"
        );
    }

    #[test]
    fn ids_serials_slots_and_the_module_are_read() {
        let uri = KeyUri::parse(
            "pkcs11:serial=0a1b;slot-id=3;id=%01%ff;type=private?module-path=/usr/lib/x.so&foo=bar",
        )
        .unwrap();
        assert_eq!(uri.serial.as_deref(), Some("0a1b"));
        assert_eq!(uri.slot_id, Some(3));
        assert_eq!(uri.id, Some(vec![0x01, 0xff]));
        assert_eq!(uri.module_path, Some(PathBuf::from("/usr/lib/x.so")));
    }

    #[test]
    fn a_pin_in_the_uri_is_refused_without_echoing_it() {
        for text in [
            "pkcs11:token=t;object=k?pin-value=123456",
            "pkcs11:token=t;object=k;pin-value=123456",
            "pkcs11:token=t;object=k?pin-source=file:/etc/pin",
        ] {
            let error = KeyUri::parse(text).unwrap_err();
            assert!(
                matches!(error, UriError::PinInUri { .. }),
                "{text}: {error}"
            );
            assert!(!error.to_string().contains("123456"), "{error}");
        }
    }

    #[test]
    fn malformed_uris_are_refused_with_the_attribute() {
        let cases = [
            ("file:/etc/key.pem", "not a PKCS#11 URI"),
            ("pkcs11:token=t", "names no key"),
            ("pkcs11:token=t;object=k;slot-id=x", "slot-id"),
            ("pkcs11:token=t;object=k;type=cert", "names no private key"),
            ("pkcs11:token=t;objekt=k", "objekt"),
            ("pkcs11:token=t;object", "expected name=value"),
            ("pkcs11:token=%ff;object=k", "not UTF-8"),
            ("pcks11:token=t;pin-value=123456", "pin-value=***"),
        ];
        for (text, expected) in cases {
            let error = KeyUri::parse(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
            assert!(!error.contains("123456"), "{error}");
        }
    }
}
