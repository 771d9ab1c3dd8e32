# Fleet keys (issue 17): every enclave of the group holds the same HPKE key set. The set lives in
# S3 as one object: a KMS CiphertextBlob of a 256-bit data key plus the set sealed with that data
# key. The enclave creates it with GenerateDataKey and reads it with Decrypt, both with a
# Recipient (its attestation document), so the data key's plaintext only ever reaches an enclave
# running one of the accepted images. The key and its policy (modules/fleet-key-policy) are
# separate from aws_kms_key.enclave; kv-server finds both through two SSM parameters (ssm.tf).
#
# Accepted images are a list of PCR sets, so an image rollover is: add the new set, apply,
# instance refresh, remove the old set, apply (README, "Fleet keys: PCR rollover").

locals {
  fleet_keys_count = var.enable_fleet_keys ? 1 : 0

  # PCR sets from bundle manifests (pcrs.PCRn, or measurements.PCRn as nitro-cli names them),
  # then the explicit ones; lower-cased and without duplicates, in that order.
  fleet_key_manifest_sets = [
    for p in var.fleet_key_manifest_paths : {
      for k in ["PCR0", "PCR1", "PCR2"] : k => try(
        lower(try(jsondecode(file(p)).pcrs, jsondecode(file(p)).measurements)[k]), ""
      )
    }
  ]
  fleet_key_pcr_sets = distinct(concat(
    local.fleet_key_manifest_sets,
    [for s in var.fleet_key_pcr_sets : { PCR0 = lower(s.PCR0), PCR1 = lower(s.PCR1), PCR2 = lower(s.PCR2) }],
  ))

  fleet_keys_s3_bucket = coalesce(var.fleet_keys_s3_bucket, var.data_bucket_name)
  fleet_keys_s3_key    = coalesce(var.fleet_keys_s3_key, "${var.data_bucket_prefix}fleet-keys/keyset.json")
  fleet_keys_s3_uri    = "s3://${local.fleet_keys_s3_bucket}/${local.fleet_keys_s3_key}"
  fleet_keys_s3_arn    = "arn:${local.partition}:s3:::${local.fleet_keys_s3_bucket}/${local.fleet_keys_s3_key}"
}

module "fleet_key_policy" {
  source = "./modules/fleet-key-policy"
  count  = local.fleet_keys_count

  instance_role_arn    = local.instance_role_arn
  admin_principal_arns = local.kms_admin_principals
  pcr_sets             = local.fleet_key_pcr_sets
}

resource "aws_kms_key" "fleet" {
  count                   = local.fleet_keys_count
  description             = "${local.name}: fleet key set, data keys only for attested enclaves (${length(local.fleet_key_pcr_sets)} accepted image(s))"
  key_usage               = "ENCRYPT_DECRYPT"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = module.fleet_key_policy[0].json
  tags                    = local.tags

  lifecycle {
    precondition {
      condition     = length(local.fleet_key_pcr_sets) >= 1
      error_message = "enable_fleet_keys needs at least one accepted image: set fleet_key_pcr_sets or fleet_key_manifest_paths."
    }
    precondition {
      condition     = length(local.fleet_key_pcr_sets) <= 4
      error_message = "At most 4 accepted images (PCR sets) for the fleet key; remove the sets of images no instance runs any more."
    }
    precondition {
      condition     = alltrue([for s in local.fleet_key_manifest_sets : alltrue([for v in values(s) : can(regex("^[0-9a-f]{96}$", v))])])
      error_message = "Every path in fleet_key_manifest_paths must be a readable manifest.json with PCR0, PCR1 and PCR2 of 96 hex digits (under pcrs or measurements)."
    }
    precondition {
      condition     = !var.enclave_debug_mode
      error_message = "enclave_debug_mode attests all-zero PCRs, so the enclave could never read the fleet key set; turn debug mode off or enable_fleet_keys off."
    }
  }
}

resource "aws_kms_alias" "fleet" {
  count         = local.fleet_keys_count
  name          = "alias/${local.name}-fleet-keys"
  target_key_id = aws_kms_key.fleet[0].key_id
}
