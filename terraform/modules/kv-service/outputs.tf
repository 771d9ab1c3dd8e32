output "autoscaling_group_name" {
  description = "Name of the autoscaling group (also the prefix of every resource name)."
  value       = aws_autoscaling_group.this.name
}

output "autoscaling_group_arn" {
  description = "ARN of the autoscaling group."
  value       = aws_autoscaling_group.this.arn
}

output "lifecycle_hook_name" {
  description = "Name of the launch lifecycle hook the launcher completes."
  value       = local.lifecycle_hook_name
}

output "launch_template_id" {
  description = "ID of the launch template."
  value       = aws_launch_template.this.id
}

output "launch_template_latest_version" {
  description = "Latest version of the launch template (a change starts an instance refresh)."
  value       = aws_launch_template.this.latest_version
}

output "ami_id" {
  description = "AMI the launch template uses (ami_id, or the value of ami_ssm_parameter)."
  value       = local.ami_id
}

output "instance_init_script" {
  description = "The rendered instance-init launcher (the launch template's user data, before base64)."
  value       = local.instance_init
}

output "instance_role_arn" {
  description = "ARN of the instance role."
  value       = aws_iam_role.instance.arn
}

output "instance_role_name" {
  description = "Name of the instance role (attach further policies here, e.g. for Session Manager)."
  value       = aws_iam_role.instance.name
}

output "instance_security_group_id" {
  description = "Security group of the instances."
  value       = aws_security_group.instance.id
}

output "load_balancer_security_group_id" {
  description = "Security group of the load balancer; null without one."
  value       = one(aws_security_group.lb[*].id)
}

output "load_balancer_arn" {
  description = "ARN of the load balancer; null without one."
  value       = one(aws_lb.this[*].arn)
}

output "load_balancer_dns_name" {
  description = "DNS name of the load balancer (point the service's DNS record here); null without one."
  value       = one(aws_lb.this[*].dns_name)
}

output "load_balancer_zone_id" {
  description = "Route 53 zone id of the load balancer, for an alias record; null without one."
  value       = one(aws_lb.this[*].zone_id)
}

output "target_group_arns" {
  description = "Target groups by kind (http1, http2, grpc); empty without a load balancer."
  value       = { for k, tg in aws_lb_target_group.this : k => tg.arn }
}

output "kms_key_arn" {
  description = "ARN of the enclave-bound KMS key; null unless create_kms_key."
  value       = one(aws_kms_key.enclave[*].arn)
}

output "kms_key_pcrs" {
  description = "The PCR values the KMS key policy requires (empty unless create_kms_key)."
  value       = var.create_kms_key ? local.pcrs : {}
}

output "ssm_parameter_names" {
  description = "Names of the server's SSM parameters, by setting name."
  value       = { for k, p in aws_ssm_parameter.server : k => p.name }
}

output "log_group_name" {
  description = "CloudWatch log group of the EMF metrics (the collector config's awsemf log_group_name)."
  value       = local.log_group_name
}

output "app_log_group_name" {
  description = "CloudWatch log group of kv-server's OTLP logs (the collector config's awscloudwatchlogs log_group_name)."
  value       = local.app_log_group_name
}

output "fleet_keys_kms_key_arn" {
  description = "ARN of the fleet key set's KMS key (not an SSM parameter: the enclave image's config names the alias, fleet_keys_kms_alias_arn); null unless enable_fleet_keys."
  value       = one(aws_kms_key.fleet[*].arn)
}

output "fleet_keys_kms_alias_arn" {
  description = "ARN of the fleet key's alias, arn:<partition>:kms:<region>:<account>:alias/<service>-<environment>-fleet-keys: the value of [v2] fleet_keys_kms_key in the enclave image's config.toml (known before the first apply); null unless enable_fleet_keys."
  # Built from the alias name rather than aws_kms_alias.fleet[0].arn, so it is known at plan time.
  value = var.enable_fleet_keys ? "arn:${local.partition}:kms:${local.region}:${local.account_id}:${aws_kms_alias.fleet[0].name}" : null
}

output "fleet_keys_s3_uri" {
  description = "s3://bucket/key of the fleet key set object (the fleet-keys-s3-uri SSM parameter); null unless enable_fleet_keys."
  value       = var.enable_fleet_keys ? local.fleet_keys_s3_uri : null
}

output "fleet_key_pcr_sets" {
  description = "The PCR sets (accepted images) the fleet key policy allows, lower-cased; empty unless enable_fleet_keys."
  value       = var.enable_fleet_keys ? local.fleet_key_pcr_sets : []
}
