//! What a [`crate::Client`] connects to and how it behaves.

use std::fmt;
use std::time::Duration;

use rstmdb_protocol::WireMode;

use crate::tls::TlsOptions;

/// Connect timeout of the reference client: TCP, TLS and HELLO/AUTH together.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Request timeout of the reference client.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Events buffered per subscription before the client drops it as lagging.
pub const DEFAULT_EVENT_BUFFER: usize = 4096;
/// Requests queued for the writer task before callers wait.
pub(crate) const WRITE_QUEUE_DEPTH: usize = 1024;

/// Connection settings. Build with [`ClientConfig::new`] and the `with_*` methods.
#[derive(Clone)]
pub struct ClientConfig {
    /// `host:port`; the host may be a name (resolved at each connect), an IPv4 address or a
    /// bracketed IPv6 address.
    pub addr: String,
    /// Sent as `AUTH bearer` right after HELLO on every connection.
    pub token: Option<String>,
    /// TLS settings; `None` = plain TCP.
    pub tls: Option<TlsOptions>,
    /// `client_name` in HELLO.
    pub client_name: String,
    /// The mode asked for in HELLO; responses are read in either mode regardless.
    pub wire_mode: WireMode,
    /// `features` in HELLO.
    pub features: Vec<String>,
    /// Limit for TCP connect + TLS handshake + HELLO + AUTH.
    pub connect_timeout: Duration,
    /// Limit for one request's answer.
    pub request_timeout: Duration,
    /// Reconnect automatically (with backoff) when the connection is lost; off by default.
    pub reconnect: Option<ReconnectPolicy>,
    /// Events buffered per subscription; a subscriber further behind is resubscribed from
    /// its last offset.
    pub event_buffer: usize,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("client_name", &self.client_name)
            .field("wire_mode", &self.wire_mode)
            .field("features", &self.features)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("reconnect", &self.reconnect)
            .field("event_buffer", &self.event_buffer)
            .finish()
    }
}

impl ClientConfig {
    /// Plain TCP to `addr` with the reference client's defaults.
    pub fn new(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            token: None,
            tls: None,
            client_name: "rstmdb-client".into(),
            wire_mode: WireMode::BinaryJson,
            features: vec!["idempotency".into(), "batch".into()],
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            reconnect: None,
            event_buffer: DEFAULT_EVENT_BUFFER,
        }
    }

    /// Authenticate with a bearer token.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Use TLS.
    pub fn with_tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// `client_name` sent in HELLO.
    pub fn with_client_name(mut self, name: impl Into<String>) -> Self {
        self.client_name = name.into();
        self
    }

    /// Ask the server for this output mode.
    pub fn with_wire_mode(mut self, mode: WireMode) -> Self {
        self.wire_mode = mode;
        self
    }

    /// Connect timeout.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Request timeout.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Reconnect automatically when the connection is lost.
    pub fn with_reconnect(mut self, policy: ReconnectPolicy) -> Self {
        self.reconnect = Some(policy);
        self
    }

    /// The host part of `addr` (for TLS name checks).
    pub fn host(&self) -> &str {
        match self.addr.rsplit_once(':') {
            Some((host, _port)) => host,
            None => &self.addr,
        }
    }
}

/// Exponential backoff between reconnect attempts.
///
/// The delay doubles from `initial_backoff` up to `max_backoff`. Only the connection is
/// re-established automatically: a request that was in flight when it broke fails with
/// [`crate::Error::ConnectionClosed`] (it may or may not have been applied), while watch
/// streams resubscribe from their last seen offset and lose nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// Attempts per reconnect before giving up (at least 1).
    pub max_attempts: u32,
    /// Delay before the second attempt.
    pub initial_backoff: Duration,
    /// Upper bound of the delay.
    pub max_backoff: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl ReconnectPolicy {
    /// Delay before attempt `attempt` (0-based; attempt 0 has none).
    pub fn delay(&self, attempt: u32) -> Duration {
        if attempt == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32.checked_shl(attempt - 1).unwrap_or(u32::MAX);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = ReconnectPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(700),
        };
        let delays: Vec<u128> = (0..6).map(|a| p.delay(a).as_millis()).collect();
        assert_eq!(delays, [0, 100, 200, 400, 700, 700]);
        assert_eq!(p.delay(200), Duration::from_millis(700));
    }

    #[test]
    fn host_is_the_part_before_the_port() {
        assert_eq!(ClientConfig::new("127.0.0.1:7401").host(), "127.0.0.1");
        assert_eq!(ClientConfig::new("db.local:7401").host(), "db.local");
        assert_eq!(ClientConfig::new("[::1]:7401").host(), "[::1]");
    }

    #[test]
    fn debug_never_shows_the_token() {
        let c = ClientConfig::new("127.0.0.1:7401").with_token("s3cret");
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
