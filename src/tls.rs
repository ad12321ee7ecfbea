//! The TLS client configuration of the agent and the CLI: the system's root certificates plus,
//! optionally, the certificates given with `--ca-file`; and one clear sentence for a
//! certificate the client refused. One configuration serves HTTP (reqwest) and WebSockets
//! (tokio-tungstenite).
//!
//! `--ca-file` may hold a CA or the server's own self-signed certificate. The usual
//! `openssl req -x509` makes the latter with `CA:TRUE`, which webpki refuses as a server
//! certificate (`CaUsedAsEndEntity`), so a certificate that is byte-for-byte one of those
//! given is pinned: it is accepted if it names the server and is within its validity period.
//!
//! Depends on nothing else of fleetrun: both `agent` and `client` use it.

use anyhow::Context as _;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use std::path::Path;
use std::sync::Arc;

/// The client configuration: system roots plus the certificates in `ca_file`, each of which is
/// also accepted as the server's own certificate (see the module docs).
pub fn client_config(ca_file: Option<&Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system certificates are skipped; a server they would have vouched for then
    // fails its handshake with a clear error.
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let mut given = Vec::new();
    if let Some(path) = ca_file {
        given = read_ca_file(path)?;
        for cert in &given {
            roots
                .add(cert.clone())
                .with_context(|| format!("--ca-file {} holds an unusable certificate", path.display()))?;
        }
    }
    let builder =
        rustls::ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let config = if roots.is_empty() {
        // No system roots and no --ca-file (a bare container): every https server is refused
        // as UnknownIssuer, while plain http to this machine still works.
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        let verifier = PinnedOrWebPki {
            webpki: WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build()?,
            pinned: given,
        };
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth()
    };
    Ok(Arc::new(config))
}

