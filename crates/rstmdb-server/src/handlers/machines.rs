//! PUT_MACHINE, GET_MACHINE, LIST_MACHINES.

use super::reply::{Answer, Ctx, engine, to_value, value};
use rstmdb_protocol::{
    GetMachineParams, GetMachineResult, ListMachinesResult, MachineSummary, PutMachineParams,
    PutMachineResult,
};

pub(super) async fn put_machine(ctx: Ctx<'_>, p: PutMachineParams) -> Answer {
    let db = ctx.db;
    let r = engine(db.put_machine(&p.machine, p.version, &p.definition).await)?;
    let off = r.created.then(|| db.last_offset());
    let result = PutMachineResult {
        machine: r.machine,
        version: r.version,
        stored_checksum: r.checksum,
        created: r.created,
    };
    value(to_value(&result)?, off)
}

pub(super) fn get_machine(ctx: Ctx<'_>, p: GetMachineParams) -> Answer {
    let m = engine(ctx.db.get_machine(&p.machine, p.version))?;
    let result = GetMachineResult {
        definition: m.definition,
        checksum: m.checksum,
    };
    value(to_value(&result)?, None)
}

pub(super) fn list_machines(ctx: Ctx<'_>) -> Answer {
    let items = engine(ctx.db.list_machines())?
        .into_iter()
        .map(|(machine, versions)| MachineSummary { machine, versions })
        .collect();
    value(to_value(&ListMachinesResult { items })?, None)
}
