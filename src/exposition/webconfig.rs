//! `--web.config.file`: TLS and basic authentication, in the format of the Prometheus
//! exporter-toolkit (the same file node_exporter takes), so that drainwatch is as safe to expose
//! as the exporters beside it:
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: /etc/drainwatch/tls.crt
//!   key_file: /etc/drainwatch/tls.key
//!   client_auth_type: RequireAndVerifyClientCert   # optional, with client_ca_file
//!   client_ca_file: /etc/drainwatch/clients-ca.crt
//!   min_version: TLS12                             # TLS12 (default) or TLS13
//! http_server_config:
//!   headers:
//!     Strict-Transport-Security: max-age=31536000
//! basic_auth_users:
//!   prometheus: $2y$10$...                          # bcrypt hashes
//! ```
//!
//! Every key is checked: an unknown or unsupported one is an error naming its line, as are
//! unreadable certificates and malformed hashes. Read once at start-up.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::http::{HeaderName, HeaderValue};
use serde::Deserialize;

/// The validated web configuration.
#[derive(Clone, Default)]
pub struct WebConfig {
    /// `None`: plain HTTP.
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    /// User -> bcrypt hash; empty: no authentication.
    pub users: BTreeMap<String, String>,
    /// Headers added to every response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.tls.is_some())
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("headers", &self.headers)
            .finish()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{path}:{line}: {key}: {message}")]
pub struct WebConfigError {
    pub path: String,
    pub line: usize,
    pub key: String,
    pub message: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    tls_server_config: Option<FileTls>,
    http_server_config: Option<FileHttp>,
    basic_auth_users: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_auth_type: Option<String>,
    client_ca_file: Option<PathBuf>,
    min_version: Option<String>,
    max_version: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHttp {
    /// Accepted for compatibility; drainwatch serves HTTP/1.1 only.
    http2: Option<bool>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// The 1-based line where `key` (a YAML mapping key) first appears, after the line of
/// `after` when given; 1 when not found.
fn line_of(text: &str, key: &str, after: Option<&str>) -> usize {
    let mut from = 0;
    if let Some(parent) = after {
        from = line_of(text, parent, None).saturating_sub(1);
    }
    text.lines()
        .enumerate()
        .skip(from)
        .find(|(_, l)| {
            let t = l.trim_start().trim_start_matches("- ");
            t.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with(':'))
                || t.strip_prefix(&format!("\"{key}\""))
                    .is_some_and(|rest| rest.trim_start().starts_with(':'))
        })
        .map(|(i, _)| i + 1)
        .unwrap_or(1)
}

/// The 1-based line (as `text.lines()` counts them) of byte `index`.
fn line_at(text: &str, index: usize) -> usize {
    let end = index.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

impl WebConfig {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| WebConfigError {
            path: path.display().to_string(),
            line: 0,
            key: "file".into(),
            message: e.to_string(),
        })?;
        WebConfig::parse(path, &text)
    }

