//! The HTTP server: our own accept loop around hyper, for what `axum::serve` does not offer:
//! TLS, basic authentication, and limits that keep slow or greedy clients from holding the
//! exporter (a header read timeout, an idle keep-alive timeout through the same timer, a TLS
//! handshake timeout, a request timeout, a cap on connections, on header and body sizes).
//!
//! A connection beyond `max_connections` waits in the kernel's accept queue until one ends.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use super::webconfig::WebConfig;

/// Server timeouts and limits (flags `--web.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time a client has to send a request's headers, and an idle keep-alive connection to
    /// start its next request: a client sending a byte a second is cut off after this.
    pub read_header_timeout: Duration,
    /// Time one request may take, body included.
    pub request_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// Largest request body accepted (Content-Length); beyond it 413.
    pub max_body_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            read_header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 256,
            max_body_bytes: 64 * 1024,
        }
    }
}

/// Largest request head (request line and headers); beyond it hyper answers 431.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// How long a graceful shutdown waits for requests in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Wraps `router` with the authentication, header and limit layers of `web` and `limits`.
pub fn protect(router: Router, web: Arc<WebConfig>, limits: Limits) -> Router {
    let auth = Arc::new(Auth {
        web: web.clone(),
        verified: Mutex::new(HashSet::new()),
        keys: std::collections::hash_map::RandomState::new(),
    });
    router
        .layer(axum::middleware::from_fn_with_state(auth, authenticate))
        .layer(axum::middleware::from_fn_with_state(
            (web, limits),
            headers_and_limits,
        ))
}

struct Auth {
    web: Arc<WebConfig>,
    /// Keyed hashes of (user, password) pairs bcrypt already accepted: bcrypt costs
    /// milliseconds by design, a scrape every second would pay it each time.
    verified: Mutex<HashSet<u64>>,
    keys: std::collections::hash_map::RandomState,
}

/// A valid bcrypt hash of nothing anyone knows: unknown users are checked against it, so that
/// they take as long as known ones.
const DUMMY_HASH: &str = "$2b$10$TwrHUpEWmgyAgWYYbcNG2.8A6qfdr4tz8sLRC4vvbOVxPk9T1HCa.";

async fn authenticate(State(auth): State<Arc<Auth>>, request: Request, next: Next) -> Response {
    if auth.web.users.is_empty() {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64_decode(b.trim()))
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|s| {
            s.split_once(':')
                .map(|(u, p)| (u.to_string(), p.to_string()))
        });
    let ok = match given {
        None => false,
        Some((user, password)) => {
            let key = std::hash::BuildHasher::hash_one(&auth.keys, (&user, &password));
            if auth.verified.lock().is_ok_and(|v| v.contains(&key)) {
                true
            } else {
                let hash = auth.web.users.get(&user).cloned();
                let known = hash.is_some();
                let hash = hash.unwrap_or_else(|| DUMMY_HASH.to_string());
                let valid = tokio::task::spawn_blocking(move || {
                    bcrypt::verify(password, &hash).unwrap_or(false)
                })
                .await
                .unwrap_or(false);
                if valid && known {
                    if let Ok(mut v) = auth.verified.lock() {
                        if v.len() >= 1024 {
                            v.clear();
                        }
                        v.insert(key);
                    }
                }
                valid && known
            }
        }
    };
    if ok {
        next.run(request).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"drainwatch\""),
            )],
            "unauthorized\n",
        )
            .into_response()
    }
}

async fn headers_and_limits(
    State((web, limits)): State<(Arc<WebConfig>, Limits)>,
    request: Request,
    next: Next,
) -> Response {
    let length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut response = if length.is_some_and(|n| n > limits.max_body_bytes) {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request bodies are limited to {} bytes\n",
                limits.max_body_bytes
            ),
        )
            .into_response()
    } else {
        let (parts, body) = request.into_parts();
        // A body sent without a length (chunked) is cut at the same size.
        let body = Body::new(http_body_util::Limited::new(
            body,
            limits.max_body_bytes as usize,
        ));
        match tokio::time::timeout(
            limits.request_timeout,
            next.run(Request::from_parts(parts, body)),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "request timed out\n").into_response(),
        }
    };
    for (name, value) in &web.headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

/// Serves `router` (already [`protect`]ed) on `listener` until `shutdown` resolves, then lets
/// the requests in flight finish (up to 5 s).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    web: Arc<WebConfig>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let tls = web.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (router, tls, mut stop) = (router.clone(), tls.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => connection(stream, router, limits, &mut stop).await,
                Some(acceptor) => {
                    // The handshake is bounded like a request head.
                    match tokio::time::timeout(limits.read_header_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(s)) => connection(s, router, limits, &mut stop).await,
                        Ok(Err(e)) => tracing::debug!("TLS handshake: {e}"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection holds a slot: all slots back means all connections ended.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, slots.acquire_many(all)).await;
    Ok(())
}

async fn connection<IO>(io: IO, router: Router, limits: Limits, stop: &mut watch::Receiver<bool>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(router);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.read_header_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let stopping = async {
        // The watch guard is dropped here, before anything else awaits.
        let _ = stop.wait_for(|s| *s).await.map(|_| ());
    };
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!("connection: {e}");
            }
        }
        _ = stopping => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, conn).await;
        }
    }
}

/// Decodes standard base64 (with or without padding); `None` when malformed.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64() {
        assert_eq!(base64_decode("YWxpY2U6czNjcmV0").unwrap(), b"alice:s3cret");
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        assert_eq!(base64_decode("YWI=").unwrap(), b"ab");
        assert_eq!(base64_decode("").unwrap(), b"");
        assert!(base64_decode("Y").is_none());
        assert!(base64_decode("YW!j").is_none());
    }

    #[test]
    fn the_dummy_hash_is_a_hash() {
        assert_eq!(bcrypt::verify("x", DUMMY_HASH).ok(), Some(false));
    }
}
