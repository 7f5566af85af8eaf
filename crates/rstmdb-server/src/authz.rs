//! Authorisation: which role each op needs, and which machines a principal may touch.
//!
//! Checks come in two steps. [`check_command`] runs when a request is read and needs nothing
//! but the request (role, machines named in params). [`check_instances`] runs when the request
//! executes, only for principals limited to some machines, and looks up the machine of each
//! instance the request names. Refusals are `UNAUTHORIZED` naming what was missing.

use crate::auth::{Principal, Role};
use rstmdb_protocol::{Command, ErrorCode, ErrorObject, Op};
use rstmdb_storage::Database;
use serde_json::Value;

/// The least role that may run `op`. Session ops that need no authentication are `Read`
/// (they are let through before this check anyway).
pub fn required_role(op: Op) -> Role {
    match op {
        Op::PutMachine
        | Op::Compact
        | Op::FlushAll
        | Op::BackupBegin
        | Op::BackupRead
        | Op::BackupEnd
        | Op::RestoreInstance
        | Op::Sessions
        | Op::EndSession
        | Op::ClusterStatus
        | Op::ClusterAddNode
        | Op::ClusterRemoveNode => Role::Admin,
        Op::CreateInstance
        | Op::ApplyEvent
        | Op::DeleteInstance
        | Op::Batch
        | Op::SnapshotInstance => Role::Write,
        _ => Role::Read,
    }
}

fn refuse(message: String) -> ErrorObject {
    ErrorObject::new(ErrorCode::Unauthorized, message)
}

fn machine_refused(p: &Principal, machine: &str) -> ErrorObject {
    refuse(format!(
        "{} may not access machine {machine:?} (allowed: {})",
        p.name,
        p.machines.join(", ")
    ))
}

fn check_machine(p: &Principal, machine: &str) -> Result<(), ErrorObject> {
    if p.allows_machine(machine) {
        Ok(())
    } else {
        Err(machine_refused(p, machine))
    }
}

fn check_role(p: &Principal, op: Op) -> Result<(), ErrorObject> {
    let need = required_role(op);
    if p.role < need {
        return Err(refuse(format!(
            "{} requires the {} role; {} has {}",
            op.as_str(),
            need.as_str(),
            p.name,
            p.role.as_str()
        )));
    }
    Ok(())
}

