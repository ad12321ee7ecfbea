//! The two signature schemes the Alibaba SDKs sign requests with (research/ecs-api-compat.md
//! §4, §5): ACS3-HMAC-SHA256, the Tea SDKs' default, and RPC V1 HMAC-SHA1, the legacy SDK's
//! and the CLI's. [`claim`] reads who signed and when without a secret; [`verify`] recomputes
//! the signature with the secret. Both compare in constant time.

use super::error::EcsError;
use crate::protocol::hex;
use axum::http::HeaderMap;
use base64::Engine as _;
use ring::{digest, hmac};
use subtle::ConstantTimeEq as _;

/// What a request says about its signature, read before the secret is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub access_key_id: String,
    /// `x-acs-signature-nonce` or `SignatureNonce`.
    pub nonce: String,
    /// `x-acs-date` or `Timestamp`, as sent.
    pub timestamp: String,
    scheme: Scheme,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Scheme {
    /// ACS3-HMAC-SHA256: the headers it signed (lower case, `;`-separated) and the hex signature.
    V3 { signed_headers: String, signature: String },
    /// RPC V1 HMAC-SHA1: the Base64 signature.
    V1 { signature: String },
}

/// The parts of a request a signature covers.
pub struct Signed<'a> {
    pub method: &'a str,
    /// The query's pairs, decoded, in the order sent.
    pub query: &'a [(String, String)],
    /// A form body's pairs, decoded (V1 signs them with the query; V3 signs the body's hash).
    pub form: &'a [(String, String)],
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

const V3_ALGORITHM: &str = "ACS3-HMAC-SHA256";

/// Reads the signature's claims: an `Authorization: ACS3-HMAC-SHA256 …` header, or V1's
/// `Signature` and `AccessKeyId` parameters.
pub fn claim(req: &Signed) -> Result<Claim, EcsError> {
    let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(auth) = header("authorization").filter(|a| a.starts_with("ACS3-")) {
        let rest = auth
            .strip_prefix(V3_ALGORITHM)
            .and_then(|r| r.strip_prefix(' '))
            .ok_or_else(|| {
                EcsError::bad_request(
                    "InvalidSignatureMethod",
                    "the signature algorithm is not supported: sign with ACS3-HMAC-SHA256 or RPC V1 HMAC-SHA1",
                )
            })?;
        let mut credential = None;
        let mut signed_headers = None;
        let mut signature = None;
        for part in rest.split(',') {
            match part.trim().split_once('=') {
                Some(("Credential", v)) => credential = Some(v),
                Some(("SignedHeaders", v)) => signed_headers = Some(v),
                Some(("Signature", v)) => signature = Some(v),
                _ => {}
            }
        }
        let (Some(credential), Some(signed_headers), Some(signature)) = (credential, signed_headers, signature) else {
            return Err(EcsError::bad_request(
                "IncompleteSignature",
                "the Authorization header needs Credential, SignedHeaders and Signature",
            ));
        };
        let required = |name: &str| header(name).map(str::to_string).ok_or_else(|| EcsError::missing(name));
        return Ok(Claim {
            access_key_id: credential.to_string(),
            nonce: required("x-acs-signature-nonce")?,
            timestamp: required("x-acs-date")?,
            scheme: Scheme::V3 {
                signed_headers: signed_headers.to_string(),
                signature: signature.to_string(),
            },
        });
    }
    let param = |name: &str| {
        req.query
            .iter()
            .chain(req.form)
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let signature = param("Signature").ok_or_else(|| EcsError::missing("Signature"))?;
    let method = param("SignatureMethod").unwrap_or_default();
    if method != "HMAC-SHA1" {
        return Err(EcsError::bad_request(
            "InvalidSignatureMethod",
            format!(
                "SignatureMethod {method:?} is not supported: use HMAC-SHA1 (or ACS3-HMAC-SHA256 in the Authorization header)"
            ),
        ));
    }
    if let Some(version) = param("SignatureVersion").filter(|v| v != "1.0") {
        return Err(EcsError::bad_request(
            "InvalidSignatureVersion",
            format!("SignatureVersion {version:?} is not supported: use 1.0"),
        ));
    }
    Ok(Claim {
        access_key_id: param("AccessKeyId").ok_or_else(|| EcsError::missing("AccessKeyId"))?,
        nonce: param("SignatureNonce").ok_or_else(|| EcsError::missing("SignatureNonce"))?,
        timestamp: param("Timestamp").ok_or_else(|| EcsError::missing("Timestamp"))?,
        scheme: Scheme::V1 { signature },
    })
}

/// Checks the signature with the key's secret.
pub fn verify(claim: &Claim, req: &Signed, secret: &str) -> Result<(), EcsError> {
    match &claim.scheme {
        Scheme::V3 {
            signed_headers,
            signature,
        } => {
            let payload_hash = hex(digest::digest(&digest::SHA256, req.body).as_ref());
            let sent_hash = req
                .headers
                .get("x-acs-content-sha256")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if !sent_hash.eq_ignore_ascii_case(&payload_hash) {
                return Err(EcsError::bad_request(
                    "ContentSHA256NotMatched",
                    "x-acs-content-sha256 is not the SHA-256 of the request body",
                ));
            }
            let string_to_sign = v3_string_to_sign(req, signed_headers, &payload_hash);
            let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
            let expected = hex(hmac::sign(&key, string_to_sign.as_bytes()).as_ref());
            if !bool::from(expected.as_bytes().ct_eq(signature.as_bytes())) {
                return Err(EcsError::signature_mismatch(&string_to_sign));
            }
        }
        Scheme::V1 { signature } => {
            let string_to_sign = v1_string_to_sign(req);
            let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, format!("{secret}&").as_bytes());
            let expected =
                base64::engine::general_purpose::STANDARD.encode(hmac::sign(&key, string_to_sign.as_bytes()).as_ref());
            if !bool::from(expected.as_bytes().ct_eq(signature.as_bytes())) {
                return Err(EcsError::signature_mismatch(&string_to_sign));
            }
        }
    }
    Ok(())
}

