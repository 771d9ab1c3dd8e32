//! EC2 instances and their security group, for the builder of `kv-ami bake` and the smoke-test
//! instance (`crate::smoke`): the security group with no ingress, RunInstances (IMDSv2 required, EnclaveOptions, instance profile, user data),
//! the wait for the builder's signal tag (the generic [`wait::poll`]), StopInstances and
//! TerminateInstances with the SDK's `instance_stopped` / `instance_terminated` waiters, and the
//! instances of a run found by their tag.

use crate::aws::{AwsError, Clients};
use crate::spec::CONTENT_KEY_TAG;
use crate::userdata::{DETAIL_TAG, STATUS_TAG};
use crate::wait::{self, Bound, Ended, Step};
use aws_sdk_ec2::client::Waiters;
use aws_sdk_ec2::types as ec2t;
use base64::Engine as _;
use std::time::Duration;

/// Tag on everything the bake launches; the IAM policies key on it.
pub const ROLE_TAG: &str = "kv-ami:role";
pub const ROLE_BUILDER: &str = "builder";
/// The role of the instance booted from a new image by the smoke test.
pub const ROLE_SMOKE_TEST: &str = "smoke-test";
/// Tag with the run id on everything the bake launches (found again by the cleanup).
pub const RUN_TAG: &str = "kv-ami:run";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An EC2 call failed.
    #[error(transparent)]
    Call(#[from] AwsError),
    /// The answer (or a DescribeInstances by id) had no instance.
    #[error("{region}: {operation} on {id}: no instance in the answer")]
    NoInstance { region: String, operation: &'static str, id: String },
    /// CreateSecurityGroup answered without a group id.
    #[error("{region}: ec2:CreateSecurityGroup {name}: no GroupId in the answer")]
    NoGroupId { region: String, name: String },
    /// The instance is in a state from which it will not reach `want`.
    #[error("{region}: instance {id} is {state}, so it will not be {want}")]
    WrongState { region: String, id: String, want: &'static str, state: String },
    /// The instance did not reach `want` within the bound.
    #[error("{region}: instance {id} not {want} after {checks} checks ({}s)", waited.as_secs())]
    StateTimeout { region: String, id: String, want: &'static str, checks: u32, waited: Duration },
    /// The builder signalled failure, or stopped before signalling.
    #[error(
        "{region}: builder {id}: {reason} (its log: /var/log/cloud-init-output.log, or ec2 get-console-output)"
    )]
    BuilderFailed { region: String, id: String, reason: String },
    /// The builder gave no signal within the bound.
    #[error("{region}: builder {id} gave no {STATUS_TAG} signal after {checks} checks ({}s)", waited.as_secs())]
    NoSignal { region: String, id: String, checks: u32, waited: Duration },
}

crate::aws::call_code!(Error);

type Result<T> = std::result::Result<T, Error>;

/// The builder to launch.
#[derive(Debug, Clone)]
pub struct Launch<'a> {
    pub image_id: &'a str,
    pub instance_type: &'a str,
    pub instance_profile: &'a str,
    pub security_group_id: &'a str,
    pub subnet_id: Option<&'a str>,
    /// One-time spot (terminated on interruption and on shutdown) instead of on-demand.
    pub spot: bool,
    /// As the instance gets it (a script, or gzip of one: cloud-init unpacks it).
    pub user_data: &'a [u8],
    /// gp3 root volume `(device, GiB, IOPS, MiB/s)`; None keeps the base AMI's.
    pub root_volume: Option<(&'a str, i32, i32, i32)>,
    /// Tags of the instance and its volumes ([`run_tags`]).
    pub role: &'a str,
    pub run_id: &'a str,
    pub content_key: &'a str,
}

/// The tags of what a run launches: role (builder or smoke-test), content key, run id and a Name.
pub fn run_tags(
    rt: ec2t::ResourceType,
    role: &str,
    run_id: &str,
    content_key: &str,
) -> ec2t::TagSpecification {
    ec2t::TagSpecification::builder()
        .resource_type(rt)
        .tags(ec2t::Tag::builder().key(ROLE_TAG).value(role).build())
        .tags(ec2t::Tag::builder().key(CONTENT_KEY_TAG).value(content_key).build())
        .tags(ec2t::Tag::builder().key(RUN_TAG).value(run_id).build())
        .tags(ec2t::Tag::builder().key("Name").value(format!("kv-ami {role} {run_id}")).build())
        .build()
}

/// The VPC of a subnet (DescribeSubnets).
pub async fn subnet_vpc(c: &Clients, subnet_id: &str) -> Result<Option<String>> {
    let out = c
        .ec2
        .describe_subnets()
        .subnet_ids(subnet_id)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(&c.region, "ec2:DescribeSubnets", subnet_id, &e))?;
    Ok(out.subnets().first().and_then(|x| x.vpc_id()).map(str::to_string))
}

