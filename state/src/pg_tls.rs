//! TLS to the PostgreSQL server, in libpq's words: the database URL's `sslmode` (`disable`,
//! `prefer` — the default —, `require`, `verify-ca`, `verify-full`) and `sslrootcert` (a PEM file
//! of the CAs to trust, or `system` for the system's). tokio-postgres itself knows only
//! `disable`/`prefer`/`require` and no `sslrootcert`, so those two are taken out of the URL here
//! and become a rustls configuration (rustls: no C library to link, the same binary runs in the
//! VM guests' minimal images):
//!
//! - `prefer`, `require`: encrypted, the server's certificate not checked (libpq's meaning: it
//!   stops a passive listener, not a host in the path); `require` with `sslrootcert` given is
//!   `verify-ca`, as in libpq;
//! - `verify-ca`: the certificate must chain to `sslrootcert`; any host name;
//! - `verify-full`: that, and it must name the host the URL connects to.
//!
//! Client certificates (`sslcert`, `sslkey`) are refused with a clear error rather than ignored.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// The system's CAs (Debian's `ca-certificates` bundle), for `sslrootcert=system`.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Disable => "disable",
            Mode::Prefer => "prefer",
            Mode::Require => "require",
            Mode::VerifyCa => "verify-ca",
            Mode::VerifyFull => "verify-full",
        }
    }

    /// Whether the server is authenticated (its certificate checked against a CA).
    pub fn verifies(self) -> bool {
        matches!(self, Mode::VerifyCa | Mode::VerifyFull)
    }

    fn ssl_mode(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode;
        match self {
            Mode::Disable => SslMode::Disable,
            Mode::Prefer => SslMode::Prefer,
            Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
        }
    }
}

/// The URL's TLS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub mode: Mode,
    pub root: Option<PathBuf>,
}

/// `url` without the parameters handled here, and those parameters. The error is the cause,
/// in words (the caller adds the location).
pub fn split(url: &str) -> Result<(String, Settings), String> {
    let mut mode = None;
    let mut root = None;
    let mut take = |key: &str, value: &str| -> Result<bool, String> {
        match key {
            "sslmode" => {
                mode = Some(match value {
                    "disable" => Mode::Disable,
                    "prefer" => Mode::Prefer,
                    "require" => Mode::Require,
                    "verify-ca" => Mode::VerifyCa,
                    "verify-full" => Mode::VerifyFull,
                    other => {
                        return Err(format!(
                            "sslmode `{other}` is not one Stockade takes (disable, prefer, \
                             require, verify-ca, verify-full)"
                        ))
                    }
                });
                Ok(true)
            }
            "sslrootcert" => {
                root = Some(if value == "system" {
                    PathBuf::from(SYSTEM_ROOTS)
                } else {
                    PathBuf::from(value)
                });
                Ok(true)
            }
            "sslcert" | "sslkey" | "sslpassword" | "sslcrl" | "sslcrldir" => Err(format!(
                "`{key}` is not supported yet: authenticate with a password (SCRAM) over \
                 sslmode=verify-full"
            )),
            _ => Ok(false),
        }
    };
    let rest = if let Some((main, query)) = url.split_once('?') {
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if !take(key, &percent_decode(value)?)? {
                kept.push(pair);
            }
        }
        if kept.is_empty() {
            main.to_string()
        } else {
            format!("{main}?{}", kept.join("&"))
        }
    } else if !url.contains("://") {
        // The `key=value key=value` form.
        let mut kept = Vec::new();
        for word in url.split_whitespace() {
            let (key, value) = word.split_once('=').unwrap_or((word, ""));
            if !take(key, value.trim_matches('\''))? {
                kept.push(word);
            }
        }
        kept.join(" ")
    } else {
        url.to_string()
    };
    let mode = match (mode, &root) {
        // libpq: `require` with a root certificate given checks the chain.
        (Some(Mode::Require), Some(_)) => Mode::VerifyCa,
        (Some(m), _) => m,
        (None, _) => Mode::Prefer,
    };
    if mode.verifies() && root.is_none() {
        return Err(format!(
            "sslmode={} needs sslrootcert=PATH (the CA that signed the server's certificate, \
             PEM) or sslrootcert=system",
            mode.name()
        ));
    }
    Ok((rest, Settings { mode, root }))
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("`{text}`: a `%` not followed by two hex digits"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("`{text}` is not UTF-8 once decoded"))
}

/// Applies `settings` to `config` and returns the connector.
pub fn connector(
    settings: &Settings,
    config: &mut tokio_postgres::Config,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
    config.ssl_mode(settings.mode.ssl_mode());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match (settings.mode, &settings.root) {
        (Mode::VerifyCa | Mode::VerifyFull, Some(root)) => {
            let checked = WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots(root)?),
                provider.clone(),
            )
            .build()
            .map_err(|e| format!("{}: {e}", root.display()))?;
            if settings.mode == Mode::VerifyFull {
                checked
            } else {
                Arc::new(AnyName(checked))
            }
        }
        _ => Arc::new(Unverified(provider.clone())),
    };
    let tls = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
}

fn roots(path: &Path) -> Result<RootCertStore, String> {
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| format!("sslrootcert {shown}: {e}"))?;
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("sslrootcert {shown}: {e}"))?;
        store
            .add(cert)
            .map_err(|e| format!("sslrootcert {shown}: {e}"))?;
    }
    if store.is_empty() {
        return Err(format!("sslrootcert {shown}: no PEM certificate in it"));
    }
    Ok(store)
}

/// `verify-ca`: the chain checked, the name not.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer`, `require`: encrypted, the certificate not checked (the handshake's signatures are).
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
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

    #[test]
    fn the_urls_tls_words_are_libpqs() {
        let (rest, s) = split("postgres://u:p@db.example:5432/stockade").unwrap();
        assert_eq!(rest, "postgres://u:p@db.example:5432/stockade");
        assert_eq!((s.mode, s.root), (Mode::Prefer, None));

        let (rest, s) = split(
            "postgres://u@db/s?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u@db/s?application_name=x");
        assert_eq!(s.mode, Mode::VerifyFull);
        assert_eq!(s.root, Some(PathBuf::from("/etc/ca.pem")));

        // libpq: `require` with a root certificate checks the chain.
        let (_, s) = split("postgres://db/s?sslmode=require&sslrootcert=system").unwrap();
        assert_eq!(s.mode, Mode::VerifyCa);
        assert_eq!(s.root, Some(PathBuf::from(SYSTEM_ROOTS)));

        let (rest, s) = split("host=db user=u sslmode=disable dbname=s").unwrap();
        assert_eq!(rest, "host=db user=u dbname=s");
        assert_eq!(s.mode, Mode::Disable);

        for (url, cause) in [
            ("postgres://db/s?sslmode=verify-full", "needs sslrootcert"),
            ("postgres://db/s?sslmode=allow", "is not one Stockade takes"),
            ("postgres://db/s?sslcert=/c.pem", "not supported yet"),
            ("postgres://db/s?sslrootcert=%zz", "two hex digits"),
        ] {
            let e = split(url).unwrap_err();
            assert!(e.contains(cause), "{url}: {e}");
        }
    }
}