/// Role and the machines named in the request itself. A BATCH needs the role of each of its
/// elements too (a FLUSH_ALL element needs admin, as the op on its own).
pub fn check_command(p: &Principal, cmd: &Command) -> Result<(), ErrorObject> {
    check_role(p, cmd.op())?;
    if let Command::Batch(b) = cmd {
        for (i, c) in b.ops.iter().enumerate() {
            check_role(p, c.op()).map_err(|mut e| {
                e.message = format!("ops[{i}]: {}", e.message);
                e
            })?;
        }
    }
    if !p.restricted() {
        return Ok(());
    }
    let unrestricted_only = |what: &str| {
        Err(refuse(format!(
            "{what} needs a principal without machine restrictions; {} is limited to {}",
            p.name,
            p.machines.join(", ")
        )))
    };
    // The machines the request names, then the ops whose reach no machine list can limit.
    let names = cmd.names();
    for m in names
        .machine
        .into_iter()
        .chain(names.machine_filter.iter().map(String::as_str))
    {
        check_machine(p, m)?;
    }
    match cmd {
        Command::ListInstances(x) if x.machine.is_none() => {
            unrestricted_only("LIST_INSTANCES without a machine filter")
        }
        Command::WalRead(_) => unrestricted_only("WAL_READ"),
        Command::FlushAll(_) => unrestricted_only("FLUSH_ALL"),
        // A checkpoint trims the WAL every client reads from (WAL_READ, watch resumes).
        Command::Compact(_) => unrestricted_only("COMPACT"),
        // A backup holds every machine; a restore may create any instance.
        Command::BackupBegin(_) | Command::BackupRead(_) | Command::BackupEnd(_) => {
            unrestricted_only("BACKUP")
        }
        Command::RestoreInstance(_) => unrestricted_only("RESTORE_INSTANCE"),
        // Connections of every principal, whatever machines they touch.
        Command::Sessions | Command::EndSession(_) => unrestricted_only("SESSIONS/END_SESSION"),
        // The cluster serves every machine.
        Command::ClusterStatus | Command::ClusterAddNode(_) | Command::ClusterRemoveNode(_) => {
            unrestricted_only("CLUSTER_*")
        }
        Command::Batch(b) => {
            for (i, c) in b.ops.iter().enumerate() {
                check_command(p, c).map_err(|mut e| {
                    e.message = format!("ops[{i}]: {}", e.message);
                    e
                })?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// For restricted principals: the machine of every instance the request names must be
/// allowed. An instance that does not exist passes here and fails in the operation itself
/// with its usual error.
pub fn check_instances(db: &Database, p: &Principal, cmd: &Command) -> Result<(), ErrorObject> {
    if !p.restricted() {
        return Ok(());
    }
    // Every existing instance named, batch elements included; a create's new id is not
    // checked (the op checks its machine, and an id already taken fails in the op itself).
    let mut result = Ok(());
    cmd.names().each_instance(&mut |id| {
        if result.is_ok()
            && let Ok(inst) = db.get_instance(id)
        {
            result = check_machine(p, &inst.machine);
        }
    });
    result
}

/// For restricted principals: drops from a LIST_MACHINES result the machines they may not see.
pub fn filter_result(p: &Principal, op: Op, result: &mut Value) {
    if !p.restricted() || op != Op::ListMachines {
        return;
    }
    if let Some(items) = result.get_mut("items").and_then(Value::as_array_mut) {
        items.retain(|item| {
            item.get("machine")
                .and_then(Value::as_str)
                .is_some_and(|m| p.allows_machine(m))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstmdb_protocol::decode_request;

    fn cmd(json: &str) -> Command {
        match decode_request(json.as_bytes()) {
            Ok(r) => r.command,
            Err(e) => panic!("{json}: {e:?}"),
        }
    }

    fn principal(role: Role, machines: &[&str]) -> Principal {
        Principal {
            name: "t".into(),
            role,
            machines: machines.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn roles_are_ordered_by_what_they_allow() {
        let get =
            cmd(r#"{"type":"REQUEST","id":"1","op":"GET_INSTANCE","params":{"instance_id":"i"}}"#);
        let apply = cmd(
            r#"{"type":"REQUEST","id":"1","op":"APPLY_EVENT","params":{"instance_id":"i","event":"E"}}"#,
        );
        let compact = cmd(r#"{"type":"REQUEST","id":"1","op":"COMPACT","params":{}}"#);
        let read = principal(Role::Read, &[]);
        let write = principal(Role::Write, &[]);
        let admin = principal(Role::Admin, &[]);
        assert!(check_command(&read, &get).is_ok());
        let e = check_command(&read, &apply).unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthorized);
        assert!(e.message.contains("write role"), "{}", e.message);
        assert!(check_command(&write, &apply).is_ok());
        assert!(check_command(&write, &compact).is_err());
        assert!(check_command(&admin, &compact).is_ok());
    }

    #[test]
    fn a_batch_needs_the_role_of_each_element() {
        let flush_in_batch = cmd(r#"{"type":"REQUEST","id":"1","op":"BATCH","params":{"ops":[
                {"op":"GET_INSTANCE","params":{"instance_id":"i"}},
                {"op":"FLUSH_ALL"}]}}"#);
        let e = check_command(&principal(Role::Write, &[]), &flush_in_batch).unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthorized);
        assert_eq!(
            e.message,
            "ops[1]: FLUSH_ALL requires the admin role; t has write"
        );
        assert!(check_command(&principal(Role::Admin, &[]), &flush_in_batch).is_ok());
        let reads = cmd(r#"{"type":"REQUEST","id":"1","op":"BATCH","params":{"ops":[
                {"op":"GET_INSTANCE","params":{"instance_id":"i"}}]}}"#);
        assert!(check_command(&principal(Role::Write, &[]), &reads).is_ok());
    }

    #[test]
    fn machine_globs_limit_named_machines_and_global_ops() {
        let p = principal(Role::Admin, &["order*"]);
        let put = |m: &str| {
            cmd(&format!(
                r#"{{"type":"REQUEST","id":"1","op":"GET_MACHINE","params":{{"machine":"{m}","version":1}}}}"#
            ))
        };
        assert!(check_command(&p, &put("orders")).is_ok());
        assert!(check_command(&p, &put("payments")).is_err());
        let wal = cmd(r#"{"type":"REQUEST","id":"1","op":"WAL_READ","params":{"from_offset":1}}"#);
        assert!(check_command(&p, &wal).is_err());
        let list = cmd(r#"{"type":"REQUEST","id":"1","op":"LIST_INSTANCES","params":{}}"#);
        assert!(check_command(&p, &list).is_err());
        let batch = cmd(
            r#"{"type":"REQUEST","id":"1","op":"BATCH","params":{"mode":"atomic","ops":[
                {"op":"CREATE_INSTANCE","params":{"machine":"orders","version":1}},
                {"op":"CREATE_INSTANCE","params":{"machine":"payments","version":1}}]}}"#,
        );
        let e = check_command(&p, &batch).unwrap_err();
        assert!(e.message.starts_with("ops[1]"), "{}", e.message);
        // FLUSH_ALL wipes every machine: refused in a batch as on its own.
        let flush = cmd(r#"{"type":"REQUEST","id":"1","op":"BATCH","params":{"ops":[
                {"op":"GET_INSTANCE","params":{"instance_id":"o-1"}},
                {"op":"FLUSH_ALL","params":{}}]}}"#);
        let e = check_command(&p, &flush).unwrap_err();
        assert!(
            e.message
                .starts_with("ops[1]: FLUSH_ALL needs a principal without machine restrictions"),
            "{}",
            e.message
        );
        let mut listed = serde_json::json!({"items":[{"machine":"orders"},{"machine":"payments"}]});
        filter_result(&p, Op::ListMachines, &mut listed);
        assert_eq!(listed, serde_json::json!({"items":[{"machine":"orders"}]}));
    }
}
