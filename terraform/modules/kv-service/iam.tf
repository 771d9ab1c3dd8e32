# The instance role: what the parent instance (its agents, and the enclave through the parent's
# credentials) may do. Least privilege: every statement names its resources; "*" appears only
# where the service has no resource-level permissions (see the README, "IAM: the exceptions").

data "aws_iam_policy_document" "assume_ec2" {
  statement {
    sid     = "Ec2AssumesInstanceRole"
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.${data.aws_partition.current.dns_suffix}"]
    }
  }
}

resource "aws_iam_role" "instance" {
  name                 = "${local.name}-instance"
  description          = "${local.name} parent instances (and the enclave through the parent)"
  assume_role_policy   = data.aws_iam_policy_document.assume_ec2.json
  max_session_duration = 3600
  tags                 = local.tags
}

resource "aws_iam_instance_profile" "instance" {
  name = "${local.name}-instance"
  role = aws_iam_role.instance.name
  tags = local.tags
}

locals {
  data_bucket_arn   = "arn:${local.partition}:s3:::${var.data_bucket_name}"
  log_group_arn     = "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:${local.log_group_name}"
  app_log_group_arn = "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:${local.app_log_group_name}"
  amp_workspace_arn = "arn:${local.partition}:aps:${local.region}:${local.account_id}:workspace/${var.amp_workspace_id}"
  # The group's ARN holds a generated id; the name part pins it to this group.
  asg_arn_pattern = "arn:${local.partition}:autoscaling:${local.region}:${local.account_id}:autoScalingGroup:*:autoScalingGroupName/${local.name}"
}

data "aws_iam_policy_document" "instance" {
  statement {
    sid       = "ReadDataFiles"
    actions   = ["s3:GetObject"]
    resources = ["${local.data_bucket_arn}/${var.data_bucket_prefix}*"]
  }

  statement {
    sid       = "ListDataFiles"
    actions   = ["s3:ListBucket"]
    resources = [local.data_bucket_arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${var.data_bucket_prefix}*"]
    }
  }

  statement {
    sid       = "ReadServiceParameters"
    actions   = ["ssm:GetParameter", "ssm:GetParameters"]
    resources = ["arn:${local.partition}:ssm:${local.region}:${local.account_id}:parameter/${local.name}-*"]
  }

  statement {
    sid       = "CompleteLaunchLifecycleHook"
    actions   = ["autoscaling:CompleteLifecycleAction", "autoscaling:RecordLifecycleActionHeartbeat"]
    resources = [local.asg_arn_pattern]
  }

  statement {
    sid     = "WriteServiceLogs"
    actions = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    resources = [
      local.log_group_arn, "${local.log_group_arn}:log-stream:*",
      local.app_log_group_arn, "${local.app_log_group_arn}:log-stream:*",
    ]
  }

  # Exception: cloudwatch:PutMetricData has no resource-level permissions; the namespace
  # condition limits it to this service's metrics.
  statement {
    sid       = "PutServiceMetrics"
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"]
    condition {
      test     = "StringEquals"
      variable = "cloudwatch:namespace"
      values   = [var.metrics_namespace]
    }
  }

  # Exception: these X-Ray actions have no resource-level permissions.
  statement {
    sid = "WriteTraces"
    actions = [
      "xray:PutTraceSegments",
      "xray:PutTelemetryRecords",
      "xray:GetSamplingRules",
      "xray:GetSamplingTargets",
    ]
    resources = ["*"]
  }

  # Exactly the fleet key set object: read it, create it (If-None-Match: *) and rotate it
  # (If-Match: <etag>); no delete, no other key. KMS access is in the key's own policy only.
  dynamic "statement" {
    for_each = var.enable_fleet_keys ? [local.fleet_keys_s3_arn] : []
    content {
      sid       = "ReadWriteFleetKeySet"
      actions   = ["s3:GetObject", "s3:PutObject"]
      resources = [statement.value]
    }
  }

  dynamic "statement" {
    for_each = var.amp_workspace_id == "" ? [] : [local.amp_workspace_arn]
    content {
      sid       = "RemoteWriteMetrics"
      actions   = ["aps:RemoteWrite"]
      resources = [statement.value]
    }
  }
}

resource "aws_iam_role_policy" "instance" {
  name   = "${local.name}-instance"
  role   = aws_iam_role.instance.id
  policy = data.aws_iam_policy_document.instance.json
}

resource "aws_cloudwatch_log_group" "service" {
  count             = var.create_log_group ? 1 : 0
  name              = local.log_group_name
  retention_in_days = var.log_retention_days
  kms_key_id        = var.log_kms_key_arn
  tags              = local.tags
}

# kv-server's OTLP logs, written by the collector's awscloudwatchlogs exporter.
resource "aws_cloudwatch_log_group" "app" {
  count             = var.create_log_group ? 1 : 0
  name              = local.app_log_group_name
  retention_in_days = var.log_retention_days
  kms_key_id        = var.log_kms_key_arn
  tags              = local.tags
}
