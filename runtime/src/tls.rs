//! TLS for PostgreSQL connections: libpq's `sslmode` and `sslrootcert`, with rustls
//! (see [`SslMode`]).

use std::path::Path;

use crate::error::{Error, Result};

/// How a connection uses TLS: libpq's `sslmode`.
///
/// | `sslmode` | encrypted | certificate checked | host name checked |
/// |---|---|---|---|
/// | `disable` | no | — | — |
/// | `prefer` (default) | if the server offers TLS | no | no |
/// | `require` | yes | only if a root certificate is given (then as `verify-ca`), as libpq does | no |
/// | `verify-ca` | yes | against `sslrootcert`, or the platform's roots | no |
/// | `verify-full` | yes | against `sslrootcert`, or the platform's roots | yes |
///
/// `allow` (libpq: plain first, TLS if that fails) is refused: it gives no protection
/// `prefer` does not. Client certificates (`sslcert`, `sslkey`) are not supported yet.
/// TLS is rustls with the *ring* provider (the `tls` feature, on by default); without
/// the feature only `disable` and `prefer` (which then never encrypts) are accepted.
///
/// ```
/// use tabula::SslMode;
/// assert_eq!("verify-full".parse::<SslMode>().unwrap(), SslMode::VerifyFull);
/// assert!("allow".parse::<SslMode>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it, without checking its certificate (libpq's
    /// default).
    #[default]
    Prefer,
    /// TLS always; the certificate is checked only against a given root certificate.
    Require,
    /// TLS always; the certificate must chain to a trusted root.
    VerifyCa,
    /// TLS always; the certificate must chain to a trusted root and name the host.
    VerifyFull,
}

impl std::str::FromStr for SslMode {
    type Err = Error;

    fn from_str(word: &str) -> Result<SslMode> {
        Ok(match word {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => {
                return Err(Error::Config(
                    "sslmode=allow is not supported: use prefer (TLS when offered) or \
                     require"
                        .into(),
                ));
            }
            other => {
                return Err(Error::Config(crate::error::unknown_word(
                    "sslmode",
                    other,
                    &["disable", "prefer", "require", "verify-ca", "verify-full"],
                )));
            }
        })
    }
}

impl SslMode {
    /// The mode tokio-postgres negotiates with (it knows no verification levels:
    /// those are the connector's).
    pub(crate) fn negotiation(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        }
    }
}

/// `sslmode` and `sslrootcert` taken out of a connection string (postgres:// URL query,
/// or key=value words), which tokio-postgres's parser would refuse or ignore.
pub(crate) fn take_settings(url: &str) -> (String, Vec<(String, String)>) {
    const OURS: [&str; 2] = ["sslmode", "sslrootcert"];
    if crate::conninfo::is_url(url) {
        return crate::conninfo::split_query(url, &OURS);
    }
    // key=value words; a quoted value is left to tokio-postgres.
    let (mut kept, mut taken) = (Vec::new(), Vec::new());
    for word in url.split_whitespace() {
        match word.split_once('=') {
            Some((name, value)) if OURS.contains(&name) && !value.starts_with('\'') => {
                taken.push((name.to_owned(), value.to_owned()));
            }
            _ => kept.push(word),
        }
    }
    if taken.is_empty() {
        return (url.to_owned(), taken);
    }
    (kept.join(" "), taken)
}

/// The connector every connection (and cancel request) of a pool uses.
#[cfg(feature = "tls")]
#[derive(Clone)]
pub(crate) struct Connector {
    inner: tokio_postgres_rustls::MakeRustlsConnect,
    /// `verify-full`: a connection with no host name to check is refused.
    names: bool,
}

#[cfg(feature = "tls")]
impl<S> tokio_postgres::tls::MakeTlsConnect<S> for Connector
where
    tokio_postgres_rustls::MakeRustlsConnect: tokio_postgres::tls::MakeTlsConnect<S>,
{
    type Stream =
        <tokio_postgres_rustls::MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<S>>::Stream;
    type TlsConnect = <tokio_postgres_rustls::MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<
        S,
    >>::TlsConnect;
    type Error =
        <tokio_postgres_rustls::MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<S>>::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Self::TlsConnect, Self::Error> {
        // No host name (a Unix socket, `hostaddr` alone): the driver asks for a
        // connector before it looks at sslmode, and a socket never negotiates TLS. Short
        // of verify-full, a placeholder name serves; verify-full has no name to check.
        if domain.is_empty() && !self.names {
            return self.inner.make_tls_connect("localhost");
        }
        self.inner.make_tls_connect(domain)
    }
}
#[cfg(not(feature = "tls"))]
pub(crate) type Connector = tokio_postgres::NoTls;