    /// Validates `text` as the web config file `path` (relative file names in it are relative
    /// to the file's directory, as exporter-toolkit does).
    pub fn parse(path: &Path, text: &str) -> Result<WebConfig, WebConfigError> {
        let name = path.display().to_string();
        let err = |line: usize, key: &str, message: String| WebConfigError {
            path: name.clone(),
            line,
            key: key.to_string(),
            message,
        };
        let file: FileConfig = if text.trim().is_empty() {
            FileConfig::default()
        } else {
            serde_norway::from_str(text).map_err(|e| {
                let message = e.to_string();
                let key = message
                    .split("unknown field `")
                    .nth(1)
                    .and_then(|r| r.split('`').next())
                    .map(|k| if k.is_empty() { "(empty key)" } else { k })
                    .unwrap_or("yaml")
                    .to_string();
                // YAML also breaks lines at a lone CR, U+0085, U+2028 and U+2029, which
                // editors and `wc -l` do not: the line is counted from the error's byte offset.
                let line = e
                    .location()
                    .map(|l| line_at(text, l.index()))
                    .unwrap_or_else(|| line_of(text, &key, None));
                let message = match message.rsplit_once(" at line ") {
                    Some((m, _)) => m.to_string(),
                    None => message,
                };
                err(line, &key, message)
            })?
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let mut config = WebConfig::default();
        if let Some(tls) = file.tls_server_config {
            let at = |key: &str| line_of(text, key, Some("tls_server_config"));
            let tls_err = |key: &str, message: String| {
                err(at(key), &format!("tls_server_config.{key}"), message)
            };
            let cert = tls
                .cert_file
                .ok_or_else(|| tls_err("cert_file", "required with tls_server_config".into()))?;
            let key = tls
                .key_file
                .ok_or_else(|| tls_err("key_file", "required with tls_server_config".into()))?;
            let versions = versions(tls.min_version.as_deref(), tls.max_version.as_deref())
                .map_err(|(k, m)| tls_err(k, m))?;
            let client_ca = match tls.client_auth_type.as_deref().unwrap_or("NoClientCert") {
                "NoClientCert" => None,
                "RequireAndVerifyClientCert" => Some((
                    tls.client_ca_file.clone().ok_or_else(|| {
                        tls_err(
                            "client_ca_file",
                            "required with client_auth_type RequireAndVerifyClientCert".into(),
                        )
                    })?,
                    true,
                )),
                "VerifyClientCertIfGiven" => Some((
                    tls.client_ca_file.clone().ok_or_else(|| {
                        tls_err(
                            "client_ca_file",
                            "required with client_auth_type VerifyClientCertIfGiven".into(),
                        )
                    })?,
                    false,
                )),
                other => {
                    return Err(tls_err(
                        "client_auth_type",
                        format!("{other:?}: drainwatch supports NoClientCert, VerifyClientCertIfGiven and RequireAndVerifyClientCert"),
                    ))
                }
            };
            let server = tls_config(
                &resolve(&cert),
                &resolve(&key),
                client_ca.map(|(ca, required)| (resolve(&ca), required)),
                &versions,
            )
            .map_err(|(k, m)| tls_err(k, m))?;
            config.tls = Some(Arc::new(server));
        }
        if let Some(http) = file.http_server_config {
            let _ = http.http2; // HTTP/1.1 only: accepted and ignored
            for (name, value) in http.headers {
                let line = line_of(text, &name, Some("headers"));
                let key = format!("http_server_config.headers.{name}");
                let n = HeaderName::try_from(name.as_str())
                    .map_err(|e| err(line, &key, format!("not a header name: {e}")))?;
                let v = HeaderValue::try_from(value.as_str())
                    .map_err(|e| err(line, &key, format!("not a header value: {e}")))?;
                config.headers.push((n, v));
            }
        }
        for (user, hash) in file.basic_auth_users.unwrap_or_default() {
            let line = line_of(text, &user, Some("basic_auth_users"));
            let key = format!("basic_auth_users.{user}");
            if user.contains(':') || user.is_empty() {
                return Err(err(
                    line,
                    &key,
                    "a user name may not be empty or hold ':'".into(),
                ));
            }
            if !is_bcrypt(&hash) {
                return Err(err(
                    line,
                    &key,
                    "not a bcrypt hash ($2a$, $2b$ or $2y$, 60 characters): make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`".into(),
                ));
            }
            config.users.insert(user, hash);
        }
        Ok(config)
    }
}

fn is_bcrypt(hash: &str) -> bool {
    hash.len() == 60
        && ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p))
        && hash[4..6].bytes().all(|b| b.is_ascii_digit())
        && &hash[6..7] == "$"
}

type Versions = Vec<&'static tokio_rustls::rustls::SupportedProtocolVersion>;

fn versions(min: Option<&str>, max: Option<&str>) -> Result<Versions, (&'static str, String)> {
    use tokio_rustls::rustls::version::{TLS12, TLS13};
    let rank = |key: &'static str, v: &str| match v {
        "TLS12" => Ok(12),
        "TLS13" => Ok(13),
        "TLS10" | "TLS11" => Err((key, format!("{v} is not supported (TLS12 or TLS13)"))),
        _ => Err((key, format!("{v:?} is not a TLS version (TLS12 or TLS13)"))),
    };
    let lo = min
        .map(|v| rank("min_version", v))
        .transpose()?
        .unwrap_or(12);
    let hi = max
        .map(|v| rank("max_version", v))
        .transpose()?
        .unwrap_or(13);
    if lo > hi {
        return Err(("max_version", "below min_version".into()));
    }
    Ok([(12, &TLS12), (13, &TLS13)]
        .into_iter()
        .filter(|(v, _)| (lo..=hi).contains(v))
        .map(|(_, p)| p)
        .collect())
}