/// CreateSecurityGroup with no ingress rule (nobody logs into the instance), tagged as the run's.
pub async fn create_security_group(
    c: &Clients,
    name: &str,
    vpc_id: Option<String>,
    role: &str,
    run_id: &str,
    content_key: &str,
) -> Result<String> {
    let out = c
        .ec2
        .create_security_group()
        .group_name(name)
        .description(format!("kv-ami {role}: no ingress (the instance is never logged into)"))
        .set_vpc_id(vpc_id)
        .tag_specifications(run_tags(ec2t::ResourceType::SecurityGroup, role, run_id, content_key))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(&c.region, "ec2:CreateSecurityGroup", name, &e))?;
    match out.group_id() {
        Some(id) if !id.is_empty() => Ok(id.to_string()),
        _ => Err(Error::NoGroupId { region: c.region.clone(), name: name.into() }),
    }
}

pub async fn delete_security_group(c: &Clients, id: &str) -> Result<()> {
    c.ec2
        .delete_security_group()
        .group_id(id)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(&c.region, "ec2:DeleteSecurityGroup", id, &e))?;
    Ok(())
}

/// RunInstances of the builder; returns its instance id.
pub async fn run(c: &Clients, l: &Launch<'_>) -> Result<String> {
    let metadata = ec2t::InstanceMetadataOptionsRequest::builder()
        .http_tokens(ec2t::HttpTokensState::Required)
        .http_endpoint(ec2t::InstanceMetadataEndpointState::Enabled)
        .http_put_response_hop_limit(1)
        .build();
    let mut req = c
        .ec2
        .run_instances()
        .image_id(l.image_id)
        .instance_type(ec2t::InstanceType::from(l.instance_type))
        .min_count(1)
        .max_count(1)
        .user_data(base64::engine::general_purpose::STANDARD.encode(l.user_data))
        .metadata_options(metadata)
        .enclave_options(ec2t::EnclaveOptionsRequest::builder().enabled(true).build())
        .iam_instance_profile(
            ec2t::IamInstanceProfileSpecification::builder().name(l.instance_profile).build(),
        )
        .security_group_ids(l.security_group_id)
        .set_subnet_id(l.subnet_id.map(str::to_string))
        .instance_initiated_shutdown_behavior(if l.spot {
            ec2t::ShutdownBehavior::Terminate
        } else {
            ec2t::ShutdownBehavior::Stop
        })
        .tag_specifications(run_tags(ec2t::ResourceType::Instance, l.role, l.run_id, l.content_key))
        .tag_specifications(run_tags(ec2t::ResourceType::Volume, l.role, l.run_id, l.content_key));
    if l.spot {
        req = req.instance_market_options(
            ec2t::InstanceMarketOptionsRequest::builder()
                .market_type(ec2t::MarketType::Spot)
                .spot_options(
                    ec2t::SpotMarketOptions::builder()
                        .spot_instance_type(ec2t::SpotInstanceType::OneTime)
                        .instance_interruption_behavior(ec2t::InstanceInterruptionBehavior::Terminate)
                        .build(),
                )
                .build(),
        );
    }
    if let Some((device, gib, iops, throughput)) = l.root_volume {
        req = req.block_device_mappings(
            ec2t::BlockDeviceMapping::builder()
                .device_name(device)
                .ebs(
                    ec2t::EbsBlockDevice::builder()
                        .volume_size(gib)
                        .volume_type(ec2t::VolumeType::Gp3)
                        .iops(iops)
                        .throughput(throughput)
                        .delete_on_termination(true)
                        .build(),
                )
                .build(),
        );
    }
    let out =
        req.send().await.map_err(|e| AwsError::from_sdk(&c.region, "ec2:RunInstances", l.image_id, &e))?;
    out.instances().first().and_then(|i| i.instance_id()).map(str::to_string).ok_or_else(|| {
        Error::NoInstance { region: c.region.clone(), operation: "ec2:RunInstances", id: l.image_id.into() }
    })
}

