//! The agent's TLS client configuration: the system's root certificates plus, optionally, the
//! CA given with `--ca-file` (for a server with a private certificate). One configuration serves
//! both enrolment (reqwest) and the WebSocket (tokio-tungstenite).

use anyhow::Context as _;
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::rustls;

pub fn client_config(ca_file: Option<&Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system certificates are skipped; a server they would have vouched for then
    // fails its handshake with a clear error.
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .with_context(|| format!("cannot read --ca-file {}", path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("--ca-file {} is not a PEM certificate", path.display()))?;
        for cert in certs {
            roots
                .add(cert)
                .with_context(|| format!("--ca-file {} holds an unusable certificate", path.display()))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
