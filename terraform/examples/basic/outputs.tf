output "load_balancer_dns_name" {
  description = "Point the service's DNS name (the certificate's) at this."
  value       = module.kv.load_balancer_dns_name
}

output "autoscaling_group_name" {
  description = "The autoscaling group of the service."
  value       = module.kv.autoscaling_group_name
}

output "kms_key_arn" {
  description = "KMS key only the attested enclave may decrypt with (null without a manifest)."
  value       = module.kv.kms_key_arn
}

output "kms_key_pcrs" {
  description = "PCRs the key policy requires."
  value       = module.kv.kms_key_pcrs
}
