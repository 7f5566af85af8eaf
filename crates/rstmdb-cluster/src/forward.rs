//! Requests a follower forwards to the leader (`cluster.forward_writes`): the follower has
//! authenticated and authorized the caller; the leader runs the request as its own (its
//! write gate, its instance locks) and returns the answer, which the follower relays. The
//! server installs what the leader runs ([`ForwardHandler`]); this crate only carries it over
//! the peer link.

use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;

/// The answer to a forwarded request: the op's result or its error object (the RCP
/// `error` object, as JSON), and the WAL offset a mutation reports in `meta`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForwardReply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_offset: Option<u64>,
}

/// A boxed future answering one forwarded request.
pub type ForwardFuture = Pin<Box<dyn Future<Output = ForwardReply> + Send>>;

/// What the leader runs for a forwarded request.
pub trait ForwardHandler: Send + Sync + 'static {
    /// `principal`: the caller's name on the follower (for logs); `request`: the RCP request
    /// as JSON (`{"type":"request","id":…,"op":…,"params":…}`).
    fn handle(&self, principal: String, request: Vec<u8>) -> ForwardFuture;
}

/// Why a request could not be forwarded (nothing reached the leader, or no answer came back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardError {
    /// No leader is known: the request was not sent.
    NoLeader,
    /// This node is the leader: run the request here.
    IsLeader,
    /// The leader could not be reached: the request was not sent.
    Unreachable { leader: String, detail: String },
    /// The request was sent but no answer came back: it may or may not have run.
    NoAnswer { leader: String, detail: String },
}

impl std::fmt::Display for ForwardError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ForwardError::NoLeader => write!(f, "the cluster has no leader at the moment"),
            ForwardError::IsLeader => write!(f, "this node is the leader"),
            ForwardError::Unreachable { leader, detail } => {
                write!(f, "the leader at {leader} could not be reached: {detail}")
            }
            ForwardError::NoAnswer { leader, detail } => {
                write!(f, "the leader at {leader} did not answer: {detail}")
            }
        }
    }
}