fn read_ca_file(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read --ca-file {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("--ca-file {} is not a PEM certificate", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!(
            "--ca-file {} holds no certificate (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        );
    }
    Ok(certs)
}

/// webpki verification, except for a server certificate that is one of `pinned`.
#[derive(Debug)]
struct PinnedOrWebPki {
    /// Verifies chains to the system roots and the `--ca-file` certificates.
    webpki: Arc<WebPkiServerVerifier>,
    /// The `--ca-file` certificates, DER.
    pinned: Vec<CertificateDer<'static>>,
}

impl ServerCertVerifier for PinnedOrWebPki {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !self.pinned.iter().any(|pinned| pinned.as_ref() == end_entity.as_ref()) {
            return self
                .webpki
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        }
        // The user handed us this very certificate, so its issuer and basic constraints do not
        // matter; that it is meant for this name and this time still does.
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_name(&parsed, server_name)?;
        check_validity(end_entity, now)?;
        Ok(ServerCertVerified::assertion())
    }

    // The handshake signatures prove the server holds the certificate's key: always checked.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Whether `now` lies within the certificate's notBefore..notAfter. webpki checks this only
/// while building a chain, which a pinned certificate skips, hence x509-parser.
fn check_validity(cert: &CertificateDer<'_>, now: UnixTime) -> Result<(), rustls::Error> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|_| CertificateError::BadEncoding)?;
    let validity = parsed.validity();
    let now = now.as_secs() as i64;
    if now < validity.not_before.timestamp() {
        return Err(CertificateError::NotValidYet.into());
    }
    if now > validity.not_after.timestamp() {
        return Err(CertificateError::Expired.into());
    }
    Ok(())
}

/// Replaces an error caused by a refused server certificate with one sentence saying what to
/// do; returns any other error unchanged.
pub fn explain(error: anyhow::Error) -> anyhow::Error {
    let found = error.chain().find_map(certificate_error);
    match found {
        Some(refused) => anyhow::anyhow!(advice(refused)),
        None => error,
    }
}

/// The certificate error in `error`, or in the errors an `io::Error` wraps: `io::Error::source`
/// skips the error it wraps, and reqwest and tokio-tungstenite report rustls errors inside one
/// (reqwest inside two).
fn certificate_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a CertificateError> {
    if let Some(rustls::Error::InvalidCertificate(refused)) = error.downcast_ref::<rustls::Error>() {
        return Some(refused);
    }
    let wrapped: &(dyn std::error::Error + 'static) = error.downcast_ref::<std::io::Error>()?.get_ref()?;
    std::iter::successors(Some(wrapped), |e| e.source()).find_map(certificate_error)
}

fn advice(refused: &CertificateError) -> String {
    use CertificateError::*;
    match refused {
        NotValidForName | NotValidForNameContext { .. } => format!(
            "the server's certificate is not valid for the host in --server ({refused}): use a name the \
             certificate lists, or reissue it with that name in subjectAltName and pass the new one with \
             --ca-file FILE if it is self-signed"
        ),
        Expired | ExpiredContext { .. } | NotValidYet | NotValidYetContext { .. } => format!(
            "the server's certificate is outside its validity period ({refused}): renew it on the server, \
             check this machine's clock, and pass the new one with --ca-file FILE if it is self-signed"
        ),
        // `Other` holds webpki's own words, e.g. CaUsedAsEndEntity.
        Other(other) => not_trusted(other),
        _ => not_trusted(refused),
    }
}

fn not_trusted(reason: &dyn std::fmt::Display) -> String {
    format!(
        "the server's certificate is not trusted ({reason}): pass the CA that signed it, or the server's \
         self-signed certificate, with --ca-file FILE"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate marked as a CA, like `openssl req -x509` makes.
    fn self_signed_ca_like(names: &[&str]) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().der().clone()
    }

    fn verifier(anchors: &[&CertificateDer<'static>], pinned: &[&CertificateDer<'static>]) -> PinnedOrWebPki {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in anchors.iter().chain(pinned) {
            roots.add((*cert).clone()).unwrap();
        }
        PinnedOrWebPki {
            webpki: WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap(),
            pinned: pinned.iter().map(|c| (*c).clone()).collect(),
        }
    }

    fn verify(verifier: &PinnedOrWebPki, cert: &CertificateDer<'_>, name: &str) -> Result<(), rustls::Error> {
        let name = ServerName::try_from(name.to_string()).unwrap();
        verifier
            .verify_server_cert(cert, &[], &name, &[], UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn a_pinned_self_signed_ca_certificate_is_accepted_for_its_names_only() {
        let cert = self_signed_ca_like(&["localhost", "127.0.0.1"]);
        let verifier = verifier(&[], &[&cert]);

        assert!(verify(&verifier, &cert, "localhost").is_ok());
        assert!(verify(&verifier, &cert, "127.0.0.1").is_ok());
        let other = verify(&verifier, &cert, "other.example").unwrap_err();
        assert!(
            matches!(
                other,
                rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })
            ),
            "{other:?}"
        );
    }

    #[test]
    fn a_pinned_certificate_outside_its_validity_period_is_refused() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2001, 1, 1);
        params.not_after = rcgen::date_time_ymd(2002, 1, 1);
        let expired = params.self_signed(&key).unwrap().der().clone();
        let verifier = verifier(&[], &[&expired]);

        let refused = verify(&verifier, &expired, "localhost").unwrap_err();

        assert_eq!(refused, rustls::Error::InvalidCertificate(CertificateError::Expired));
    }

    #[test]
    fn a_certificate_signed_by_a_given_ca_is_accepted_and_an_unknown_one_is_not() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let signed = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let stranger = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .unwrap()
            .cert;
        let verifier = verifier(&[], &[ca.der()]);

        assert!(verify(&verifier, signed.der(), "localhost").is_ok());
        let refused = verify(&verifier, stranger.der(), "localhost").unwrap_err();
        // BadSignature: rcgen gives the CA and the stranger the same default subject.
        assert!(
            matches!(
                refused,
                rustls::Error::InvalidCertificate(CertificateError::BadSignature | CertificateError::UnknownIssuer)
            ),
            "{refused:?}"
        );
    }

    #[test]
    fn a_refused_certificate_inside_an_io_error_becomes_advice_naming_ca_file() {
        let tls = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let error =
            anyhow::Error::new(std::io::Error::new(std::io::ErrorKind::InvalidData, tls)).context("cannot connect");

        let explained = explain(error).to_string();

        assert!(
            explained.starts_with("the server's certificate is not trusted (UnknownIssuer)"),
            "{explained}"
        );
        assert!(explained.contains("--ca-file FILE"), "{explained}");
        let other = explain(anyhow::anyhow!("connection refused")).to_string();
        assert_eq!(other, "connection refused");
    }
}
