resource "aws_launch_template" "this" {
  name                   = local.name
  description            = "${local.name}: enclave-enabled parent instance; user data is the instance-init launcher"
  image_id               = local.ami_id
  instance_type          = var.instance_type
  update_default_version = true
  user_data              = base64encode(local.instance_init)
  vpc_security_group_ids = [aws_security_group.instance.id]
  ebs_optimized          = true

  enclave_options {
    enabled = true
  }

  iam_instance_profile {
    arn = aws_iam_instance_profile.instance.arn
  }

  # IMDSv2 only, one hop: containers or anything behind another hop on the parent cannot reach
  # the role's credentials. The enclave's own IMDS calls leave through vsockproxy on the parent
  # itself (one hop) and only if its egress policy names 169.254.169.254.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "enabled"
  }

  block_device_mappings {
    device_name = var.root_device_name

    ebs {
      volume_type           = "gp3"
      volume_size           = var.root_volume_size_gib
      encrypted             = true
      kms_key_id            = var.root_volume_kms_key_arn
      delete_on_termination = true
    }
  }

  monitoring {
    enabled = true
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { Name = local.name })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = merge(local.tags, { Name = local.name })
  }

  tags = local.tags

  lifecycle {
    precondition {
      condition     = (var.ami_id == null) != (var.ami_ssm_parameter == null)
      error_message = "Set exactly one of ami_id and ami_ssm_parameter."
    }
  }
}
