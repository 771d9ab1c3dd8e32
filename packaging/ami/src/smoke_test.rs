//! The smoke test's AWS flow ([`crate::smoke`] says what it checks and why): the security group
//! and the instance on the run's cleanup stack, the launch (or the reuse of an instance a killed
//! run left, found by its run tag), the bounded wait for the report, the judgement, and the
//! console output on failure. Also `kv-ami smoke-test` alone ([`standalone`]).

use crate::aws::Clients;
use crate::cleanup::{Undo, When};
use crate::error::Error as RunError;
use crate::instances::{self, ROLE_SMOKE_TEST, RUN_TAG};
use crate::run::Ctx;
use crate::smoke::{self, Prepared};
use crate::spec::AmiSpec;
use crate::wait::{self, Bound, Ended, Step};
use std::time::Duration;

/// Boot `ami` and check it; the instance and its group go on `ctx`'s cleanup stack.
pub async fn run(ctx: &Ctx<'_>, c: &Clients, ami: &str, p: &Prepared) -> Result<(), RunError> {
    let t = ctx
        .spec
        .smoke_test
        .as_ref()
        .ok_or_else(|| RunError::Input("smoke_test: no [smoke_test] table".into()))?;
    let key = ctx.content_key;
    let log = ctx.log;
    let r = &c.region;
    if ctx.state.get().smoke_passed.as_deref() == Some(ami) {
        log(&format!("{r}: smoke test of {ami} passed in an earlier run (state file): not repeated"));
        return Ok(());
    }
    let run = smoke::run_id(key, ami);
    let sg_name = smoke::security_group_name(&run);
    let sg = match instances::find_security_group(c, &sg_name, &run).await? {
        Some(sg) => sg,
        None => {
            let vpc = match &t.subnet_id {
                Some(sn) => instances::subnet_vpc(c, sn).await?,
                None => None,
            };
            instances::create_security_group(c, &sg_name, vpc, ROLE_SMOKE_TEST, &run, key).await?
        }
    };
    ctx.cleanup.push(c, Undo::DeleteSecurityGroup(sg.clone()), When::Always);
    // Before RunInstances: should its answer be lost, the instance is found by its tag.
    ctx.cleanup.push(c, Undo::TerminateTagged(run.clone()), When::Always);
    let instance = match reusable(c, &run).await? {
        Some(id) => {
            log(&format!("{r}: smoke test: reusing {id} of an interrupted run ({RUN_TAG}={run})"));
            id
        }
        None => {
            let launch = instances::Launch {
                image_id: ami,
                instance_type: &t.instance_type,
                instance_profile: &t.instance_profile,
                security_group_id: &sg,
                subnet_id: t.subnet_id.as_deref(),
                spot: false,
                user_data: &p.user_data,
                root_volume: None,
                role: ROLE_SMOKE_TEST,
                run_id: &run,
                content_key: key,
            };
            instances::run(c, &launch).await?
        }
    };
    ctx.cleanup.push(c, Undo::TerminateInstance(instance.clone()), When::Always);
    log(&format!("{r}: smoke test: {instance} booting {ami}; waiting for its {} tag", smoke::STATUS_TAG));
    let bound = Bound::new(t.report_attempts, Duration::from_secs(t.report_interval_secs));
    let waited = wait::poll(bound, || async {
        let i = instances::describe(c, &instance).await?;
        let state = i.state().and_then(|s| s.name()).map(|n| n.as_str().to_string()).unwrap_or_default();
        Ok::<_, instances::Error>(match smoke::report_of(&i) {
            Some(report) => Step::Done(report),
            None if ["stopping", "stopped", "shutting-down", "terminated"].contains(&state.as_str()) => {
                let why = i.state_reason().and_then(|s| s.message()).unwrap_or("no StateReason given");
                Step::Failed(format!("the instance is {state} before reporting: {why}"))
            }
            None => Step::Again,
        })
    })
    .await;
    let console = || async {
        match instances::console_output(c, &instance).await {
            Ok(text) => text,
            Err(e) => Some(format!("(ec2:GetConsoleOutput failed: {e})")),
        }
    };
    let (region, ami_s) = (r.clone(), ami.to_string());
    let report = match waited {
        Ok(report) => report,
        Err(Ended::Call(e)) => return Err(e.into()),
        Err(Ended::Failed(reason)) => {
            let console = console().await;
            return Err(smoke::Error::Gone { region, ami: ami_s, instance, reason, console }.into());
        }
        Err(Ended::TimedOut { checks, waited }) => {
            let console = console().await;
            return Err(
                smoke::Error::NoReport { region, ami: ami_s, instance, checks, waited, console }.into()
            );
        }
    };
    let problems = smoke::judge(&report, &p.pcrs);
    if !problems.is_empty() {
        let console = console().await;
        return Err(smoke::Error::Failed { region, ami: ami_s, instance, problems, console }.into());
    }
    ctx.record(|st| st.smoke_passed = Some(ami.to_string()));
    log(&format!(
        "{r}: smoke test of {ami} passed: enclave RUNNING with the manifest's PCRs, /readyz, SERVING"
    ));
    Ok(())
}

/// `kv-ami smoke-test`: the test alone, on an existing image of the build region whose
/// content-key tag is the bundle manifest's (the PCRs compared are that bundle's). Its own
/// cleanup stack; `interrupt` cuts it short and the stack still runs.
pub async fn standalone(
    spec: &AmiSpec,
    content_key: &str,
    prepared: &Prepared,
    ami: &str,
    opts: &crate::run::RunOptions<'_>,
    interrupt: impl std::future::Future<Output = ()>,
) -> Result<(), RunError> {
    use std::sync::Arc;
    let state = Arc::new(crate::state::StateFile::none(content_key, "smoke-test"));
    let every = Duration::from_secs(spec.upload.wait_interval_secs);
    let cleanup = Arc::new(crate::cleanup::Cleanup::new(false, spec.upload.wait_attempts, every));
    let ctx = Ctx { spec, content_key, target: opts.target, cleanup: cleanup.clone(), state, log: opts.log };
    let body = async {
        let c = Clients::new(&spec.region, opts.target).await;
        let key = crate::images::content_key_of(&c, ami).await?;
        if key != content_key {
            return Err(RunError::Input(format!(
                "{}: {ami} carries content key {key}, the bundle manifest's is {content_key}: its PCRs are another bundle's",
                spec.region
            )));
        }
        run(&ctx, &c, ami, prepared).await
    };
    crate::run::with_cleanup(&cleanup, opts.log, body, interrupt).await
}

/// A pending or running test instance of this run tag (left by a run killed before its cleanup).
async fn reusable(c: &Clients, run: &str) -> Result<Option<String>, instances::Error> {
    for id in instances::of_run(c, run).await? {
        let i = instances::describe(c, &id).await?;
        let state = i.state().and_then(|s| s.name()).map(|n| n.as_str().to_string()).unwrap_or_default();
        if state == "pending" || state == "running" {
            return Ok(Some(id));
        }
    }
    Ok(None)
}
