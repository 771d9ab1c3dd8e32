data "aws_partition" "current" {}
data "aws_region" "current" {}
data "aws_caller_identity" "current" {}

# The AMI id the packager published for this region (DataType aws:ec2:image).
data "aws_ssm_parameter" "ami" {
  count = var.ami_ssm_parameter == null ? 0 : 1
  name  = var.ami_ssm_parameter
}

locals {
  name                = "${var.service_name}-${var.environment}"
  lifecycle_hook_name = "${local.name}-launch"
  log_group_name      = var.log_group_name != null ? var.log_group_name : "/aws/${var.service_name}/metrics"
  app_log_group_name  = var.app_log_group_name != null ? var.app_log_group_name : "/aws/${var.service_name}/logs"
  partition           = data.aws_partition.current.partition
  region              = data.aws_region.current.name
  account_id          = data.aws_caller_identity.current.account_id

  tags = merge(var.tags, {
    Service     = var.service_name
    Environment = var.environment
  })

  # The AMI id is not a secret; the data source marks every value sensitive.
  ami_id = var.ami_id != null ? var.ami_id : nonsensitive(one(data.aws_ssm_parameter.ami[*].value))

  # Envoy's listener, the target of the load balancer (ARCHITECTURE.md, ports).
  envoy_port = 51052

  # PCRs for the KMS key policy: explicit inputs win over the bundle manifest. The packager
  # writes them under "pcrs" (or "measurements", nitro-cli's name) as PCR0/PCR1/PCR2.
  manifest_json = var.bundle_manifest_path == null ? "{}" : file(var.bundle_manifest_path)
  manifest_pcrs = try(jsondecode(local.manifest_json).pcrs, jsondecode(local.manifest_json).measurements, {})
  pcrs = {
    for k, v in {
      PCR0 = var.kms_pcr0 != null ? var.kms_pcr0 : try(local.manifest_pcrs.PCR0, null)
      PCR1 = var.kms_pcr1 != null ? var.kms_pcr1 : try(local.manifest_pcrs.PCR1, null)
      PCR2 = var.kms_pcr2 != null ? var.kms_pcr2 : try(local.manifest_pcrs.PCR2, null)
    } : k => lower(v) if v != null
  }

  # The names the KV server reads (enclave/src/ssm.rs); server_parameters may add or override.
  ssm_parameters = merge(
    { "data-bucket-id" = var.data_bucket_name },
    var.data_bucket_prefix == "" ? {} : { "data-prefix" = var.data_bucket_prefix },
    var.server_parameters,
    # Fleet keys: only the object's location. The KMS key is deliberately not here: kv-server
    # takes it only from the enclave image's own config (measured into the PCRs), never from SSM,
    # which the parent instance can write (see fleet_keys_kms_alias_arn and the README).
    var.enable_fleet_keys ? {
      "fleet-keys-s3-uri" = local.fleet_keys_s3_uri
    } : {},
  )

  # The launcher: user data of the launch template. Every value here is validated in variables.tf.
  instance_init = templatefile("${path.module}/templates/instance_init.tftpl", {
    service                     = var.service_name
    environment                 = var.environment
    asg_name                    = local.name
    lifecycle_hook_name         = local.lifecycle_hook_name
    amp_workspace_id            = var.amp_workspace_id
    bundle_dir                  = var.launcher_paths.bundle_dir
    eif_path                    = var.launcher_paths.eif
    envoy_config_dir            = var.launcher_paths.envoy_config_dir
    collector_config_path       = var.launcher_paths.collector_config
    enclave_env_file            = var.launcher_paths.enclave_env_file
    envoy_unit                  = var.systemd_units.envoy
    collector_unit              = var.systemd_units.collector
    allocator_unit              = var.systemd_units.allocator
    vsockproxy_unit             = var.systemd_units.vsockproxy
    enclave_unit                = var.systemd_units.enclave
    envoy_admin_port            = var.envoy_admin_port
    envoy_port                  = local.envoy_port
    envoy_ready_timeout_seconds = var.envoy_ready_timeout_seconds
    proxy_admin_port            = var.proxy_admin_port
    readiness_grace_seconds     = var.readiness_grace_seconds
    unit_start_timeout_seconds  = var.unit_start_timeout_seconds
    poll_interval_seconds       = 2
    enclave_cid                 = var.enclave_cid
    enclave_cpu_count           = var.enclave_cpu_count
    enclave_memory_mib          = var.enclave_memory_mib
    enclave_debug_mode          = var.enclave_debug_mode
  })
}
