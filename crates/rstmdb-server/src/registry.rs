//! The open connections, for SESSIONS and END_SESSION: who is connected, from where, since
//! when, and a way to end each one.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// One registered connection.
#[derive(Debug)]
struct Entry {
    peer: SocketAddr,
    tls: bool,
    since: String,
    principal: Option<String>,
    end: Arc<Notify>,
}

/// Every open connection, by session id (ids are never reused while the server runs).
#[derive(Debug, Default)]
pub struct Registry {
    next_id: AtomicU64,
    open: Mutex<BTreeMap<u64, Entry>>,
}

/// A connection's place in the registry; dropping it removes the connection.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<Registry>,
    pub id: u64,
    /// Notified by END_SESSION.
    pub end: Arc<Notify>,
}

/// What SESSIONS shows of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub id: u64,
    pub peer: SocketAddr,
    pub tls: bool,
    pub since: String,
    pub principal: Option<String>,
}

impl Registry {
    pub fn register(
        registry: &Arc<Registry>,
        peer: SocketAddr,
        tls: bool,
        since: String,
        principal: Option<String>,
    ) -> Registration {
        let id = registry.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let end = Arc::new(Notify::new());
        if let Ok(mut open) = registry.open.lock() {
            open.insert(
                id,
                Entry {
                    peer,
                    tls,
                    since,
                    principal,
                    end: end.clone(),
                },
            );
        }
        Registration {
            registry: registry.clone(),
            id,
            end,
        }
    }

    /// The open connections, by id.
    pub fn list(&self) -> Vec<Listed> {
        let Ok(open) = self.open.lock() else {
            return Vec::new();
        };
        open.iter()
            .map(|(&id, e)| Listed {
                id,
                peer: e.peer,
                tls: e.tls,
                since: e.since.clone(),
                principal: e.principal.clone(),
            })
            .collect()
    }

    /// Asks connection `id` to end; false when no such connection is open.
    pub fn end(&self, id: u64) -> bool {
        let Ok(open) = self.open.lock() else {
            return false;
        };
        match open.get(&id) {
            Some(e) => {
                // `notify_one` keeps a permit, so the session sees it even if it is busy now.
                e.end.notify_one();
                true
            }
            None => false,
        }
    }
}

impl Registration {
    /// Records the connection's principal (after AUTH, or a reload that changed it).
    pub fn set_principal(&self, principal: Option<String>) {
        if let Ok(mut open) = self.registry.open.lock()
            && let Some(e) = open.get_mut(&self.id)
        {
            e.principal = principal;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut open) = self.registry.open.lock() {
            open.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_listed_until_dropped_and_can_be_asked_to_end() {
        let r = Arc::new(Registry::default());
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let a = Registry::register(&r, peer, false, "t0".into(), None);
        let b = Registry::register(&r, peer, true, "t1".into(), Some("svc".into()));
        assert_ne!(a.id, b.id);
        a.set_principal(Some("ops".into()));
        let listed = r.list();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].principal.as_deref(), Some("ops"));
        assert!(r.end(b.id));
        assert!(!r.end(999));
        drop(b);
        assert_eq!(r.list().len(), 1);
        assert!(!r.end(2), "a closed connection cannot be ended");
    }
}
