//! The operator's side of a node (docs/cluster.md "Operating a cluster"): its status, adding
//! a node, removing one, and what the raft metrics watch observes over the node's life
//! (leader changes, every member id it has seen; kept by `crate::observe`).
//!
//! Membership changes run on the leader only; elsewhere they are refused naming the leader.
//! openraft 0.9 has no leadership transfer, so there is none here.

use crate::node::{ClusterNode, leader_hint};
use crate::types::{Member, NodeId};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, RaftMetrics, ServerState};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// A node's role as CLUSTER_STATUS names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    /// Not a voter: added as a learner, or not yet part of any membership.
    Learner,
    /// Raft is stopping.
    Shutdown,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
            Role::Shutdown => "shutdown",
        }
    }
}

/// One member as this node knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    pub node_id: NodeId,
    pub addrs: Member,
    pub voter: bool,
    /// Leader only: the last index known replicated to it.
    pub matched_index: Option<u64>,
    /// Leader only: entries it is behind the leader's log.
    pub lag: Option<u64>,
}

/// The cluster as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub cluster_id: String,
    pub node_id: NodeId,
    pub role: Role,
    pub term: u64,
    pub leader: Option<(NodeId, Option<Member>)>,
    pub last_log_index: u64,
    pub committed_index: u64,
    pub applied_index: u64,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub members: Vec<MemberStatus>,
    /// Times a new leader became known to this node since it started.
    pub leader_changes: u64,
}

/// Why a membership change was refused or failed. [`AdminError::NotLeader`] and
/// [`AdminError::Retry`] changed nothing and may be retried (on the leader).
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// `leader`: the leader's client address, or "unknown"; `leader_id` when one is known.
    #[error("this node is not the leader (leader: {leader}); nothing was changed")]
    NotLeader {
        leader: String,
        leader_id: Option<NodeId>,
        term: u64,
    },
    /// The request cannot succeed as asked.
    #[error("{0}")]
    Invalid(String),
    /// The node id is or was a member.
    #[error("{0}")]
    IdUsed(String),
    #[error("{0}")]
    NotMember(String),
    /// The change may be retried as is (another change in progress, raft busy).
    #[error("{0}")]
    Retry(String),
    /// It did not finish in time; part of it may have happened (the message says which).
    #[error("{0}")]
    Timeout(String),
}

fn raft_failed(
    what: &str,
    e: RaftError<NodeId, ClientWriteError<NodeId, Member>>,
    m: &RaftMetrics<NodeId, Member>,
) -> AdminError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => AdminError::NotLeader {
            leader: f
                .leader_node
                .map(|n| n.client)
                .unwrap_or_else(|| leader_hint(m)),
            leader_id: f.leader_id,
            term: m.current_term,
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            AdminError::Retry(format!("{what}: {c}; retry once it has finished"))
        }
        RaftError::Fatal(f) => AdminError::Retry(format!("{what}: raft stopped ({f})")),
    }
}

fn role_of(m: &RaftMetrics<NodeId, Member>) -> Role {
    match m.state {
        ServerState::Leader => Role::Leader,
        ServerState::Candidate => Role::Candidate,
        ServerState::Follower
            if m.membership_config
                .membership()
                .voter_ids()
                .any(|v| v == m.id) =>
        {
            Role::Follower
        }
        ServerState::Follower | ServerState::Learner => Role::Learner,
        ServerState::Shutdown => Role::Shutdown,
    }
}

impl ClusterNode {
    /// This node's role now.
    pub fn role(&self) -> Role {
        role_of(&self.metrics())
    }

    /// The status CLUSTER_STATUS reports.
    pub async fn status(&self) -> Status {
        let m = self.metrics();
        // openraft's metrics do not carry the commit index; its state does.
        let committed = self
            .raft()
            .with_raft_state(|s| s.committed.map(|l| l.index))
            .await
            .ok()
            .flatten();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let last = m.last_log_index.unwrap_or(0);
        let role = role_of(&m);
        let progress: BTreeMap<NodeId, Option<u64>> = match (&m.replication, role) {
            (Some(r), Role::Leader) => r
                .iter()
                .map(|(id, l)| (*id, l.as_ref().map(|l| l.index)))
                .collect(),
            _ => BTreeMap::new(),
        };
        let members = membership
            .nodes()
            .map(|(id, addrs)| {
                let matched = if role != Role::Leader {
                    None
                } else if *id == m.id {
                    Some(last)
                } else {
                    progress.get(id).copied().flatten()
                };
                MemberStatus {
                    node_id: *id,
                    addrs: addrs.clone(),
                    voter: voters.contains(id),
                    matched_index: matched,
                    lag: matched.map(|i| last.saturating_sub(i)),
                }
            })
            .collect();
        let applied = m.last_applied.map_or(0, |l| l.index);
        Status {
            cluster_id: self.options().cluster_id.clone(),
            node_id: m.id,
            role,
            term: m.current_term,
            leader: m
                .current_leader
                .map(|id| (id, membership.get_node(&id).cloned())),
            last_log_index: last,
            // Never report less committed than applied (a follower learns the commit index
            // with the next heartbeat).
            committed_index: committed.unwrap_or(0).max(applied),
            applied_index: applied,
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            members,
            leader_changes: self.observed.leader_changes.load(Relaxed),
        }
    }