/// Another handle on the same connector (an `Arc` inside with TLS, a unit without).
#[allow(clippy::clone_on_copy)]
pub(crate) fn copy(connector: &Connector) -> Connector {
    connector.clone()
}

/// The connector for `mode`, trusting `root_cert` (a PEM file of one or more
/// certificates) or, without one, the platform's roots.
#[cfg(feature = "tls")]
pub(crate) fn connector(mode: SslMode, root_cert: Option<&Path>) -> Result<Connector> {
    use std::sync::Arc;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS: {e}")))?;
    let check = match (mode, root_cert) {
        (SslMode::Disable | SslMode::Prefer, _) | (SslMode::Require, None) => Check::Nothing,
        (SslMode::Require | SslMode::VerifyCa, _) => Check::Chain,
        (SslMode::VerifyFull, _) => Check::ChainAndName,
        // A mode added later verifies fully.
        #[allow(unreachable_patterns)]
        _ => Check::ChainAndName,
    };
    let config = match check {
        Check::Nothing => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoCheck(provider)))
            .with_no_client_auth(),
        Check::Chain | Check::ChainAndName => {
            let roots = Arc::new(roots(root_cert)?);
            let webpki =
                rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| Error::Config(format!("TLS roots: {e}")))?;
            match check {
                Check::Chain => builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
                    .with_no_client_auth(),
                _ => builder.with_webpki_verifier(webpki).with_no_client_auth(),
            }
        }
    };
    Ok(Connector {
        inner: tokio_postgres_rustls::MakeRustlsConnect::new(config),
        names: mode == SslMode::VerifyFull,
    })
}

#[cfg(not(feature = "tls"))]
pub(crate) fn connector(mode: SslMode, root_cert: Option<&Path>) -> Result<Connector> {
    match mode {
        SslMode::Disable | SslMode::Prefer if root_cert.is_none() => Ok(tokio_postgres::NoTls),
        _ => Err(Error::Config(
            "this build of tabula has no TLS (its `tls` feature is off): sslmode must be \
             disable or prefer, without sslrootcert"
                .into(),
        )),
    }
}

#[cfg(feature = "tls")]
enum Check {
    Nothing,
    Chain,
    ChainAndName,
}

/// The trusted roots: the certificates in `file`, or the platform's.
#[cfg(feature = "tls")]
fn roots(file: Option<&Path>) -> Result<rustls::RootCertStore> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let mut store = rustls::RootCertStore::empty();
    match file {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| bad_root(path, &e.to_string()))?
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| bad_root(path, &e.to_string()))?;
            if certs.is_empty() {
                return Err(bad_root(path, "no certificate in it"));
            }
            for cert in certs {
                store
                    .add(cert)
                    .map_err(|e| bad_root(path, &e.to_string()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = store.add(cert);
            }
            if store.is_empty() {
                return Err(Error::Config(
                    "TLS: no trusted root certificates found on this machine; give one \
                     with sslrootcert=<file>"
                        .into(),
                ));
            }
        }
    }
    Ok(store)
}

#[cfg(feature = "tls")]
fn bad_root(path: &Path, why: &str) -> Error {
    Error::Config(format!(
        "TLS: cannot read root certificates from {}: {why}",
        path.display()
    ))
}

/// Checks the handshake's signatures, not the certificate (`prefer`, `require`).
#[cfg(feature = "tls")]
#[derive(Debug)]
struct NoCheck(std::sync::Arc<rustls::crypto::CryptoProvider>);

/// Checks the chain, not the name (`verify-ca`).
#[cfg(feature = "tls")]
#[derive(Debug)]
struct ChainOnly(std::sync::Arc<rustls::client::WebPkiServerVerifier>);

#[cfg(feature = "tls")]
mod verifiers {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

    use super::{ChainOnly, NoCheck};

    type Verified = Result<ServerCertVerified, rustls::Error>;
    type Signed = Result<HandshakeSignatureValid, rustls::Error>;

    impl ServerCertVerifier for NoCheck {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Verified {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Signed {
            let algorithms = &self.0.signature_verification_algorithms;
            rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Signed {
            let algorithms = &self.0.signature_verification_algorithms;
            rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    impl ServerCertVerifier for ChainOnly {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp: &[u8],
            now: UnixTime,
        ) -> Verified {
            match self
                .0
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            {
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) => Ok(ServerCertVerified::assertion()),
                other => other,
            }
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Signed {
            self.0.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Signed {
            self.0.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.supported_verify_schemes()
        }
    }
}
