# The key policy of the fleet key set's KMS key (issue 17), alone in a module of its own so that
# terraform/tests/run.sh can render exactly this document offline (no account lookup) and lint it
# (`kv-packager key-policy lint`). kv-service passes the instance role, the administrators and the
# accepted PCR sets.
#
# - Administrators get management actions only: no Decrypt, Encrypt, GenerateDataKey, ReEncrypt.
# - The instance role gets kms:Decrypt and kms:GenerateDataKey in one Allow statement per accepted
#   PCR set, each requiring that set's PCR0, PCR1 and PCR2 in the Recipient's attestation. One
#   statement per set: a single statement with lists would accept PCR0 of one image with PCR2 of
#   another.
# - Every cryptographic action is denied to everyone when the request carries no attestation
#   document (kms:RecipientAttestation:ImageSha384 absent): the parent, holding the same role
#   credentials, gets nothing, whatever is granted later. Encrypt, ReEncrypt* and the other
#   GenerateDataKey* take no Recipient, so this denies them outright: nobody can make a data key
#   under this key whose plaintext the parent knows, or move a ciphertext to a key it controls.
# - No kms:* for the account root: that default statement lets IAM policies grant Decrypt around
#   the PCR conditions. Without it the key is unrecoverable by design, except through
#   kms:PutKeyPolicy by the administrators.
# In a key policy, Resource "*" means this key.

variable "instance_role_arn" {
  description = "ARN of the instance role (the enclave calls KMS with the parent's credentials)."
  type        = string
}

variable "admin_principal_arns" {
  description = "Principals that administer the key (management actions only, never a cryptographic one)."
  type        = list(string)
}

variable "pcr_sets" {
  description = "Accepted enclave images: one object per image with its PCR0, PCR1 and PCR2 (96 hex digits each)."
  type = list(object({
    PCR0 = string
    PCR1 = string
    PCR2 = string
  }))
}

locals {
  # Every action that yields or moves key material, listed out (no wildcards: check_tf.py).
  crypto_actions = [
    "kms:Decrypt",
    "kms:Encrypt",
    "kms:GenerateDataKey",
    "kms:GenerateDataKeyPair",
    "kms:GenerateDataKeyPairWithoutPlaintext",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
  ]
  admin_actions = [
    "kms:CancelKeyDeletion",
    "kms:CreateAlias",
    "kms:DeleteAlias",
    "kms:DescribeKey",
    "kms:DisableKey",
    "kms:DisableKeyRotation",
    "kms:EnableKey",
    "kms:EnableKeyRotation",
    "kms:GetKeyPolicy",
    "kms:GetKeyRotationStatus",
    "kms:ListAliases",
    "kms:ListResourceTags",
    "kms:PutKeyPolicy",
    "kms:ScheduleKeyDeletion",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:UpdateAlias",
    "kms:UpdateKeyDescription",
  ]
}

data "aws_iam_policy_document" "this" {
  # A key policy: Resource "*" is the key itself; the instance role's statements require the
  # enclave's PCRs; checkov reads it as an identity policy on every resource.
  #checkov:skip=CKV_AWS_109:key policy; Resource "*" means this key and administrators are named principals
  #checkov:skip=CKV_AWS_111:key policy; Resource "*" means this key, the role's writes require the enclave's PCRs
  #checkov:skip=CKV_AWS_356:key policy; Resource "*" means this key

  statement {
    sid       = "KeyAdministration"
    actions   = local.admin_actions
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = var.admin_principal_arns
    }
  }

  dynamic "statement" {
    for_each = var.pcr_sets
    content {
      sid       = "FleetKeySetForImage${statement.key}"
      actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
      resources = ["*"]
      principals {
        type        = "AWS"
        identifiers = [var.instance_role_arn]
      }
      dynamic "condition" {
        for_each = ["PCR0", "PCR1", "PCR2"]
        content {
          test     = "StringEqualsIgnoreCase"
          variable = "kms:RecipientAttestation:${condition.value}"
          values   = [lower(statement.value[condition.value])]
        }
      }
    }
  }

  statement {
    sid       = "DenyWithoutAttestation"
    effect    = "Deny"
    actions   = local.crypto_actions
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["*"]
    }
    condition {
      test     = "Null"
      variable = "kms:RecipientAttestation:ImageSha384"
      values   = ["true"]
    }
  }
}

output "json" {
  description = "The key policy document (JSON)."
  value       = data.aws_iam_policy_document.this.json
}