    fn leader_metrics(&self) -> Result<RaftMetrics<NodeId, Member>, AdminError> {
        let m = self.metrics();
        if m.state != ServerState::Leader {
            return Err(AdminError::NotLeader {
                leader: leader_hint(&m),
                leader_id: m.current_leader,
                term: m.current_term,
            });
        }
        Ok(m)
    }

    /// Adds `id` as a learner, waits (up to `catch_up` per step) until it has received the
    /// log up to its own addition, then, if `voter`, makes it a voter. Returns the log index of the last membership change.
    ///
    /// An id that is or was a member (as far as this node has seen) is refused: ids are never
    /// reused. The exception is a retry: an id that is a learner now with the same addresses
    /// goes on to be promoted.
    pub async fn add_node(
        &self,
        id: NodeId,
        addrs: Member,
        voter: bool,
        catch_up: Duration,
    ) -> Result<u64, AdminError> {
        if id == 0 {
            return Err(AdminError::Invalid(
                "node_id must be at least 1 (raft node ids start at 1)".into(),
            ));
        }
        let m = self.leader_metrics()?;
        let membership = m.membership_config.membership();
        let is_voter = membership.voter_ids().any(|v| v == id);
        let resume = !is_voter && membership.get_node(&id) == Some(&addrs);
        if !resume && (membership.get_node(&id).is_some() || self.observed.was_member(id)) {
            return Err(AdminError::IdUsed(format!(
                "node id {id} is or was a member of this cluster; node ids are never reused: \
                 give the node a new id (and an empty data directory)"
            )));
        }
        let mut index = m.membership_config.log_id().map_or(0, |l| l.index);
        if !resume {
            // Not openraft's blocking wait: it counts a learner within 5000 entries (its
            // replication_lag_threshold) as caught up, even one never reached.
            let add = self.raft().add_learner(id, addrs.clone(), false);
            let resp = match tokio::time::timeout(catch_up, add).await {
                Ok(r) => r.map_err(|e| raft_failed("adding the learner", e, &m))?,
                Err(_) => {
                    return Err(AdminError::Timeout(format!(
                        "adding node {id} as a learner did not finish within {} ms \
                         (CLUSTER_STATUS shows whether it did); repeat the request to carry on",
                        catch_up.as_millis()
                    )));
                }
            };
            index = resp.log_id.index;
            tracing::info!(node_id = id, %addrs, log_index = index, "added a learner");
        }
        // It has the log up to its own addition: it is reachable and keeps up.
        let wanted = index;
        let caught_up = self
            .raft()
            .wait(Some(catch_up))
            .metrics(
                move |m| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(&id))
                        .and_then(|l| l.as_ref())
                        .is_some_and(|l| l.index >= wanted)
                },
                "the new learner has the log",
            )
            .await;
        if caught_up.is_err() {
            return Err(AdminError::Timeout(format!(
                "node {id} is a learner but has not received the log within {} ms: check that \
                 {} is reachable and the node runs, then repeat the request to carry on, or \
                 remove it",
                catch_up.as_millis(),
                addrs.raft
            )));
        }
        if voter {
            let change = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
            let resp =
                match tokio::time::timeout(catch_up, self.raft().change_membership(change, false))
                    .await
                {
                    Ok(r) => r.map_err(|e| raft_failed("promoting the learner", e, &m))?,
                    Err(_) => {
                        return Err(AdminError::Timeout(format!(
                            "node {id} is a learner; making it a voter did not finish within {} ms \
                         (CLUSTER_STATUS shows whether it did); repeat the request to retry",
                            catch_up.as_millis()
                        )));
                    }
                };
            index = resp.log_id.index;
            tracing::info!(node_id = id, log_index = index, "made the learner a voter");
        }
        Ok(index)
    }

    /// Removes `id` from the membership (voter or learner). Refuses to remove the last voter.
    /// Returns the log index of the membership change.
    pub async fn remove_node(&self, id: NodeId, timeout: Duration) -> Result<u64, AdminError> {
        let m = self.leader_metrics()?;
        let membership = m.membership_config.membership();
        if membership.get_node(&id).is_none() {
            return Err(AdminError::NotMember(format!(
                "node {id} is not a member of this cluster"
            )));
        }
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let change = if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(AdminError::Invalid(format!(
                    "node {id} is the cluster's last voter; it cannot be removed"
                )));
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        let change = self.raft().change_membership(change, false);
        let resp = match tokio::time::timeout(timeout, change).await {
            Ok(r) => r.map_err(|e| raft_failed("removing the node", e, &m))?,
            Err(_) => {
                return Err(AdminError::Timeout(format!(
                    "removing node {id} did not finish within {} ms (CLUSTER_STATUS shows \
                     whether it did); repeat the request to retry",
                    timeout.as_millis()
                )));
            }
        };
        tracing::info!(
            node_id = id,
            log_index = resp.log_id.index,
            "removed a node"
        );
        Ok(resp.log_id.index)
    }
}
