//! What a request names: the one answer to "which instances and machines does this request
//! address", used by the server for ordering, authorisation and the audit log.

use crate::request::Command;

/// The instances and machines a request names in its params, borrowed from it.
///
/// Only what the request *says* is here: an instance's machine is not (the server looks it up
/// where it needs it), and neither is anything the op does beyond what it names (COMPACT
/// touches everything and names nothing).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Names<'a> {
    /// An existing instance the request addresses: GET_INSTANCE, APPLY_EVENT,
    /// DELETE_INSTANCE, SNAPSHOT_INSTANCE, WATCH_INSTANCE.
    pub instance: Option<&'a str>,
    /// The id CREATE_INSTANCE asks for (absent: the server generates one). It names an
    /// instance that need not exist yet, so it is kept apart from [`Names::instance`].
    pub new_instance: Option<&'a str>,
    /// The machine the request addresses: PUT_MACHINE, GET_MACHINE, CREATE_INSTANCE, and
    /// LIST_INSTANCES' filter when given.
    pub machine: Option<&'a str>,
    /// WATCH_ALL's machine filter (empty: every machine).
    pub machine_filter: &'a [String],
    /// A BATCH's elements, each naming its own (see [`Names::each_instance`]).
    pub elements: &'a [Command],
}

impl<'a> Names<'a> {
    /// [`Names::instance`] or, failing that, [`Names::new_instance`]: the instance the request
    /// is about, whether or not it exists yet.
    pub fn any_instance(&self) -> Option<&'a str> {
        self.instance.or(self.new_instance)
    }

    /// Every existing instance named, including those of a BATCH's elements (recursively),
    /// in request order.
    pub fn each_instance(&self, f: &mut impl FnMut(&'a str)) {
        if let Some(id) = self.instance {
            f(id);
        }
        for c in self.elements {
            c.names().each_instance(f);
        }
    }
}

impl Command {
    /// Which instances and machines this request names (see [`Names`]).
    ///
    /// RESTORE_INSTANCE's ids are not included: they name an instance of a backup, and the op
    /// needs a principal without machine restrictions anyway.
    pub fn names(&self) -> Names<'_> {
        let mut n = Names::default();
        match self {
            Command::PutMachine(p) => n.machine = Some(&p.machine),
            Command::GetMachine(p) => n.machine = Some(&p.machine),
            Command::CreateInstance(p) => {
                n.machine = Some(&p.machine);
                n.new_instance = p.instance_id.as_deref();
            }
            Command::ListInstances(p) => n.machine = p.machine.as_deref(),
            Command::GetInstance(p) => n.instance = Some(&p.instance_id),
            Command::ApplyEvent(p) => n.instance = Some(&p.instance_id),
            Command::DeleteInstance(p) => n.instance = Some(&p.instance_id),
            Command::SnapshotInstance(p) => n.instance = Some(&p.instance_id),
            Command::WatchInstance(p) => n.instance = Some(&p.instance_id),
            Command::WatchAll(p) => n.machine_filter = &p.machines,
            Command::Batch(p) => n.elements = &p.ops,
            Command::Hello(_)
            | Command::Auth(_)
            | Command::Ping
            | Command::Bye
            | Command::Info
            | Command::ListMachines
            | Command::WalRead(_)
            | Command::WalStats
            | Command::Compact(_)
            | Command::Unwatch(_)
            | Command::FlushAll(_)
            | Command::ReplicationStatus
            | Command::Replicate
            | Command::ReplicateAck
            | Command::BackupBegin(_)
            | Command::BackupRead(_)
            | Command::BackupEnd(_)
            | Command::RestoreInstance(_)
            | Command::Sessions
            | Command::EndSession(_)
            | Command::ClusterStatus
            | Command::ClusterAddNode(_)
            | Command::ClusterRemoveNode(_) => {}
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use crate::decode_request;

    fn names_of(json: &str, f: impl FnOnce(super::Names<'_>)) {
        match decode_request(json.as_bytes()) {
            Ok(r) => f(r.command.names()),
            Err(e) => panic!("{json}: {e:?}"),
        }
    }

    #[test]
    fn requests_name_their_instances_and_machines() {
        names_of(
            r#"{"type":"request","id":"1","op":"APPLY_EVENT","params":{"instance_id":"i-1","event":"E"}}"#,
            |n| {
                assert_eq!(n.instance, Some("i-1"));
                assert_eq!((n.new_instance, n.machine), (None, None));
            },
        );
        names_of(
            r#"{"type":"request","id":"1","op":"CREATE_INSTANCE","params":{"machine":"m","version":1,"instance_id":"i-2"}}"#,
            |n| {
                assert_eq!(
                    n.instance, None,
                    "a create names an id, not an existing instance"
                );
                assert_eq!(n.any_instance(), Some("i-2"));
                assert_eq!(n.machine, Some("m"));
            },
        );
        names_of(
            r#"{"type":"request","id":"1","op":"WATCH_ALL","params":{"machines":["a","b"]}}"#,
            |n| {
                assert_eq!(n.machine_filter, ["a".to_string(), "b".to_string()]);
                assert_eq!(n.machine, None);
            },
        );
        names_of(
            r#"{"type":"request","id":"1","op":"BATCH","params":{"ops":[
                {"op":"GET_INSTANCE","params":{"instance_id":"x"}},
                {"op":"CREATE_INSTANCE","params":{"machine":"m","version":1,"instance_id":"new"}},
                {"op":"DELETE_INSTANCE","params":{"instance_id":"y"}}]}}"#,
            |n| {
                assert_eq!(n.any_instance(), None);
                let mut seen = Vec::new();
                n.each_instance(&mut |id| seen.push(id));
                assert_eq!(seen, ["x", "y"]);
            },
        );
        names_of(
            r#"{"type":"request","id":"1","op":"COMPACT","params":{}}"#,
            |n| assert_eq!(n, super::Names::default()),
        );
    }
}
