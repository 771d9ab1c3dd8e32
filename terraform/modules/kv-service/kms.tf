# Optional KMS key bound to the enclave's measurements. The instance role may Decrypt only when
# the request carries an attestation document (the Recipient parameter) whose PCRs equal the
# values of the bundle manifest (or the kms_pcr* inputs). The parent alone, holding the same role
# credentials, cannot decrypt. A debug-mode enclave attests all-zero PCRs, so it is refused too.
# In a key policy, Resource "*" means "this key".

locals {
  kms_count            = var.create_kms_key ? 1 : 0
  kms_admin_principals = length(var.kms_admin_principal_arns) > 0 ? var.kms_admin_principal_arns : ["arn:${local.partition}:iam::${local.account_id}:root"]
  # Built from the name (the role has the default path "/") so the policy is known at plan time
  # and reviewable there; naming the role keeps the dependency (it must exist before the key).
  instance_role_arn = "arn:${local.partition}:iam::${local.account_id}:role/${aws_iam_role.instance.name}"
}

data "aws_iam_policy_document" "kms" {
  # A key policy: Resource "*" is the key itself, and the Decrypt statement is constrained by
  # the attestation conditions; checkov reads it as an identity policy on every resource.
  #checkov:skip=CKV_AWS_109:key policy; Resource "*" means this key and administrators are named principals
  #checkov:skip=CKV_AWS_111:key policy; Resource "*" means this key, Decrypt requires the enclave's PCRs
  #checkov:skip=CKV_AWS_356:key policy; Resource "*" means this key
  count = local.kms_count

  statement {
    sid = "KeyAdministration"
    actions = [
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
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = local.kms_admin_principals
    }
  }

  dynamic "statement" {
    for_each = length(var.kms_encrypt_principal_arns) > 0 ? [var.kms_encrypt_principal_arns] : []
    content {
      sid       = "EncryptForTheEnclave"
      actions   = ["kms:Encrypt", "kms:GenerateDataKey", "kms:DescribeKey"]
      resources = ["*"]
      principals {
        type        = "AWS"
        identifiers = statement.value
      }
    }
  }

  statement {
    sid       = "DecryptOnlyInTheAttestedEnclave"
    actions   = ["kms:Decrypt"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = [local.instance_role_arn]
    }
    dynamic "condition" {
      for_each = local.pcrs
      content {
        test     = "StringEqualsIgnoreCase"
        variable = "kms:RecipientAttestation:${condition.key}"
        values   = [condition.value]
      }
    }
  }

  # Belt and braces: even if someone later grants kms:Decrypt to the role some other way, a
  # request without the right measurements is denied.
  dynamic "statement" {
    for_each = local.pcrs
    content {
      sid       = "DenyDecryptWithout${statement.key}"
      effect    = "Deny"
      actions   = ["kms:Decrypt"]
      resources = ["*"]
      principals {
        type        = "AWS"
        identifiers = [local.instance_role_arn]
      }
      condition {
        test     = "StringNotEqualsIgnoreCase"
        variable = "kms:RecipientAttestation:${statement.key}"
        values   = [statement.value]
      }
    }
  }
}

resource "aws_kms_key" "enclave" {
  count                   = local.kms_count
  description             = "${local.name}: Decrypt only inside the attested enclave (PCRs ${join(", ", keys(local.pcrs))})"
  key_usage               = "ENCRYPT_DECRYPT"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms[0].json
  tags                    = local.tags

  lifecycle {
    precondition {
      condition     = contains(keys(local.pcrs), "PCR0")
      error_message = "create_kms_key needs PCR0: set kms_pcr0 or bundle_manifest_path (a manifest.json with pcrs.PCR0)."
    }
    precondition {
      condition     = alltrue([for v in values(local.pcrs) : can(regex("^[0-9a-f]{96}$", v))])
      error_message = "Every PCR for the key policy must be 96 hex digits; check kms_pcr* and the manifest at bundle_manifest_path."
    }
    precondition {
      condition     = !var.enclave_debug_mode
      error_message = "enclave_debug_mode attests all-zero PCRs, so the enclave could never Decrypt with this key; turn debug mode off or create_kms_key off."
    }
  }
}

resource "aws_kms_alias" "enclave" {
  count         = local.kms_count
  name          = "alias/${local.name}"
  target_key_id = aws_kms_key.enclave[0].key_id
}
