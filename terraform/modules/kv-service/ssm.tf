# The server's settings, one SSM String parameter each, named <service>-<environment>-<name> as
# the reference server expects; the instance role may read exactly these (iam.tf).
resource "aws_ssm_parameter" "server" {
  # Settings are not secrets (bucket names, modes, sizes). SecureString would put kms:Decrypt of
  # the SSM key on the instance role; secrets for the enclave go through the PCR-bound key (kms.tf).
  #checkov:skip=CKV2_AWS_34:non-secret settings; secrets use the attestation-bound KMS key instead
  for_each    = local.ssm_parameters
  name        = "${local.name}-${each.key}"
  description = "${local.name} server setting ${each.key}"
  type        = "String"
  tier        = "Standard"
  value       = each.value
  tags        = local.tags
}