/// DescribeInstances of one instance.
pub async fn describe(c: &Clients, id: &str) -> Result<ec2t::Instance> {
    let out = c
        .ec2
        .describe_instances()
        .instance_ids(id)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(&c.region, "ec2:DescribeInstances", id, &e))?;
    out.reservations().iter().flat_map(|r| r.instances()).next().cloned().ok_or_else(|| Error::NoInstance {
        region: c.region.clone(),
        operation: "ec2:DescribeInstances",
        id: id.into(),
    })
}

/// The security group of this name carrying `kv-ami:run = run_id`, if one exists (a run cut short
/// after creating it: the re-run uses it again instead of failing on the duplicate name).
pub async fn find_security_group(c: &Clients, name: &str, run_id: &str) -> Result<Option<String>> {
    let f = |k: &str, v: &str| ec2t::Filter::builder().name(k).values(v).build();
    let out = c
        .ec2
        .describe_security_groups()
        .filters(f("group-name", name))
        .filters(f(&format!("tag:{RUN_TAG}"), run_id))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(&c.region, "ec2:DescribeSecurityGroups", name, &e))?;
    Ok(out.security_groups().iter().find_map(|g| g.group_id()).map(str::to_string))
}

/// GetConsoleOutput (the latest, decoded); None when the instance has written none yet.
pub async fn console_output(c: &Clients, id: &str) -> Result<Option<String>> {
    let out = c
        .ec2
        .get_console_output()
        .instance_id(id)
        .latest(true)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(&c.region, "ec2:GetConsoleOutput", id, &e))?;
    let Some(b64) = out.output().filter(|o| !o.is_empty()) else { return Ok(None) };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .unwrap_or_else(|_| b64.as_bytes().to_vec());
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// Instances tagged `kv-ami:run = run_id` that are not terminated (or terminating).
pub async fn of_run(c: &Clients, run_id: &str) -> Result<Vec<String>> {
    let f = |k: &str, v: &[&str]| {
        ec2t::Filter::builder().name(k).set_values(Some(v.iter().map(|s| s.to_string()).collect())).build()
    };
    let out = c
        .ec2
        .describe_instances()
        .filters(f(&format!("tag:{RUN_TAG}"), &[run_id]))
        .filters(f("instance-state-name", &["pending", "running", "stopping", "stopped"]))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(&c.region, "ec2:DescribeInstances", run_id, &e))?;
    Ok(out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter_map(|i| i.instance_id())
        .map(str::to_string)
        .collect())
}

/// What to do after one look at the builder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalStep {
    Done,
    Again,
    Failed(String),
}

pub fn signal_step(
    status: Option<&str>,
    detail: Option<&str>,
    state: Option<&str>,
    reason: Option<&str>,
) -> SignalStep {
    match status {
        Some("ok") => SignalStep::Done,
        Some("failed") => SignalStep::Failed(format!(
            "the builder reported failure: {}",
            detail.filter(|d| !d.trim().is_empty()).unwrap_or("no detail")
        )),
        Some(other) => {
            SignalStep::Failed(format!("the builder set {STATUS_TAG}={other:?} (expected ok or failed)"))
        }
        None => match state {
            Some(s @ ("stopping" | "stopped" | "shutting-down" | "terminated")) => SignalStep::Failed(
                format!("the builder is {s} before signalling: {}", reason.unwrap_or("no StateReason given")),
            ),
            _ => SignalStep::Again,
        },
    }
}

pub fn tag_of<'a>(i: &'a ec2t::Instance, key: &str) -> Option<&'a str> {
    i.tags().iter().find(|t| t.key() == Some(key)).and_then(|t| t.value())
}

/// Bounded wait for the builder's signal tag (`ok` or `failed`, with its detail).
pub async fn wait_signal(c: &Clients, id: &str, bound: Bound) -> Result<()> {
    let waited = wait::poll(bound, || async {
        let i = describe(c, id).await?;
        let step = signal_step(
            tag_of(&i, STATUS_TAG),
            tag_of(&i, DETAIL_TAG),
            i.state().and_then(|s| s.name()).map(|n| n.as_str()),
            i.state_reason().and_then(|r| r.message()),
        );
        Ok::<_, Error>(match step {
            SignalStep::Done => Step::Done(()),
            SignalStep::Again => Step::Again,
            SignalStep::Failed(m) => Step::Failed(m),
        })
    })
    .await;
    waited.map_err(|e| match e {
        Ended::Call(e) => e,
        Ended::Failed(reason) => Error::BuilderFailed { region: c.region.clone(), id: id.into(), reason },
        Ended::TimedOut { checks, waited } => {
            Error::NoSignal { region: c.region.clone(), id: id.into(), checks, waited }
        }
    })
}