/// ACS3's string to sign: the algorithm and the hash of the canonical request, whose headers
/// are rebuilt from the list the client signed (the SDKs sign different sets).
fn v3_string_to_sign(req: &Signed, signed_headers: &str, payload_hash: &str) -> String {
    let mut canonical_headers = String::new();
    for name in signed_headers.split(';') {
        let mut values: Vec<&str> = req
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .collect();
        values.sort_unstable();
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let canonical_request = format!(
        "{}\n/\n{}\n{canonical_headers}\n{signed_headers}\n{payload_hash}",
        req.method,
        canonical_query(req.query.iter())
    );
    format!(
        "{V3_ALGORITHM}\n{}",
        hex(digest::digest(&digest::SHA256, canonical_request.as_bytes()).as_ref())
    )
}

/// V1's string to sign: the method, `/` and the canonical query of every parameter (query and
/// form) but `Signature`, each percent-encoded once more.
fn v1_string_to_sign(req: &Signed) -> String {
    let params = req.query.iter().chain(req.form).filter(|(k, _)| k != "Signature");
    format!(
        "{}&{}&{}",
        req.method,
        percent_encode("/"),
        percent_encode(&canonical_query(params))
    )
}

/// Pairs sorted by key (then value, byte order), each `pct(key)=pct(value)`, joined with `&`; empty
/// values are kept (the legacy SDK signs `SignatureType=`).
fn canonical_query<'a>(pairs: impl Iterator<Item = &'a (String, String)>) -> String {
    let mut sorted: Vec<&(String, String)> = pairs.collect();
    sorted.sort_unstable();
    sorted
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// RFC 3986 encoding of UTF-8 bytes with upper-case hex: only `A-Z a-z 0-9 - _ . ~` stay.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    //! The test vectors of research/ecs-api-compat.md §4.3 and §5.3, produced by the SDKs'
    //! own signers.
    use super::*;
    use axum::http::HeaderValue;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    const CONTENT: &str = "echo \"hi there\" ~*+/&=%é";
    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn v3_request(signature: &str) -> (Vec<(String, String)>, HeaderMap) {
        let query = pairs(&[
            ("RegionId", "cn-hangzhou"),
            ("Type", "RunShellScript"),
            ("CommandContent", CONTENT),
            ("InstanceId.1", "i-1"),
            ("InstanceId.2", "i-2"),
            ("Timeout", "60"),
        ]);
        let mut headers = HeaderMap::new();
        for (k, v) in [
            ("host", "127.0.0.1:8080"),
            ("x-acs-action", "RunCommand"),
            ("x-acs-version", "2014-05-26"),
            ("x-acs-date", "2024-01-01T00:00:00Z"),
            ("x-acs-signature-nonce", "nonce-0001"),
            ("x-acs-content-sha256", EMPTY_SHA256),
        ] {
            headers.insert(k, HeaderValue::from_static(v));
        }
        let auth = format!(
            "ACS3-HMAC-SHA256 Credential=testid,SignedHeaders=host;x-acs-action;x-acs-content-sha256;x-acs-date;\
             x-acs-signature-nonce;x-acs-version,Signature={signature}"
        );
        headers.insert("authorization", HeaderValue::from_str(&auth).unwrap());
        (query, headers)
    }

    #[test]
    fn acs3_matches_the_sdks_vector() {
        let good = "fc9d9242045869375a1ba872d2ee7b868edb5992a9059fc4f4f86fe78462e43a";
        let (query, headers) = v3_request(good);
        let req = Signed {
            method: "POST",
            query: &query,
            form: &[],
            headers: &headers,
            body: b"",
        };
        let claim = claim(&req).unwrap();
        assert_eq!(
            (
                claim.access_key_id.as_str(),
                claim.nonce.as_str(),
                claim.timestamp.as_str()
            ),
            ("testid", "nonce-0001", "2024-01-01T00:00:00Z")
        );
        assert_eq!(
            canonical_query(query.iter()),
            "CommandContent=echo%20%22hi%20there%22%20~%2A%2B%2F%26%3D%25%C3%A9&InstanceId.1=i-1&InstanceId.2=i-2\
             &RegionId=cn-hangzhou&Timeout=60&Type=RunShellScript"
        );
        verify(&claim, &req, "testsecret").unwrap();
        let wrong = verify(&claim, &req, "other").unwrap_err();
        assert_eq!(wrong.code, "SignatureDoesNotMatch");
        assert!(wrong.message.contains(':'), "the legacy SDK splits this message on ':'");

        let (query, headers) = v3_request(&good.replace('f', "0"));
        let tampered = Signed {
            method: "POST",
            query: &query,
            form: &[],
            headers: &headers,
            body: b"",
        };
        let tampered_claim = super::claim(&tampered).unwrap();
        assert!(verify(&tampered_claim, &tampered, "testsecret").is_err());
        let body_changed = Signed { body: b"x", ..req };
        assert_eq!(
            verify(&claim, &body_changed, "testsecret").unwrap_err().code,
            "ContentSHA256NotMatched"
        );
    }

    #[test]
    fn rpc_v1_matches_the_sdks_vector_with_form_parameters_too() {
        let all = pairs(&[
            ("RegionId", "cn-hangzhou"),
            ("Type", "RunShellScript"),
            ("CommandContent", CONTENT),
            ("InstanceId.1", "i-1"),
            ("InstanceId.2", "i-2"),
            ("Timeout", "60"),
            ("Action", "RunCommand"),
            ("Version", "2014-05-26"),
            ("Format", "JSON"),
            ("Timestamp", "2024-01-01T00:00:00Z"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureType", ""),
            ("SignatureVersion", "1.0"),
            ("SignatureNonce", "nonce-0001"),
            ("AccessKeyId", "testid"),
            ("Signature", "KWgrfrYpZgNkNFPT4nxjkW8/4JU="),
        ]);
        let headers = HeaderMap::new();
        // All in the query, then half of them in a form body: the same signature.
        for split in [all.len(), 5] {
            let (query, form) = all.split_at(split);
            let req = Signed {
                method: "POST",
                query,
                form,
                headers: &headers,
                body: b"",
            };
            let claim = claim(&req).unwrap();
            assert_eq!(claim.access_key_id, "testid");
            assert!(v1_string_to_sign(&req).starts_with(
                "POST&%2F&AccessKeyId%3Dtestid%26Action%3DRunCommand%26CommandContent%3Decho%2520%2522hi"
            ));
            verify(&claim, &req, "testsecret").unwrap();
            let err = verify(&claim, &req, "wrong").unwrap_err();
            assert_eq!(err.code, "SignatureDoesNotMatch");
            assert!(err.message.ends_with(&v1_string_to_sign(&req)));
        }
    }

    #[test]
    fn a_request_without_a_signature_names_what_is_missing() {
        let headers = HeaderMap::new();
        let query = pairs(&[("Action", "DescribeRegions")]);
        let req = Signed {
            method: "GET",
            query: &query,
            form: &[],
            headers: &headers,
            body: b"",
        };
        let err = claim(&req).unwrap_err();
        assert_eq!((err.code.as_ref(), err.status.as_u16()), ("MissingParameter", 400));
        assert!(err.message.contains("Signature"));
    }
}
