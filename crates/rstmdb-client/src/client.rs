//! [`Client`]: typed calls for every RCP op over one shared, pipelined connection.

use std::sync::Arc;

use rstmdb_protocol::{
    ApplyEventParams, ApplyEventResult, BatchMode, BatchParams, BatchResult, ByeResult, Command,
    CompactParams, CompactResult, CreateInstanceParams, CreateInstanceResult, DeleteInstanceParams,
    DeleteInstanceResult, FlushAllParams, FlushAllResult, GetInstanceParams, GetInstanceResult,
    GetMachineParams, GetMachineResult, HelloResult, InfoResult, ListInstancesParams,
    ListInstancesResult, ListMachinesResult, PutMachineParams, PutMachineResult,
    ReplicationStatusResult, SnapshotInstanceParams, SnapshotInstanceResult, UnwatchParams,
    UnwatchResult, WalReadParams, WalReadResult, WalStatsResult,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::ClientConfig;
use crate::connection::{Connection, SubscriptionSink};
use crate::error::{Error, Result};

/// A handle to an rstmdb server. Cheap to clone; clones share one connection, and calls
/// made concurrently from several tasks are pipelined on it.
///
/// Without a [`crate::ReconnectPolicy`], a lost connection stays lost: every later call
/// fails with [`Error::ConnectionClosed`] until [`Client::reconnect`] is called. With one,
/// the next call reconnects (HELLO and AUTH included) with exponential backoff.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ClientConfig,
    conn: tokio::sync::Mutex<Option<Arc<Connection>>>,
}

impl Client {
    /// Connects and handshakes (HELLO, then AUTH when a token is configured). With a
    /// reconnect policy, the first connection is retried with backoff too.
    pub async fn connect(config: ClientConfig) -> Result<Client> {
        let conn = open_with_policy(&config).await?;
        Ok(Client {
            inner: Arc::new(Inner {
                config,
                conn: tokio::sync::Mutex::new(Some(Arc::new(conn))),
            }),
        })
    }

    /// The configuration this client was built with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The server's HELLO answer on the current connection (name, version, wire mode).
    pub async fn server_hello(&self) -> Result<HelloResult> {
        Ok(self.connection().await?.hello().clone())
    }

    /// Drops the current connection and opens a new one (whatever the reconnect policy).
    /// Subscriptions of the old connection end; watch streams resubscribe only when a
    /// reconnect policy is set.
    pub async fn reconnect(&self) -> Result<()> {
        let mut slot = self.inner.conn.lock().await;
        *slot = None;
        let conn = open_with_policy(&self.inner.config).await?;
        *slot = Some(Arc::new(conn));
        Ok(())
    }