fn tls_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<(PathBuf, bool)>,
    versions: &Versions,
) -> Result<tokio_rustls::rustls::ServerConfig, (&'static str, String)> {
    use tokio_rustls::rustls;
    let read = |key: &'static str, p: &Path| {
        std::fs::read(p).map_err(|e| (key, format!("{}: {e}", p.display())))
    };
    let certs: Vec<_> = rustls_pemfile::certs(&mut read("cert_file", cert)?.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| ("cert_file", format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err((
            "cert_file",
            format!("{}: no PEM certificate", cert.display()),
        ));
    }
    let private = rustls_pemfile::private_key(&mut read("key_file", key)?.as_slice())
        .map_err(|e| ("key_file", format!("{}: {e}", key.display())))?
        .ok_or(("key_file", format!("{}: no PEM private key", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| ("min_version", e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some((ca, required)) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pemfile::certs(&mut read("client_ca_file", &ca)?.as_slice()) {
                let c = c.map_err(|e| ("client_ca_file", format!("{}: {e}", ca.display())))?;
                roots
                    .add(c)
                    .map_err(|e| ("client_ca_file", format!("{}: {e}", ca.display())))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let verifier = if required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| ("client_ca_file", format!("{}: {e}", ca.display())))?,
            )
        }
    };
    let mut config = builder
        .with_single_cert(certs, private)
        .map_err(|e| ("key_file", format!("does not match cert_file: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<WebConfig, WebConfigError> {
        WebConfig::parse(Path::new("/etc/drainwatch/web.yml"), text)
    }

    const HASH: &str = "$2y$10$fG1pKFBq5b5B7wC9jvYyCeVZqGq8o7I0Ck6FAlCZ8xk4yU0ZxQx2e";

    #[test]
    fn users_and_headers() {
        let c = parse(&format!(
            "basic_auth_users:\n  alice: {HASH}\nhttp_server_config:\n  http2: true\n  headers:\n    X-Frame-Options: deny\n"
        ))
        .unwrap();
        assert_eq!(c.users.len(), 1);
        assert_eq!(c.headers[0].0.as_str(), "x-frame-options");
        assert!(c.tls.is_none());
        assert!(parse("").unwrap().users.is_empty());
    }

    #[test]
    fn every_error_names_the_line_and_the_key() {
        let e = parse("basic_auth_users:\n  alice: x\n").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (2, "basic_auth_users.alice"));
        assert!(e.message.contains("not a bcrypt hash"), "{e}");
        let e = parse("tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [x]\n")
            .unwrap_err();
        assert_eq!(e.line, 4, "{e}");
        assert_eq!(e.key, "cipher_suites", "{e}");
        let e = parse("web_listen: x\n").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (1, "web_listen"));
        // YAML breaks lines at U+2028 and a lone CR too; the error counts lines as editors do
        // and does not repeat YAML's own count in the message.
        let e = parse("# a\u{2028}# b\r# c\nweb_listen: x\n").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (2, "web_listen"), "{e}");
        assert!(!e.message.contains("at line"), "{e}");
        let e = parse("tls_server_config:\n  key_file: b\n").unwrap_err();
        assert_eq!(e.key, "tls_server_config.cert_file", "{e}");
        let e = parse("tls_server_config:\n  cert_file: nosuch.crt\n  key_file: nosuch.key\n")
            .unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (2, "tls_server_config.cert_file"));
        assert!(e.message.contains("/etc/drainwatch/nosuch.crt"), "{e}");
        let e = parse("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS10\n")
            .unwrap_err();
        assert_eq!(
            (e.line, e.key.as_str()),
            (4, "tls_server_config.min_version")
        );
        let e = parse("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAndVerifyClientCert\n").unwrap_err();
        assert_eq!(e.key, "tls_server_config.client_ca_file", "{e}");
        let e = parse("http_server_config:\n  headers:\n    \"Bad Header\": x\n").unwrap_err();
        assert_eq!(
            (e.line, e.key.as_str()),
            (3, "http_server_config.headers.Bad Header")
        );
        assert!(
            e.to_string().starts_with("/etc/drainwatch/web.yml:3: "),
            "{e}"
        );
    }
}
