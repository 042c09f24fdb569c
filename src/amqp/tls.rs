//! TLS for `amqps://` brokers (rustls with the *ring* provider).
//!
//! The server's certificate is verified against the system's CA store
//! (`/etc/ssl/certs`, or `SSL_CERT_FILE`/`SSL_CERT_DIR`) or, when a CA file is
//! configured, against that file only; its name must match the URL's host (a DNS name
//! or an IP address in the certificate's subjectAltName). A client certificate and key
//! (PEM) are sent when configured. Verification is turned off only by an explicit
//! `verify = false`, which callers report as a warning.
//!
//! Everything is loaded once, when the configuration is read, so a missing or garbled
//! file is a configuration error at start (and at `--check`), not a reconnect loop.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lapin::tcp::RustlsConnector;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// What the configuration says about TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM CA certificates to trust instead of the system store.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain, sent when the broker asks for one.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Verify the server's certificate and name (the default).
    pub verify: bool,
}

impl Default for TlsSettings {
    fn default() -> TlsSettings {
        TlsSettings {
            ca_file: None,
            cert_file: None,
            key_file: None,
            verify: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("no usable CA certificate in the system store (/etc/ssl/certs){0}; set a CA file")]
    NoSystemRoots(String),
    #[error("a client certificate needs its key and a key its certificate (both or neither)")]
    HalfIdentity,
    #[error("client certificate {cert} and key {key}: {reason}")]
    Identity {
        cert: String,
        key: String,
        reason: String,
    },
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// A ready TLS client: the settings it came from and the rustls configuration.
#[derive(Clone)]
pub struct Tls {
    settings: TlsSettings,
    connector: RustlsConnector,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn file_err(path: &Path, reason: impl fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Every certificate in a PEM file; an empty or unparsable file is an error.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| file_err(path, e))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(
            path,
            "no PEM certificate (BEGIN CERTIFICATE) in it",
        ));
    }
    Ok(certs)
}

fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let (added, _) = store.add_parsable_certificates(read_certs(path)?);
            if added == 0 {
                return Err(file_err(path, "no usable CA certificate in it"));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                return Err(TlsError::NoSystemRoots(why));
            }
        }
    }
    Ok(store)
}

impl Tls {
    /// Load the CA store, the client identity, and build the rustls configuration.
    pub fn load(settings: &TlsSettings) -> Result<Tls, TlsError> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?;
        let builder = if settings.verify {
            builder.with_root_certificates(roots(settings.ca_file.as_deref())?)
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        };
        let config = match (&settings.cert_file, &settings.key_file) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert)?;
                let der = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| file_err(key, format!("no PEM private key read: {e}")))?;
                builder
                    .with_client_auth_cert(chain, der)
                    .map_err(|e| TlsError::Identity {
                        cert: cert.display().to_string(),
                        key: key.display().to_string(),
                        reason: e.to_string(),
                    })?
            }
            _ => return Err(TlsError::HalfIdentity),
        };
        Ok(Tls {
            settings: settings.clone(),
            connector: RustlsConnector::from(config),
        })
    }

    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    pub fn connector(&self) -> &RustlsConnector {
        &self.connector
    }

    /// The warning to show when verification is off.
    pub fn insecure_warning(&self) -> Option<&'static str> {
        (!self.settings.verify).then_some(
            "TLS certificate verification of the AMQP broker is OFF (amqp_tls_verify = no): \
             anyone on the path can impersonate it",
        )
    }
}

impl PartialEq for Tls {
    fn eq(&self, other: &Tls) -> bool {
        self.settings == other.settings
    }
}

/// Whether a lapin error is a TLS failure (handshake refused, certificate not trusted,
/// client certificate rejected): a configuration problem, unlike a broker that is down.
pub fn is_tls_failure(e: &lapin::Error) -> bool {
    match e.kind() {
        lapin::ErrorKind::IOError(io) => io
            .get_ref()
            .is_some_and(|inner| inner.is::<rustls::Error>()),
        _ => false,
    }
}

/// `verify = no`: any certificate and name are accepted; the handshake signatures are
/// still checked, so the session is at least with the holder of that certificate.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> TlsSettings {
        TlsSettings::default()
    }

    #[test]
    fn files_that_are_not_certificates_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = Tls::load(&TlsSettings {
            ca_file: Some(missing.clone()),
            ..settings()
        })
        .unwrap_err()
        .to_string();
        assert!(e.starts_with(&format!("{}: ", missing.display())), "{e}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "hello\n").unwrap();
        let e = Tls::load(&TlsSettings {
            ca_file: Some(junk.clone()),
            ..settings()
        })
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            format!(
                "{}: no PEM certificate (BEGIN CERTIFICATE) in it",
                junk.display()
            )
        );
    }

    #[test]
    fn a_certificate_without_its_key_is_refused() {
        let e = Tls::load(&TlsSettings {
            cert_file: Some("/x.pem".into()),
            verify: false,
            ..settings()
        })
        .unwrap_err();
        assert!(matches!(e, TlsError::HalfIdentity), "{e}");
    }

    #[test]
    fn verify_off_needs_no_store_and_warns() {
        let t = Tls::load(&TlsSettings {
            verify: false,
            ..settings()
        })
        .unwrap();
        assert!(t.insecure_warning().unwrap().contains("OFF"));
    }
}