    /// The live connection, reconnecting first when it is lost and a policy allows it.
    pub(crate) async fn connection(&self) -> Result<Arc<Connection>> {
        let mut slot = self.inner.conn.lock().await;
        if let Some(conn) = slot.as_ref()
            && !conn.is_closed()
        {
            return Ok(conn.clone());
        }
        if self.inner.config.reconnect.is_none() {
            return Err(Error::ConnectionClosed);
        }
        *slot = None;
        let conn = Arc::new(open_with_policy(&self.inner.config).await?);
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Sends any command and returns its raw `result` object.
    pub async fn call(&self, command: Command) -> Result<Value> {
        self.connection().await?.call(command).await
    }

    /// Sends `op` (its exact wire name) with untyped `params`, for requests built from
    /// user input (a BATCH file): the server validates them and reports what is wrong.
    pub async fn call_raw(&self, op: &str, params: Value) -> Result<Value> {
        self.connection().await?.call_raw(op, params).await
    }

    async fn typed<T: DeserializeOwned>(&self, command: Command) -> Result<T> {
        let op = command.op();
        let value = self.call(command).await?;
        decode(op.as_str(), value)
    }

    /// PING.
    pub async fn ping(&self) -> Result<()> {
        self.call(Command::Ping).await.map(drop)
    }

    /// INFO: server name, version and limits.
    pub async fn info(&self) -> Result<InfoResult> {
        self.typed(Command::Info).await
    }

    /// AUTH with a bearer token on the current connection (the configured token is sent
    /// automatically on every connect; this is for switching identity).
    pub async fn auth(&self, token: impl Into<String>) -> Result<()> {
        self.call(Command::Auth(rstmdb_protocol::AuthParams {
            method: "bearer".into(),
            token: token.into(),
        }))
        .await
        .map(drop)
    }

    /// BYE: the server answers and closes the connection.
    pub async fn bye(&self) -> Result<ByeResult> {
        self.typed(Command::Bye).await
    }

    /// PUT_MACHINE.
    pub async fn put_machine(
        &self,
        machine: impl Into<String>,
        version: u32,
        definition: Value,
    ) -> Result<PutMachineResult> {
        self.typed(Command::PutMachine(PutMachineParams {
            machine: machine.into(),
            version,
            definition,
            checksum: None,
        }))
        .await
    }

    /// GET_MACHINE.
    pub async fn get_machine(
        &self,
        machine: impl Into<String>,
        version: u32,
    ) -> Result<GetMachineResult> {
        self.typed(Command::GetMachine(GetMachineParams {
            machine: machine.into(),
            version,
        }))
        .await
    }

    /// LIST_MACHINES.
    pub async fn list_machines(&self) -> Result<ListMachinesResult> {
        self.typed(Command::ListMachines).await
    }

    /// CREATE_INSTANCE.
    pub async fn create_instance(
        &self,
        params: CreateInstanceParams,
    ) -> Result<CreateInstanceResult> {
        self.typed(Command::CreateInstance(params)).await
    }

    /// GET_INSTANCE.
    pub async fn get_instance(&self, instance_id: impl Into<String>) -> Result<GetInstanceResult> {
        self.typed(Command::GetInstance(GetInstanceParams {
            instance_id: instance_id.into(),
        }))
        .await
    }

    /// LIST_INSTANCES.
    pub async fn list_instances(&self, params: ListInstancesParams) -> Result<ListInstancesResult> {
        self.typed(Command::ListInstances(params)).await
    }

    /// DELETE_INSTANCE.
    pub async fn delete_instance(
        &self,
        params: DeleteInstanceParams,
    ) -> Result<DeleteInstanceResult> {
        self.typed(Command::DeleteInstance(params)).await
    }

    /// APPLY_EVENT.
    pub async fn apply_event(&self, params: ApplyEventParams) -> Result<ApplyEventResult> {
        self.typed(Command::ApplyEvent(params)).await
    }

    /// BATCH of typed commands.
    pub async fn batch(&self, mode: BatchMode, ops: Vec<Command>) -> Result<BatchResult> {
        self.typed(Command::Batch(BatchParams { mode, ops })).await
    }

    /// SNAPSHOT_INSTANCE.
    pub async fn snapshot_instance(
        &self,
        instance_id: impl Into<String>,
    ) -> Result<SnapshotInstanceResult> {
        self.typed(Command::SnapshotInstance(SnapshotInstanceParams {
            instance_id: instance_id.into(),
        }))
        .await
    }

    /// WAL_READ: one page from `from_offset` (inclusive).
    pub async fn wal_read(&self, from_offset: u64, limit: Option<u64>) -> Result<WalReadResult> {
        self.typed(Command::WalRead(WalReadParams { from_offset, limit }))
            .await
    }

    /// WAL_STATS.
    pub async fn wal_stats(&self) -> Result<WalStatsResult> {
        self.typed(Command::WalStats).await
    }

    /// COMPACT.
    pub async fn compact(&self, force_snapshot: bool) -> Result<CompactResult> {
        self.typed(Command::Compact(CompactParams { force_snapshot }))
            .await
    }

    /// FLUSH_ALL (refused unless the server enables it).
    pub async fn flush_all(&self) -> Result<FlushAllResult> {
        self.typed(Command::FlushAll(FlushAllParams {})).await
    }

    /// REPLICATION_STATUS: the node's role and, on a primary or replica, its progress.
    pub async fn replication_status(&self) -> Result<ReplicationStatusResult> {
        self.typed(Command::ReplicationStatus).await
    }

    /// SESSIONS: the server's open connections (admin, unrestricted).
    pub async fn sessions(&self) -> Result<rstmdb_protocol::SessionsResult> {
        self.typed(Command::Sessions).await
    }

    /// END_SESSION: close one open connection by its SESSIONS id (admin, unrestricted).
    pub async fn end_session(&self, session_id: u64) -> Result<rstmdb_protocol::EndSessionResult> {
        self.typed(Command::EndSession(rstmdb_protocol::EndSessionParams {
            session_id,
        }))
        .await
    }

    /// CLUSTER_STATUS: the cluster as the node sees it (admin, unrestricted).
    pub async fn cluster_status(&self) -> Result<rstmdb_protocol::ClusterStatusResult> {
        self.typed(Command::ClusterStatus).await
    }

    /// CLUSTER_ADD_NODE: add a node as a learner, then (with `voter`) a voter (admin, sent to
    /// the leader).
    pub async fn cluster_add_node(
        &self,
        params: rstmdb_protocol::ClusterAddNodeParams,
    ) -> Result<rstmdb_protocol::ClusterAddNodeResult> {
        self.typed(Command::ClusterAddNode(params)).await
    }

    /// CLUSTER_REMOVE_NODE: remove a member (admin, sent to the leader).
    pub async fn cluster_remove_node(
        &self,
        node_id: u64,
    ) -> Result<rstmdb_protocol::ClusterRemoveNodeResult> {
        self.typed(Command::ClusterRemoveNode(
            rstmdb_protocol::ClusterRemoveNodeParams { node_id },
        ))
        .await
    }

    /// UNWATCH on the current connection.
    pub async fn unwatch(&self, subscription_id: impl Into<String>) -> Result<UnwatchResult> {
        let subscription_id = subscription_id.into();
        let conn = self.connection().await?;
        let value = conn
            .call(Command::Unwatch(UnwatchParams {
                subscription_id: subscription_id.clone(),
            }))
            .await?;
        conn.forget_subscription(&subscription_id);
        decode("UNWATCH", value)
    }

    /// Sends a WATCH_* command on the current connection with `sink` as its destination.
    pub(crate) async fn subscribe(
        &self,
        command: Command,
        sink: SubscriptionSink,
    ) -> Result<(Arc<Connection>, Value)> {
        let conn = self.connection().await?;
        let value = conn.call_with(command, Some(sink)).await?;
        Ok((conn, value))
    }
}

/// A result object as the op's typed result.
pub(crate) fn decode<T: DeserializeOwned>(op: &str, value: Value) -> Result<T> {
    serde_json::from_value(value)
        .map_err(|e| Error::Protocol(format!("unexpected {op} result: {e}")))
}

/// Opens a connection, retrying with backoff when a reconnect policy is set.
async fn open_with_policy(config: &ClientConfig) -> Result<Connection> {
    let Some(policy) = config.reconnect else {
        return Connection::open(config).await;
    };
    let attempts = policy.max_attempts.max(1);
    let mut attempt = 0;
    loop {
        tokio::time::sleep(policy.delay(attempt)).await;
        match Connection::open(config).await {
            Ok(conn) => return Ok(conn),
            // A refusal by the server or a broken TLS setup will not fix itself.
            Err(e @ (Error::Server { .. } | Error::TlsConfig(_))) => return Err(e),
            Err(e) => {
                attempt += 1;
                tracing::debug!(attempt, error = %e, "connect failed");
                if attempt >= attempts {
                    return Err(e);
                }
            }
        }
    }
}