/// The error of both instance waiters (`instance_stopped` and `instance_terminated` poll the same
/// DescribeInstances).
type InstanceWaitError = aws_sdk_ec2::waiters::instance_stopped::WaitUntilInstanceStoppedError;

/// StopInstances, then [`wait_stopped`].
pub async fn stop(c: &Clients, id: &str, bound: Bound) -> Result<()> {
    c.ec2
        .stop_instances()
        .instance_ids(id)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(&c.region, "ec2:StopInstances", id, &e))?;
    wait_stopped(c, id, bound).await
}

/// TerminateInstances, then [`wait_terminated`] (a security group in use cannot be deleted, so
/// the cleanup waits before deleting it).
pub async fn terminate(c: &Clients, id: &str, bound: Bound) -> Result<()> {
    c.ec2
        .terminate_instances()
        .instance_ids(id)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(&c.region, "ec2:TerminateInstances", id, &e))?;
    wait_terminated(c, id, bound).await
}

/// The SDK's `instance_stopped` waiter (`pending` or `terminated` end it at once).
pub async fn wait_stopped(c: &Clients, id: &str, bound: Bound) -> Result<()> {
    let r = c.ec2.wait_until_instance_stopped().instance_ids(id).wait(bound.max_wait()).await;
    waited(c, id, "stopped", r.map(|_| ()))
}

/// The SDK's `instance_terminated` waiter (`pending` or `stopping` end it at once).
pub async fn wait_terminated(c: &Clients, id: &str, bound: Bound) -> Result<()> {
    let r = c.ec2.wait_until_instance_terminated().instance_ids(id).wait(bound.max_wait()).await;
    waited(c, id, "terminated", r.map(|_| ()))
}

fn waited(
    c: &Clients,
    id: &str,
    want: &'static str,
    r: std::result::Result<(), InstanceWaitError>,
) -> Result<()> {
    let region = c.region.clone();
    match r {
        Ok(()) => Ok(()),
        Err(InstanceWaitError::FailureState(f)) => {
            let seen = f.final_poll().as_result().ok().and_then(|o| {
                o.reservations().iter().flat_map(|r| r.instances()).next().and_then(|i| i.state())
            });
            let state = seen.and_then(|s| s.name()).map_or("in an unexpected state", |n| n.as_str());
            Err(Error::WrongState { region, id: id.into(), want, state: state.into() })
        }
        Err(InstanceWaitError::ExceededMaxWait(m)) => Err(Error::StateTimeout {
            region,
            id: id.into(),
            want,
            checks: m.poll_count(),
            waited: m.elapsed(),
        }),
        Err(InstanceWaitError::OperationFailed(e)) => {
            Err(AwsError::from_sdk(&region, "ec2:DescribeInstances", id, e.error()).into())
        }
        Err(other) => Err(Error::Call(AwsError {
            region,
            operation: "ec2:DescribeInstances",
            resource: id.into(),
            code: "WaiterError".into(),
            message: format!("{other:?}"),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_decisions() {
        assert_eq!(signal_step(Some("ok"), None, Some("running"), None), SignalStep::Done);
        assert_eq!(signal_step(None, None, Some("pending"), None), SignalStep::Again);
        assert_eq!(signal_step(None, None, Some("running"), None), SignalStep::Again);
        match signal_step(
            Some("failed"),
            Some("step install exit 1: envoy.yaml: sha256 ..."),
            Some("running"),
            None,
        ) {
            SignalStep::Failed(m) => assert!(m.contains("envoy.yaml: sha256"), "{m}"),
            other => panic!("{other:?}"),
        }
        match signal_step(None, None, Some("terminated"), Some("Server.SpotInstanceTermination")) {
            SignalStep::Failed(m) => {
                assert!(m.contains("terminated") && m.contains("SpotInstanceTermination"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(signal_step(Some("maybe"), None, None, None), SignalStep::Failed(_)));
    }
}
