resource "aws_autoscaling_group" "this" {
  name                      = local.name
  vpc_zone_identifier       = var.private_subnet_ids
  min_size                  = var.min_size
  max_size                  = var.max_size
  desired_capacity          = var.desired_capacity
  health_check_type         = var.create_load_balancer ? "ELB" : "EC2"
  health_check_grace_period = var.health_check_grace_period_seconds
  target_group_arns         = var.create_load_balancer ? [for tg in aws_lb_target_group.this : tg.arn] : []
  default_instance_warmup   = var.health_check_grace_period_seconds
  wait_for_capacity_timeout = "${var.lifecycle_hook_timeout_seconds + 300}s"

  launch_template {
    id      = aws_launch_template.this.id
    version = aws_launch_template.this.latest_version
  }

  # Inline, so that the first instances of the group already wait for the launcher's answer.
  initial_lifecycle_hook {
    name                 = local.lifecycle_hook_name
    lifecycle_transition = "autoscaling:EC2_INSTANCE_LAUNCHING"
    default_result       = "ABANDON"
    heartbeat_timeout    = var.lifecycle_hook_timeout_seconds
  }

  # A new launch-template version (new AMI, new launcher settings) rolls through the group.
  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = var.instance_refresh_min_healthy_percentage
      instance_warmup        = var.health_check_grace_period_seconds
      auto_rollback          = true
    }
  }

  enabled_metrics = [
    "GroupDesiredCapacity",
    "GroupInServiceInstances",
    "GroupPendingInstances",
    "GroupTerminatingInstances",
    "GroupTotalInstances",
  ]

  dynamic "tag" {
    for_each = merge(local.tags, { Name = local.name })
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = false # the launch template tags instances and volumes
    }
  }

  lifecycle {
    precondition {
      condition     = var.max_size >= var.min_size && coalesce(var.desired_capacity, var.min_size) >= var.min_size && coalesce(var.desired_capacity, var.max_size) <= var.max_size
      error_message = "Need min_size <= desired_capacity <= max_size."
    }
    precondition {
      # The launcher sends a heartbeat (which restarts the timeout) just before its readiness wait;
      # before it, the envoy wait and the unit starts. Both stretches must fit.
      condition     = var.lifecycle_hook_timeout_seconds >= var.envoy_ready_timeout_seconds + var.readiness_grace_seconds + 60
      error_message = "lifecycle_hook_timeout_seconds must be at least envoy_ready_timeout_seconds + readiness_grace_seconds + 60, or healthy instances are abandoned."
    }
    precondition {
      condition     = !var.create_load_balancer || var.health_check_grace_period_seconds >= var.envoy_ready_timeout_seconds + var.readiness_grace_seconds
      error_message = "health_check_grace_period_seconds must be at least envoy_ready_timeout_seconds + readiness_grace_seconds."
    }
  }
}
